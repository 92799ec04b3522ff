"""Bad input never crashes deep inside a kernel and never gives a silent wrong answer (README "Input rules").

- test_bad_input_raises: every wrong rank, shape, dtype, device, state set, eps and chunk_size gets an
  MLSTMInputError whose message names the offending argument (one table of cases, each one mutation of valid
  inputs; test_valid_baseline_runs shows the unmutated inputs are valid).
- test_unknown_kernel_name: the three registries raise ValueError listing the known names.
- test_nan_stays_in_its_head: NaN in one (batch, head) makes that head's output non-finite; the other heads match
  the fp64 oracle on the clean inputs.
- test_check_finite_env_raises: with MLSTM_AUTOTUNE_CHECK_FINITE=1 a NaN/Inf input raises MLSTMInputError.
- test_non_contiguous_views: transposed and strided views (NaN in the gaps) give the oracle's answer.
- test_mixed_gate_dtypes: fp32 q/k/v with bf16 or fp16 gates match the oracle on the same (rounded) gate values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import LIMITS, Case, Shape, drop, set_input, set_kw

from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch import (
    MLSTMInputError,
    get_available_mlstm_kernels,
    get_available_mlstm_sequence_kernels,
    get_available_mlstm_step_kernels,
    get_mlstm_kernel,
    get_mlstm_sequence_kernel,
    get_mlstm_step_kernel,
)


@dataclass(frozen=True)
class Kernel:
    name: str
    cell: str  # "exp" | "sig"
    form: str  # "chunkwise" | "parallel" | "sequence" | "step"

    def fn(self) -> Callable:
        if self.form == "step":
            return get_mlstm_step_kernel(self.name)
        if self.form == "sequence":
            return get_mlstm_sequence_kernel(self.name)
        return get_mlstm_kernel(self.name)

    @property
    def state_names(self) -> tuple[str, ...]:
        names = ("c", "n", "m") if self.form == "step" else ("c_initial", "n_initial", "m_initial")
        return names if self.cell == "exp" else names[:2]


CHUNKWISE = Kernel("chunkwise--native_custbw", "exp", "chunkwise")
PARALLEL = Kernel("parallel--native_stablef_custbw", "exp", "parallel")
SIG = Kernel("parallel--native_siging_custbw", "sig", "parallel")
SEQUENCE = Kernel("native_sequence__native", "exp", "sequence")
STEP = Kernel("native", "exp", "step")
KERNELS = [CHUNKWISE, PARALLEL, SIG, SEQUENCE, STEP]
KERNEL_IDS = [k.name for k in KERNELS]

# every dim distinct, so that a mismatch in any one of them cannot be confused with another
SHAPE = Shape(B=2, NH=3, S=5, DHQK=4, DHHV=6)
# chunk_size 4 with S = 7: one full chunk and a tail
NUM_SHAPE = Shape(B=2, NH=2, S=7, DHQK=8, DHHV=12)
CHUNK = 4


def num_id(kernel: Kernel) -> str:
    """Readable id of a numerical test: kernel and shape (the step kernel sees one token)."""
    shp = Shape(NUM_SHAPE.B, NUM_SHAPE.NH, 1, NUM_SHAPE.DHQK, NUM_SHAPE.DHHV) if kernel.form == "step" else NUM_SHAPE
    return f"{kernel.name}-{shp.id}"


NUM_IDS = [num_id(k) for k in KERNELS]


def make_inputs(kernel: Kernel, shape: Shape, *, dtype=torch.float64, gate_dtype=None, with_states=True) -> dict:
    """Fresh random keyword arguments for ``kernel``: the sequence interface, or the step interface (S = 1)."""
    S = 1 if kernel.form == "step" else shape.S
    x = random_inputs(shape.B, shape.NH, S, shape.DHQK, shape.DHHV, dtype=dtype, gate_dtype=gate_dtype,
                      with_states=with_states)  # fmt: skip
    if kernel.form == "step":
        x = {"q": x["q"][:, :, 0], "k": x["k"][:, :, 0], "v": x["v"][:, :, 0], "i": x["i"], "f": x["f"],
             "c": x.get("c_initial"), "n": x.get("n_initial"), "m": x.get("m_initial")}  # fmt: skip
    if kernel.cell == "sig":
        x.pop("m_initial", None)
    return x


def run(kernel: Kernel, x: dict):
    """Call the kernel; sequence forms return their last states too, chunkwise kernels use chunk_size CHUNK."""
    kw = dict(x)
    if kernel.form != "step":
        kw.setdefault("return_last_states", True)
    if kernel.form == "chunkwise":
        kw.setdefault("chunk_size", CHUNK)
    return kernel.fn()(**kw)


def oracle(kernel: Kernel, x: dict):
    """The fp64 recurrent definition on the same values: (h, last states) in the kernel's layout."""
    if kernel.form == "step":
        seq = {"q": x["q"][:, :, None], "k": x["k"][:, :, None], "v": x["v"][:, :, None],
               "i": x["i"].reshape(*x["q"].shape[:2], 1), "f": x["f"].reshape(*x["q"].shape[:2], 1),
               "c_initial": x["c"], "n_initial": x["n"], "m_initial": x["m"]}  # fmt: skip
    else:
        seq = x
    seq = {k: (t.detach().contiguous().double() if t is not None else None) for k, t in seq.items()}
    h, states = mlstm_recurrent(**seq, cell=kernel.cell, return_last_states=True)
    if kernel.form == "step":
        h = h[:, :, 0]
    return h, states


