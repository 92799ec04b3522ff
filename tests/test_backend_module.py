"""``autotune.torch.backend_module``: config validation, every mode against the fp64 oracle, state dtypes, prefill
followed by steps, which kernel runs for which S in inference, and gradients through train mode.

The kernel-routing test wraps the registry entries (monkeypatch, undone after each test) before the backend is
built, so it sees exactly the calls the backend makes.
"""

from __future__ import annotations

import math
import typing

import pytest
import torch
from helpers import GRAD_LIMIT_FP64, LIMITS, Shape

from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch import (
    get_available_mlstm_kernels,
    get_available_mlstm_sequence_kernels,
    get_available_mlstm_step_kernels,
    registry,
)
from autotune.torch.backend_module import (
    BackendModeType,
    ChunkwiseKernelType,
    DtypeType,
    SequenceKernelType,
    StepKernelType,
    mLSTMBackend,
    mLSTMBackendConfig,
)

CHUNK = 16
KERNELS = {  # name -> cell
    "chunkwise--native_custbw": "exp",
    "parallel--native_stablef_custbw": "exp",
    "parallel--native_siging_custbw": "sig",
}
MODES = ["train", "train_with_padding", "inference"]
SEQ_LENS = [1, 7, 16, 40]  # one token; shorter than a chunk; one chunk; two chunks and a tail


def shape(S: int) -> Shape:
    return Shape(B=1, NH=2, S=S, DHQK=8, DHHV=12)


def inputs(cell: str, shp: Shape, *, dtype=torch.float64, with_states: bool = False) -> dict:
    x = random_inputs(*shp.dims(), dtype=dtype, with_states=with_states)
    if cell == "sig":
        x.pop("m_initial", None)
    return x


def oracle(x: dict, cell: str):
    xd = {k: t.detach().double() for k, t in x.items()}
    return mlstm_recurrent(**xd, cell=cell, return_last_states=True)


def state_names(cell: str) -> list[str]:
    return ["C_last", "n_last", "m_last"] if cell == "exp" else ["C_last", "n_last"]


def backend(name: str, **config) -> mLSTMBackend:
    return mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel=name, chunk_size=CHUNK, **config))


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ("chunkwise_kernel", "chunkwise--nope"),
    ("chunkwise_kernel", "chunkwise--triton_nope"),
    ("chunkwise_kernel", "native"),  # a step kernel's name
    ("sequence_kernel", "nope"),
    ("sequence_kernel", "chunkwise--native_custbw"),
    ("step_kernel", "nope"),
    ("mode", "eval"),
    ("mode", "Train"),
    ("mode", None),
    ("chunk_size", 0),
    ("chunk_size", -16),
    ("chunk_size", 2.5),
    ("chunk_size", True),
    ("chunk_size", "64"),
    ("autocast_kernel_dtype", "float64"),
    ("autocast_kernel_dtype", "bf16"),
    ("autocast_kernel_dtype", torch.float64),
    ("inference_state_dtype", "float64"),
    ("inference_state_dtype", "half"),
    ("inference_state_dtype", None),
    ("eps", -1e-6),
    ("eps", math.nan),
    ("eps", math.inf),
    ("eps", "1e-6"),
    ("return_last_states", 1),
    ("return_last_states", "yes"),
    ("return_last_states", None),
    ("normalize_siging", "no"),
]
REGISTRY_LISTS = {
    "chunkwise_kernel": get_available_mlstm_kernels,
    "sequence_kernel": get_available_mlstm_sequence_kernels,
    "step_kernel": get_available_mlstm_step_kernels,
}


@pytest.mark.parametrize("field,value", BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v in BAD_CONFIGS])
def test_bad_config_raises_at_construction(field, value):
    with pytest.raises(ValueError, match=rf"\b{field}\b") as info:
        mLSTMBackendConfig(**{field: value})
    if field in REGISTRY_LISTS:
        known = REGISTRY_LISTS[field]()
        missing = [n for n in known if n not in str(info.value)]
        assert not missing, f"the message does not list {missing}: {info.value}"


def test_config_rejects_bool_eps():
    with pytest.raises(ValueError, match=r"\beps\b"):
        mLSTMBackendConfig(eps=True)


def test_backend_needs_a_config():
    with pytest.raises(ValueError, match="mLSTMBackendConfig"):
        mLSTMBackend({"chunkwise_kernel": "chunkwise--native_custbw"})


def test_forward_rejects_unknown_mode():
    b = backend("chunkwise--native_custbw")
    x = inputs("exp", shape(7))
    with pytest.raises(ValueError, match=r"\bmode\b"):
        b(**x, mode="eval")