def state_pairs(kernel: Kernel, states, states_ref) -> dict:
    """{"C_last": (out, ref), ...} for the last states (C, n, m) of the exp cell or (C, n) of the sig cell."""
    names = ("C_last", "n_last", "m_last")[: len(kernel.state_names)]
    return dict(zip(names, zip(states, states_ref)))


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one table of cases, each a mutation of valid inputs and a pattern the message must contain.
# ---------------------------------------------------------------------------------------------------------------


def resized(t: torch.Tensor, dim: int, delta: int = 1) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] += delta
    return torch.randn(shape, dtype=t.dtype)


def on_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def _all(fn: Callable[[torch.Tensor], torch.Tensor], names=("q", "k", "v", "i", "f")):
    def mutate(x: dict) -> None:
        for name in names:
            x[name] = fn(x[name])

    return mutate


def _is_seq(kernel: Kernel) -> bool:
    return kernel.form != "step"


def _is_exp(kernel: Kernel) -> bool:
    return kernel.cell == "exp"


def sequence_cases() -> list[Case]:
    """Cases for the sequence interface: q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); states."""
    cases = [
        Case("q-rank3", set_input("q", lambda t: t[..., 0]), r"^q\b.*4 dimensions"),
        Case("q-rank5", set_input("q", lambda t: t[None]), r"^q\b.*4 dimensions"),
        Case("k-rank3", set_input("k", lambda t: t[..., 0]), r"^k\b.*4 dimensions"),
        Case("v-rank5", set_input("v", lambda t: t[None]), r"^v\b.*4 dimensions"),
        Case("i-rank4", set_input("i", lambda t: t[..., None]), r"^i\b.*3 dimensions"),
        Case("f-rank2", set_input("f", lambda t: t[..., 0]), r"^f\b.*3 dimensions"),
        Case("i-rank1", set_input("i", lambda t: t.flatten()), r"^i\b.*3 dimensions"),
        Case("S0", _all(lambda t: t[:, :, :0]), r"\bS\b.*>= 1"),
        Case("DHQK0", _all(lambda t: t[..., :0], ("q", "k")), r"\bDHQK\b"),
        Case("DHHV0", _all(lambda t: t[..., :0], ("v",)), r"^v\b"),
        # dtypes
        Case("k-fp32-q-fp64", set_input("k", lambda t: t.float()), r"k torch\.float32"),
        Case("v-fp32-q-fp64", set_input("v", lambda t: t.float()), r"v torch\.float32"),
        Case("q-fp16-kv-fp64", set_input("q", lambda t: t.half()), r"q torch\.float16"),
        Case("f-fp32-i-fp64", set_input("f", lambda t: t.float()), r"f torch\.float32"),
        Case("i-bf16-f-fp64", set_input("i", lambda t: t.bfloat16()), r"i torch\.bfloat16"),
        Case("q-int64", set_input("q", lambda t: t.long()), r"^q\b.*int64"),
        Case("k-int32", set_input("k", lambda t: t.int()), r"^k\b.*int32"),
        Case("v-int16", set_input("v", lambda t: t.short()), r"^v\b.*int16"),
        Case("i-int64", set_input("i", lambda t: t.long()), r"^i\b.*int64"),
        Case("f-uint8", set_input("f", lambda t: t.to(torch.uint8)), r"^f\b.*uint8"),
        Case("q-bool", set_input("q", lambda t: t > 0), r"^q\b.*bool"),
        Case("v-complex", set_input("v", lambda t: t.to(torch.complex128)), r"^v\b.*complex128"),
        Case("all-int64", _all(lambda t: t.long()), r"^q\b.*int64"),
        # not tensors
        Case("q-list", set_input("q", lambda t: t.tolist()), r"^q\b.*Tensor.*list"),
        Case("k-numpy", set_input("k", lambda t: t.numpy()), r"^k\b.*Tensor.*ndarray"),
        Case("v-float", set_input("v", lambda t: 1.0), r"^v\b.*Tensor.*float"),
        Case("i-list", set_input("i", lambda t: t.tolist()), r"^i\b.*Tensor.*list"),
        Case("f-None", set_input("f", lambda t: None), r"^f\b.*Tensor.*NoneType"),
        Case("c-list", set_input("c_initial", lambda t: t.tolist()), r"^c_initial\b.*Tensor"),
        Case("n-numpy", set_input("n_initial", lambda t: t.numpy()), r"^n_initial\b.*Tensor"),
        Case("m-float", set_input("m_initial", lambda t: 0.5), r"^m_initial\b.*Tensor", _is_exp),
        # eps
        *[Case(f"eps-{v!r}", set_kw("eps", v), r"\beps\b") for v in (-1e-3, math.nan, math.inf, "1e-6", None, True)],
        # states: shapes, dtypes, partial sets
        Case("c-DHQK+1", set_input("c_initial", lambda t: resized(t, 2)), r"^c_initial\b.*shape"),
        Case("c-DHHV+1", set_input("c_initial", lambda t: resized(t, 3)), r"^c_initial\b.*shape"),
        Case("c-B+1", set_input("c_initial", lambda t: resized(t, 0)), r"^c_initial\b.*shape"),
        Case("c-rank3", set_input("c_initial", lambda t: t[..., 0]), r"^c_initial\b.*4 dimensions"),
        Case("n-DHQK+1", set_input("n_initial", lambda t: resized(t, 2)), r"^n_initial\b.*shape"),
        Case("n-NH+1", set_input("n_initial", lambda t: resized(t, 1)), r"^n_initial\b.*shape"),
        Case("n-rank4", set_input("n_initial", lambda t: t[..., None]), r"^n_initial\b.*3 dimensions"),
        Case("m-B.NH.2", set_input("m_initial", lambda t: resized(t, 2)), r"^m_initial\b.*shape", _is_exp),
        Case("m-rank4", set_input("m_initial", lambda t: t[..., None]), r"^m_initial\b.*shape", _is_exp),
        Case("m-B+1", set_input("m_initial", lambda t: resized(t, 0)), r"^m_initial\b.*shape", _is_exp),
        Case("m-rank1", set_input("m_initial", lambda t: t.flatten()), r"^m_initial\b.*shape", _is_exp),
        Case("c-int64", set_input("c_initial", lambda t: t.long()), r"^c_initial\b.*int64"),
        Case("n-int32", set_input("n_initial", lambda t: t.int()), r"^n_initial\b.*int32"),
        Case("m-int64", set_input("m_initial", lambda t: t.long()), r"^m_initial\b.*int64", _is_exp),
        Case("n-fp32-c-fp64", set_input("n_initial", lambda t: t.float()), r"c_initial and n_initial.*dtype"),
        Case("c-only", drop("n_initial", "m_initial"), r"c_initial, n_initial and m_initial", _is_exp),
        Case("c-n-no-m", drop("m_initial"), r"c_initial, n_initial and m_initial", _is_exp),
        Case("c-m-no-n", drop("n_initial"), r"c_initial, n_initial and m_initial", _is_exp),
        Case("n-m-no-c", drop("c_initial"), r"c_initial, n_initial and m_initial", _is_exp),
        Case("m-only", drop("c_initial", "n_initial"), r"c_initial, n_initial and m_initial", _is_exp),
        Case("sig-c-only", drop("n_initial"), r"c_initial and n_initial", lambda k: k.cell == "sig"),
        Case("sig-n-only", drop("c_initial"), r"c_initial and n_initial", lambda k: k.cell == "sig"),
        # chunk_size: only the chunkwise kernels use it
        *[
            Case(f"chunk_size-{v!r}", set_kw("chunk_size", v), r"\bchunk_size\b", lambda k: k.form == "chunkwise")
            for v in (0, -1, 2.5, True, "64", None)
        ],
        Case("dtype_state-str", set_kw("dtype_state", "float32"), r"\bdtype_state\b", lambda k: k.form == "sequence"),
    ]
    # mismatched B, NH, S (and DHQK for k) between q and the others
    for name in ("k", "v", "i", "f"):
        for dim, label in enumerate(("B", "NH", "S")):
            cases.append(
                Case(f"{name}-{label}+1", set_input(name, lambda t, d=dim: resized(t, d)), rf"^{name}\b.*shape")
            )
    cases.append(Case("k-DHQK+1", set_input("k", lambda t: resized(t, 3)), r"^k\b.*shape"))
    cases.append(Case("q-S+1", set_input("q", lambda t: resized(t, 2)), r"^k\b.*like q"))
    # one tensor on another device
    for name in ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial"):
        applies = _is_exp if name == "m_initial" else (lambda k: True)
        cases.append(Case(f"{name}-meta", set_input(name, on_meta), rf"\b{name} on meta", applies))
    return cases


def step_cases() -> list[Case]:
    """Cases for the step interface: q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1); c, n, m."""
    cases = [
        Case("q-rank4", set_input("q", lambda t: t[:, :, None]), r"^q\b.*3 dimensions"),
        Case("q-rank2", set_input("q", lambda t: t[0]), r"^q\b.*3 dimensions"),
        Case("k-rank4", set_input("k", lambda t: t[None]), r"^k\b.*3 dimensions"),
        Case("v-rank2", set_input("v", lambda t: t[0]), r"^v\b.*3 dimensions"),
        Case("i-rank4", set_input("i", lambda t: t[..., None]), r"^i\b.*shape"),
        Case("f-rank1", set_input("f", lambda t: t.flatten()), r"^f\b.*shape"),
        Case("i-B.NH.2", set_input("i", lambda t: resized(t, 2)), r"^i\b.*shape"),
        Case("k-fp32-q-fp64", set_input("k", lambda t: t.float()), r"k torch\.float32"),
        Case("v-fp16-q-fp64", set_input("v", lambda t: t.half()), r"v torch\.float16"),
        Case("f-fp32-i-fp64", set_input("f", lambda t: t.float()), r"f torch\.float32"),
        Case("q-int64", set_input("q", lambda t: t.long()), r"^q\b.*int64"),
        Case("k-int32", set_input("k", lambda t: t.int()), r"^k\b.*int32"),
        Case("v-int64", set_input("v", lambda t: t.long()), r"^v\b.*int64"),
        Case("i-int64", set_input("i", lambda t: t.long()), r"^i\b.*int64"),
        Case("f-int32", set_input("f", lambda t: t.int()), r"^f\b.*int32"),
        Case("q-list", set_input("q", lambda t: t.tolist()), r"^q\b.*Tensor.*list"),
        Case("v-numpy", set_input("v", lambda t: t.numpy()), r"^v\b.*Tensor.*ndarray"),
        Case("i-float", set_input("i", lambda t: 0.5), r"^i\b.*Tensor.*float"),
        Case("c-list", set_input("c", lambda t: t.tolist()), r"^c\b.*Tensor"),
        Case("m-float", set_input("m", lambda t: 0.5), r"^m\b.*Tensor"),
        *[Case(f"eps-{v!r}", set_kw("eps", v), r"\beps\b") for v in (-1e-3, math.nan, math.inf, "1e-6", None, True)],
        Case("dtype_state-str", set_kw("dtype_state", "float32"), r"\bdtype_state\b"),
        Case("c-DHQK+1", set_input("c", lambda t: resized(t, 2)), r"^c\b.*shape"),
        Case("c-DHHV+1", set_input("c", lambda t: resized(t, 3)), r"^c\b.*shape"),
        Case("n-DHQK+1", set_input("n", lambda t: resized(t, 2)), r"^n\b.*shape"),
        Case("n-B+1", set_input("n", lambda t: resized(t, 0)), r"^n\b.*shape"),
        Case("m-B.NH.2", set_input("m", lambda t: resized(t, 2)), r"^m\b.*shape"),
        Case("m-NH+1", set_input("m", lambda t: resized(t, 1)), r"^m\b.*shape"),
        Case("c-int64", set_input("c", lambda t: t.long()), r"^c\b.*int64"),
        Case("m-int64", set_input("m", lambda t: t.long()), r"^m\b.*int64"),
        Case("n-fp32-c-fp64", set_input("n", lambda t: t.float()), r"\bc and n\b.*dtype"),
        Case("c-only", drop("n", "m"), r"\bc, n and m\b"),
        Case("c-n-no-m", drop("m"), r"\bc, n and m\b"),
        Case("m-only", drop("c", "n"), r"\bc, n and m\b"),
    ]
    for name in ("k", "v", "i", "f"):
        for dim, label in enumerate(("B", "NH")):
            cases.append(
                Case(f"{name}-{label}+1", set_input(name, lambda t, d=dim: resized(t, d)), rf"^{name}\b.*shape")
            )
    cases.append(Case("k-DHQK+1", set_input("k", lambda t: resized(t, 2)), r"^k\b.*shape"))
    for name in ("q", "k", "v", "i", "f", "c", "n", "m"):
        cases.append(Case(f"{name}-meta", set_input(name, on_meta), rf"\b{name} on meta"))
    return cases