def test_type_aliases():
    """The aliases import and admit every registered name, so type-checked model code can use any of them."""
    kernels, sequences, steps = (set(typing.get_args(t)) for t in (ChunkwiseKernelType, SequenceKernelType,
                                                                    StepKernelType))  # fmt: skip
    assert set(get_available_mlstm_kernels()) <= kernels
    assert set(get_available_mlstm_sequence_kernels()) <= sequences
    assert set(get_available_mlstm_step_kernels()) <= steps
    assert set(typing.get_args(BackendModeType)) == set(MODES)
    dtypes = typing.get_args(DtypeType)
    assert {"float32", "bfloat16", "float16"} <= set(dtypes)
    for d in dtypes:  # every admitted dtype name is accepted by the config
        mLSTMBackendConfig(autocast_kernel_dtype=d, inference_state_dtype=d)
    for mode in typing.get_args(BackendModeType):
        mLSTMBackendConfig(mode=mode)


# ---------------------------------------------------------------------------------------------------------------
# Every mode against the oracle
# ---------------------------------------------------------------------------------------------------------------

MODE_CASES = [(n, mode, s, S) for n in KERNELS for mode in MODES for s in (False, True) for S in SEQ_LENS]


@pytest.mark.parametrize(
    "name,mode,with_states,S",
    MODE_CASES,
    ids=[f"{n}-{m}-{'state' if s else 'nostate'}-{shape(S).id}-fp64" for n, m, s, S in MODE_CASES],
)
def test_mode_matches_oracle(name, mode, with_states, S, check):
    cell = KERNELS[name]
    shp = shape(S)
    x = inputs(cell, shp, with_states=with_states)
    h, states = backend(name, mode=mode)(**x)
    h_ref, states_ref = oracle(x, cell)
    assert len(states) == len(states_ref), f"{cell} cell returns {len(states_ref)} states, got {len(states)}"
    assert h.dtype == torch.float64 and all(s.dtype == torch.float64 for s in states)
    pairs = {"h": (h, h_ref), **dict(zip(state_names(cell), zip(states, states_ref)))}
    check(target=f"mLSTMBackend({name}, mode={mode})", baseline="reference.mlstm_recurrent(fp64)", dims=shp.dims(),
          dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("name", list(KERNELS))
def test_return_last_states_false_returns_only_h(name, check):
    cell = KERNELS[name]
    shp = shape(40)
    x = inputs(cell, shp)
    h_ref, _ = oracle(x, cell)
    out_config = backend(name, mode="train", return_last_states=False)(**x)
    out_call = backend(name, mode="train")(**x, return_last_states=False)
    for out in (out_config, out_call):
        assert isinstance(out, torch.Tensor), f"expected h alone, got {type(out).__name__}"
    check(target=f"mLSTMBackend({name}, return_last_states=False)", baseline="reference.mlstm_recurrent(fp64)",
          dims=shp.dims(), dtype=torch.float64, pairs={"h(config)": (out_config, h_ref), "h(call)": (out_call, h_ref)},
          limit=LIMITS[torch.float64])  # fmt: skip
    # a call-level True overrides a config-level False
    out = backend(name, mode="train", return_last_states=False)(**x, return_last_states=True)
    assert isinstance(out, tuple) and len(out[1]) == len(state_names(cell))
    # inference always returns the last state
    out = backend(name, mode="inference", return_last_states=False)(**x, return_last_states=False)
    assert isinstance(out, tuple) and len(out[1]) == len(state_names(cell))


# ---------------------------------------------------------------------------------------------------------------
# Which kernel runs: wrap the registry entries before the backend is built
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch):
    """Replace the registered native kernels with recording wrappers; returns the list of calls, each a dict
    (kind, S, chunk_size, cell, has_state)."""
    log: list[dict] = []

    def wrap(kind, fn):
        def recorder(*args, **kwargs):
            q = kwargs["q"] if "q" in kwargs else args[0]
            state = kwargs.get("c_initial", args[5] if len(args) > 5 else None)
            log.append(dict(kind=kind, S=1 if kind == "step" else q.shape[2], chunk_size=kwargs.get("chunk_size"),
                            cell=kwargs.get("cell"), has_state=state is not None))  # fmt: skip
            return fn(*args, **kwargs)

        return recorder

    reg = registry.REGISTRY
    for form, backends in reg._sequence.items():
        for b, fn in list(backends.items()):
            monkeypatch.setitem(backends, b, wrap(form, fn))
    for b, fn in list(reg._step.items()):
        monkeypatch.setitem(reg._step, b, wrap("step", fn))
    for b, fn in list(reg._sequence_loop.items()):
        monkeypatch.setitem(reg._sequence_loop, b, wrap("sequence", fn))
    return log