BAD_CASES = [(kern, case) for kern in KERNELS if _is_seq(kern) for case in sequence_cases() if case.applies(kern)]
BAD_CASES += [(STEP, case) for case in step_cases()]


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
def test_valid_baseline_runs(kernel, with_states):
    """The unmutated inputs of the bad-input table are valid: each failure below comes from its one mutation."""
    x = make_inputs(kernel, SHAPE, with_states=with_states)
    h, states = run(kernel, x)
    B, NH, S, DHQK, DHHV = SHAPE.dims()
    assert tuple(h.shape) == ((B, NH, DHHV) if kernel.form == "step" else (B, NH, S, DHHV))
    assert bool(torch.isfinite(h).all())
    assert len([s for s in states if s is not None]) == len(kernel.state_names)


@pytest.mark.parametrize("kernel,case", BAD_CASES, ids=[f"{k.name}-{c.id}" for k, c in BAD_CASES])
def test_bad_input_raises(kernel, case):
    x = make_inputs(kernel, SHAPE, with_states=True)
    case.mutate(x)
    with pytest.raises(MLSTMInputError, match=case.match) as info:
        run(kernel, x)
    assert isinstance(info.value, ValueError)


def test_step_kernel_rejects_empty_head_dim():
    x = make_inputs(STEP, SHAPE, with_states=False)
    x["q"], x["k"] = x["q"][..., :0], x["k"][..., :0]
    with pytest.raises(MLSTMInputError, match=r"\bDHQK\b|^q\b"):
        run(STEP, x)


# ---------------------------------------------------------------------------------------------------------------
# Unknown kernel names
# ---------------------------------------------------------------------------------------------------------------

REGISTRIES = {
    "kernel": (get_mlstm_kernel, get_available_mlstm_kernels),
    "step": (get_mlstm_step_kernel, get_available_mlstm_step_kernels),
    "sequence": (get_mlstm_sequence_kernel, get_available_mlstm_sequence_kernels),
}
UNKNOWN_NAMES = [
    ("kernel", "nope"),
    ("kernel", "chunkwise--nope"),
    ("kernel", "nope--native_custbw"),
    ("kernel", "chunkwise--native_custbw--x"),
    ("kernel", "CHUNKWISE--native_custbw"),
    ("kernel", "native_custbw"),
    ("kernel", "chunkwise--triton_nope"),
    ("kernel", ""),
    ("kernel", None),
    ("step", "nope"),
    ("step", "Native"),
    ("step", "triton2"),
    ("step", "chunkwise--native_custbw"),
    ("step", ""),
    ("step", None),
    ("sequence", "nope"),
    ("sequence", "native_sequence__tritonx"),
    ("sequence", "native"),
    ("sequence", None),
]


@pytest.mark.parametrize("registry,name", UNKNOWN_NAMES, ids=[f"{r}-{n!r}" for r, n in UNKNOWN_NAMES])
def test_unknown_kernel_name(registry, name):
    getter, available = REGISTRIES[registry]
    known = available()
    assert known, f"the {registry} registry is empty"
    with pytest.raises(ValueError) as info:
        getter(name)
    message = str(info.value)
    missing = [n for n in known if n not in message]
    assert not missing, f"the message does not list {missing}: {message}"