def expected_inference_calls(form: str, S: int) -> list[tuple[str, int]]:
    """README: S = 1 -> the step kernel; else the chunkwise kernel over the largest multiple of chunk_size and the
    sequence kernel over the rest."""
    if S == 1:
        return [("step", 1)]
    bulk = (S // CHUNK) * CHUNK
    return [(form, bulk)] * (bulk > 0) + [("sequence", S - bulk)] * (bulk < S)


ROUTE_CASES = [(n, S) for n in KERNELS for S in (1, 2, 7, 16, 40, 48)]


@pytest.mark.parametrize("name,S", ROUTE_CASES, ids=[f"{n}-{shape(S).id}" for n, S in ROUTE_CASES])
def test_inference_kernel_routing(name, S, calls, check):
    cell = KERNELS[name]
    form = name.split("--")[0]
    b = backend(name, mode="inference")
    shp = shape(S)
    x = inputs(cell, shp)
    h, states = b(**x)
    assert [(c["kind"], c["S"]) for c in calls] == expected_inference_calls(form, S)
    for c in calls:
        if c["kind"] == form:
            assert c["chunk_size"] == CHUNK
        else:  # the step and sequence kernels run the backend's cell
            assert c["cell"] == cell
        if c["kind"] == "sequence" and S > CHUNK:
            assert c["has_state"], "the sequence kernel must continue from the chunkwise kernel's last state"
    h_ref, states_ref = oracle(x, cell)
    pairs = {"h": (h, h_ref), **dict(zip(state_names(cell), zip(states, states_ref)))}
    check(target=f"mLSTMBackend({name}, inference)", baseline="reference.mlstm_recurrent(fp64)", dims=shp.dims(),
          dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("name", list(KERNELS))
def test_forward_mode_overrides_config(name, calls):
    cell = KERNELS[name]
    form = name.split("--")[0]
    x40, x1 = inputs(cell, shape(40)), inputs(cell, shape(1))
    # config train, call inference: routed like inference, and the state comes back despite the config
    b = backend(name, mode="train", return_last_states=False)
    out = b(**x40, mode="inference")
    assert isinstance(out, tuple)
    assert [(c["kind"], c["S"]) for c in calls] == expected_inference_calls(form, 40)
    calls.clear()
    out = b(**x1, mode="inference")
    assert isinstance(out, tuple) and [c["kind"] for c in calls] == ["step"]
    calls.clear()
    # config inference, call train: one chunkwise call over the whole sequence, h alone as asked
    b = backend(name, mode="inference")
    for mode in ("train", "train_with_padding"):
        out = b(**x40, mode=mode, return_last_states=False)
        assert isinstance(out, torch.Tensor)
        assert [(c["kind"], c["S"], c["chunk_size"]) for c in calls] == [(form, 40, CHUNK)]
        calls.clear()
        b(**x1, mode=mode)
        assert [(c["kind"], c["S"]) for c in calls] == [(form, 1)]
        calls.clear()


# ---------------------------------------------------------------------------------------------------------------
# Inference state dtype; prefill followed by steps
# ---------------------------------------------------------------------------------------------------------------

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CASES = [(n, d, S, s) for n in KERNELS for d in STATE_DTYPES for S in SEQ_LENS for s in (False, True)]


@pytest.mark.parametrize(
    "name,state_dtype,S,with_states",
    DTYPE_CASES,
    ids=[f"{n}-state_{d}-{'state' if s else 'nostate'}-{shape(S).id}-fp32" for n, d, S, s in DTYPE_CASES],
)
def test_inference_state_dtype(name, state_dtype, S, with_states, check):
    cell = KERNELS[name]
    shp = shape(S)
    x = inputs(cell, shp, dtype=torch.float32, with_states=with_states)
    h, states = backend(name, mode="inference", inference_state_dtype=state_dtype)(**x)
    assert h.dtype == torch.float32
    # C and n in the configured dtype; m (the log-scale of C and n) in at least fp32
    expected_dtypes = [STATE_DTYPES[state_dtype]] * 2 + [torch.promote_types(STATE_DTYPES[state_dtype], torch.float32)]
    assert [s.dtype for s in states] == expected_dtypes[: len(state_names(cell))]
    B, NH, _, DHQK, DHHV = shp.dims()
    expected_shapes = [(B, NH, DHQK, DHHV), (B, NH, DHQK), (B, NH, 1)][: len(state_names(cell))]
    assert [tuple(s.shape) for s in states] == expected_shapes
    if state_dtype == "float32":
        h_ref, states_ref = oracle(x, cell)
        pairs = {"h": (h, h_ref), **dict(zip(state_names(cell), zip(states, states_ref)))}
        check(target=f"mLSTMBackend({name}, inference, fp32 states)", baseline="reference.mlstm_recurrent(fp64)",
              dims=shp.dims(), dtype=torch.float32, pairs=pairs, limit=LIMITS[torch.float32])  # fmt: skip
    else:
        assert bool(torch.isfinite(h).all()) and all(bool(torch.isfinite(s).all()) for s in states)


PREFILL_CASES = [(n, s) for n in KERNELS for s in (False, True)]


@pytest.mark.parametrize(
    "name,with_states", PREFILL_CASES, ids=[f"{n}-{'state' if s else 'nostate'}" for n, s in PREFILL_CASES]
)
def test_prefill_then_steps_equals_one_call(name, with_states, check):
    cell = KERNELS[name]
    prefill, n_steps = 40, 5  # the prefill runs the chunkwise kernel on 32 tokens and the sequence kernel on 8
    shp = shape(prefill + n_steps)
    x = inputs(cell, shp, with_states=with_states)
    b = backend(name, mode="inference")
    seq_names = ("q", "k", "v", "i", "f")
    state_args = [x[k] for k in ("c_initial", "n_initial", "m_initial") if k in x]
    h, state = b(*(x[k][:, :, :prefill] for k in seq_names), *state_args)
    hs = [h]
    for t in range(prefill, prefill + n_steps):
        h, state = b(*(x[k][:, :, t : t + 1] for k in seq_names), *state)
        assert h.shape[2] == 1
        hs.append(h)
    h_steps = torch.cat(hs, dim=2)
    h_one, state_one = b(**x)
    h_ref, state_ref = oracle(x, cell)
    names = state_names(cell)
    pairs = {"h": (h_steps, h_one), **dict(zip(names, zip(state, state_one)))}
    check(target=f"mLSTMBackend({name}) prefill {prefill} + {n_steps} steps",
          baseline=f"mLSTMBackend({name}) one call over S={shp.S}", dims=shp.dims(), dtype=torch.float64, pairs=pairs,
          limit=LIMITS[torch.float64])  # fmt: skip
    pairs = {"h": (h_steps, h_ref), **dict(zip(names, zip(state, state_ref)))}
    check(target=f"mLSTMBackend({name}) prefill {prefill} + {n_steps} steps",
          baseline="reference.mlstm_recurrent(fp64)", dims=shp.dims(), dtype=torch.float64, pairs=pairs,
          limit=LIMITS[torch.float64])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Gradients through train mode
# ---------------------------------------------------------------------------------------------------------------

GRAD_CASES = [(n, s, S) for n in KERNELS for s in (False, True) for S in (7, 40)]


@pytest.mark.parametrize(
    "name,with_states,S",
    GRAD_CASES,
    ids=[f"{n}-{'state' if s else 'nostate'}-{shape(S).id}-fp64" for n, s, S in GRAD_CASES],
)
def test_train_gradients_match_oracle(name, with_states, S, check):
    """A random linear loss on h and on the last states; gradients of every input against autograd through the
    fp64 oracle."""
    cell = KERNELS[name]
    shp = shape(S)
    x = inputs(cell, shp, with_states=with_states)
    xb = {k: t.clone().requires_grad_(True) for k, t in x.items()}
    xr = {k: t.clone().requires_grad_(True) for k, t in x.items()}
    h, states = backend(name, mode="train")(**xb)
    h_ref, states_ref = mlstm_recurrent(**xr, cell=cell, return_last_states=True)
    weights = [torch.randn_like(h_ref), *(torch.randn_like(s) for s in states_ref)]

    def loss(h, states):
        return (h * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))

    loss(h, states).backward()
    loss(h_ref, states_ref).backward()
    pairs = {f"d{k}": (xb[k].grad, xr[k].grad) for k in x}
    assert all(g is not None for g, _ in pairs.values()), {k: g is None for k, (g, _) in pairs.items()}
    check(target=f"mLSTMBackend({name}, train) backward", baseline="autograd through reference.mlstm_recurrent(fp64)",
          dims=shp.dims(), dtype=torch.float64, pairs=pairs, limit=GRAD_LIMIT_FP64)  # fmt: skip