@pytest.mark.parametrize("registry", ["step", "sequence"])
def test_unknown_kernel_name_unhashable(registry):
    getter, _ = REGISTRIES[registry]
    with pytest.raises(ValueError):
        getter(["native"])


# ---------------------------------------------------------------------------------------------------------------
# NaN policy
# ---------------------------------------------------------------------------------------------------------------

POISON_B, POISON_H = 1, 0  # the (batch, head) that receives the NaN


def poison(kernel: Kernel, x: dict, name: str, value: float) -> dict:
    """A copy of ``x`` with one element of ``name`` in (POISON_B, POISON_H) set to ``value``."""
    y = {k: (t.clone() if isinstance(t, torch.Tensor) else t) for k, t in x.items()}
    t = y[name]
    index = (POISON_B, POISON_H) + tuple(d // 2 for d in t.shape[2:])
    t[index] = value
    return y


def poisonable(kernel: Kernel) -> list[str]:
    return ["q", "k", "v", "i", "f", *kernel.state_names]


NAN_CASES = [
    pytest.param(kern, name, id=f"{num_id(kern)}-fp64-nan_in_{name}")
    for kern in KERNELS
    for name in poisonable(kern)
]  # fmt: skip


@pytest.mark.parametrize("kernel,name", NAN_CASES)
def test_nan_stays_in_its_head(kernel, name, check, monkeypatch):
    monkeypatch.delenv("MLSTM_AUTOTUNE_CHECK_FINITE", raising=False)
    x = make_inputs(kernel, NUM_SHAPE, with_states=True)
    h, states = run(kernel, poison(kernel, x, name, math.nan))
    h_ref, states_ref = oracle(kernel, x)  # on the clean inputs
    assert not bool(torch.isfinite(h[POISON_B, POISON_H]).all()), f"a NaN in {name} vanished from h"
    keep = torch.ones(NUM_SHAPE.B, NUM_SHAPE.NH, dtype=torch.bool)
    keep[POISON_B, POISON_H] = False
    pairs = {"h": (h, h_ref), **state_pairs(kernel, states, states_ref)}
    pairs = {f"{s}[other heads]": (out[keep], ref[keep]) for s, (out, ref) in pairs.items()}
    check(target=f"{kernel.name} with NaN in {name}[{POISON_B}, {POISON_H}]",
          baseline="reference.mlstm_recurrent(fp64) on the clean inputs", dims=NUM_SHAPE.dims(), dtype=torch.float64,
          pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


FINITE_CASES = [(kern, name, value) for kern in KERNELS for name in poisonable(kern) for value in (math.nan,)]
FINITE_CASES += [(kern, name, value) for kern in KERNELS for name in ("v", "f") for value in (math.inf, -math.inf)]


@pytest.mark.parametrize("kernel,name,value", FINITE_CASES, ids=[f"{k.name}-{v}_in_{n}" for k, n, v in FINITE_CASES])
def test_check_finite_env_raises(kernel, name, value, monkeypatch):
    monkeypatch.setenv("MLSTM_AUTOTUNE_CHECK_FINITE", "1")
    x = make_inputs(kernel, NUM_SHAPE, with_states=True)
    h, _ = run(kernel, x)  # clean inputs pass the check
    assert bool(torch.isfinite(h).all())
    with pytest.raises(MLSTMInputError, match=rf"^{name}\b.*(NaN|Inf)"):
        run(kernel, poison(kernel, x, name, value))


# ---------------------------------------------------------------------------------------------------------------
# Non-contiguous views
# ---------------------------------------------------------------------------------------------------------------


def transposed_view(t: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    """The same values, stored with ``dims`` swapped: a non-contiguous view."""
    return t.transpose(*dims).contiguous().transpose(*dims)


def strided_view(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The same values as every second element of a buffer twice as long along ``dim``; the gaps hold NaN, so a
    kernel that reads them poisons its output."""
    shape = list(t.shape)
    shape[dim] *= 2
    buf = torch.full(shape, math.nan, dtype=t.dtype)
    index = [slice(None)] * t.dim()
    index[dim] = slice(0, None, 2)
    buf[tuple(index)] = t
    return buf[tuple(index)]


# how each argument is turned into a non-contiguous view holding the same values
STEP_VIEWS = {
    "q": lambda t: transposed_view(t, (0, 1)),
    "k": lambda t: strided_view(t, 2),
    "v": lambda t: strided_view(t, 1),
    "i": lambda t: strided_view(t, 2),
    "f": lambda t: transposed_view(t, (0, 1)),
    "c": lambda t: transposed_view(t, (2, 3)),
    "n": lambda t: strided_view(t, 2),
    "m": lambda t: strided_view(t, 2),
}
SEQUENCE_VIEWS = {
    "q": lambda t: transposed_view(t, (1, 2)),  # made as (B, S, NH, DHQK), then .transpose(1, 2)
    "k": lambda t: transposed_view(t, (2, 3)),
    "v": lambda t: strided_view(t, 2),  # v sliced with a step along S
    "i": lambda t: transposed_view(t, (1, 2)),
    "f": lambda t: strided_view(t, 2),
    "c_initial": lambda t: transposed_view(t, (2, 3)),
    "n_initial": lambda t: strided_view(t, 2),
    "m_initial": lambda t: strided_view(t, 2),
}


def non_contiguous(kernel: Kernel, x: dict) -> dict:
    views = STEP_VIEWS if kernel.form == "step" else SEQUENCE_VIEWS
    return {k: (views[k](t) if t is not None else None) for k, t in x.items()}


@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("kernel", KERNELS, ids=[f"{i}-fp64" for i in NUM_IDS])
def test_non_contiguous_views(kernel, with_states, check):
    x = make_inputs(kernel, NUM_SHAPE, with_states=with_states)
    xv = non_contiguous(kernel, x)
    for name, t in xv.items():
        if t is not None:
            assert torch.equal(t, x[name]), name
            assert t.dim() < 2 or not t.is_contiguous(), f"{name} should be a non-contiguous view"
    h, states = run(kernel, xv)
    h_contig, states_contig = run(kernel, x)
    h_ref, states_ref = oracle(kernel, x)
    dims = NUM_SHAPE.dims()
    pairs = {"h": (h, h_ref), **state_pairs(kernel, states, states_ref)}
    check(target=f"{kernel.name}(non-contiguous views)", baseline="reference.mlstm_recurrent(fp64)", dims=dims,
          dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip
    pairs = {"h": (h, h_contig), **state_pairs(kernel, states, states_contig)}
    check(target=f"{kernel.name}(non-contiguous views)", baseline=f"{kernel.name}(contiguous copies)", dims=dims,
          dtype=torch.float64, pairs=pairs, limit=1e-12)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Mixed gate dtypes
# ---------------------------------------------------------------------------------------------------------------

GATE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("gate_dtype", GATE_DTYPES.values(), ids=[f"fp32-gates_{n}" for n in GATE_DTYPES])
@pytest.mark.parametrize("kernel", KERNELS, ids=NUM_IDS)
def test_mixed_gate_dtypes(kernel, gate_dtype, with_states, check):
    x = make_inputs(kernel, NUM_SHAPE, dtype=torch.float32, gate_dtype=gate_dtype, with_states=with_states)
    assert x["q"].dtype == torch.float32 and x["i"].dtype == x["f"].dtype == gate_dtype
    h, states = run(kernel, x)
    assert h.dtype == torch.float32
    h_ref, states_ref = oracle(kernel, x)  # the oracle on the rounded gate values, in fp64
    pairs = {"h": (h, h_ref), **state_pairs(kernel, states, states_ref)}
    check(target=f"{kernel.name}(fp32 q/k/v, {gate_dtype} gates)", baseline="reference.mlstm_recurrent(fp64)",
          dims=NUM_SHAPE.dims(), dtype=torch.float32, pairs=pairs, limit=LIMITS[torch.float32])  # fmt: skip


def test_numpy_is_not_silently_accepted():
    """A numpy array for every input (a common slip) is rejected, not converted."""
    x = make_inputs(CHUNKWISE, SHAPE, with_states=False)
    x = {k: np.asarray(t) for k, t in x.items()}
    with pytest.raises(MLSTMInputError, match=r"^q\b.*Tensor"):
        run(CHUNKWISE, x)


def test_step_checks_skip_only_what_passed_before(monkeypatch):
    """check_step_inputs remembers the signatures (type, shape, dtype, device) of inputs that passed; anything else
    is checked in full, and the finite check still runs on a remembered signature."""
    from autotune.checks import check_step_inputs

    B, NH, K, V = 2, 3, 8, 12
    good = [torch.randn(B, NH, K), torch.randn(B, NH, K), torch.randn(B, NH, V), torch.randn(B, NH, 1),
            torch.randn(B, NH, 1), torch.zeros(B, NH, K, V), torch.zeros(B, NH, K), torch.zeros(B, NH, 1)]  # fmt: skip
    assert check_step_inputs(*good).DHHV == V
    assert check_step_inputs(*good).DHHV == V  # remembered
    with pytest.raises(MLSTMInputError, match="k must have shape"):
        check_step_inputs(good[0], torch.randn(B, NH, K + 1), *good[2:])
    with pytest.raises(MLSTMInputError, match="must be a torch.Tensor"):
        check_step_inputs(good[0].tolist(), *good[1:])
    monkeypatch.setenv("MLSTM_AUTOTUNE_CHECK_FINITE", "1")
    bad = [t.clone() for t in good]
    bad[0][0, 0, 0] = float("nan")
    with pytest.raises(MLSTMInputError, match="NaN"):
        check_step_inputs(*bad)


def test_an_unknown_backward_states_setting_is_a_clear_error(monkeypatch):
    import torch

    from autotune.torch import MLSTMInputError, get_mlstm_kernel

    monkeypatch.setenv("MLSTM_AUTOTUNE_BACKWARD_STATES", "keep")
    x = {n: torch.randn(1, 1, 16, 16, requires_grad=True) for n in "qkv"} | {
        n: torch.randn(1, 1, 16, requires_grad=True) for n in "if"
    }
    with pytest.raises(MLSTMInputError, match="MLSTM_AUTOTUNE_BACKWARD_STATES must be 'recompute' or unset"):
        get_mlstm_kernel("chunkwise--triton_xl_chunk")(**x, chunk_size=16)
