"""Input validation shared by every kernel: bad input gets a clear error here, never a crash deep inside a kernel.

Rules (README "Input rules" documents them for users):
- q, k: (B, NH, S, DHQK); v: (B, NH, S, DHHV); i, f: (B, NH, S); S >= 1; all on one device.
- q, k, v share one floating dtype (float16, bfloat16, float32, float64); i and f share one floating dtype, which
  may differ from q's (gate arithmetic always runs in at least float32).
- States: c (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1) or (B, NH); floating; same device. The exp cell
  takes all three or none; the sig cell takes c and n (m is ignored).
- Non-finite values are not scanned for (that would cost a device sync per call): NaN/Inf in an input propagate to
  the outputs of the affected (batch, head). Set MLSTM_AUTOTUNE_CHECK_FINITE=1 to raise on them instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CELLS = ("exp", "sig")


@dataclass(frozen=True)
class ArrayKind:
    """What the checks need to know of an array library (PyTorch here; autotune/jax/checks.py defines JAX's)."""

    type_name: str  # in messages: "q must be a torch.Tensor"
    is_array: Callable[[object], bool]
    float_dtypes: tuple
    device_of: Callable[[object], object] | None  # None: placement is left to the library (JAX under jit)
    all_finite: Callable[[object], bool]  # for MLSTM_AUTOTUNE_CHECK_FINITE; True where values are unknown (tracing)


TORCH = ArrayKind(
    type_name="torch.Tensor",
    is_array=lambda t: isinstance(t, torch.Tensor),
    float_dtypes=FLOAT_DTYPES,
    device_of=lambda t: t.device,  # a lambda, not operator.attrgetter: torch.compile traces lambdas, not attrgetter
    all_finite=lambda t: bool(torch.isfinite(t).all()),
)


class MLSTMInputError(ValueError):
    """Raised for any invalid argument to an mLSTM kernel (shape, dtype, device, rank, option)."""


@dataclass(frozen=True)
class Dims:
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int


def _require(cond: bool, message) -> None:
    """Raise MLSTMInputError(message()) unless cond. The message is a callable so that the checks of a step (run
    every token) build no strings when the inputs are fine: eager f-strings cost most of a step call's Python time."""
    if not cond:
        raise MLSTMInputError(message() if callable(message) else message)


def _check_tensor(name: str, t, rank: int, kind: ArrayKind = TORCH) -> None:
    _require(kind.is_array(t), lambda: f"{name} must be a {kind.type_name}, got {type(t).__name__}")
    _require(len(t.shape) == rank, lambda: f"{name} must have {rank} dimensions, got shape {tuple(t.shape)}")
    _require(t.dtype in kind.float_dtypes, lambda: f"{name} must be float16/bfloat16/float32/float64, got {t.dtype}")


def _check_shape(name: str, t, expected: tuple[int, ...], what: str) -> None:
    _require(tuple(t.shape) == expected, lambda: f"{name} must have shape {what} = {expected}, got {tuple(t.shape)}")


def _check_same_device(named: dict, kind: ArrayKind = TORCH) -> None:
    if kind.device_of is None:
        return
    first = None
    for t in named.values():
        if t is None:
            continue
        if first is None:
            first = kind.device_of(t)
        elif kind.device_of(t) != first:
            present = {k: t for k, t in named.items() if t is not None}
            listing = ", ".join(f"{k} on {kind.device_of(t)}" for k, t in present.items())
            raise MLSTMInputError(f"all inputs must be on one device, got {listing}")


def _check_finite(named: dict, kind: ArrayKind = TORCH) -> None:
    if os.environ.get("MLSTM_AUTOTUNE_CHECK_FINITE", "0") in ("", "0"):
        return
    for name, t in named.items():
        if t is not None and not kind.all_finite(t):
            raise MLSTMInputError(f"{name} contains NaN or Inf (MLSTM_AUTOTUNE_CHECK_FINITE is set)")


def check_cell(cell: str, normalize: bool = True) -> None:
    _require(cell in CELLS, lambda: f"cell must be one of {CELLS}, got {cell!r}")
    _require(isinstance(normalize, bool), lambda: f"normalize must be a bool, got {normalize!r}")


def check_eps(eps) -> None:
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0
    _require(ok, lambda: f"eps must be a finite float >= 0, got {eps!r}")


def check_chunk_size(chunk_size) -> None:
    _require(
        isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1,
        lambda: f"chunk_size must be an int >= 1, got {chunk_size!r}",
    )


def _check_states(c, n, m, B, NH, DHQK, DHHV, cell: str, names=("c_initial", "n_initial", "m_initial"),
                  kind: ArrayKind = TORCH) -> None:  # fmt: skip
    c_name, n_name, m_name = names
    if cell == "exp":
        given = [x is not None for x in (c, n, m)]
        _require(
            all(given) or not any(given),
            lambda: (
                f"the exp cell needs {c_name}, {n_name} and {m_name} together or none of them; "
                f"got {', '.join(nm for nm, g in zip(names, given) if g)}"
            ),
        )
    else:
        _require(
            (c is None) == (n is None), lambda: f"the sig cell needs {c_name} and {n_name} together or neither of them"
        )
    if c is not None:
        _check_tensor(c_name, c, 4, kind)
        _check_shape(c_name, c, (B, NH, DHQK, DHHV), "(B, NH, DHQK, DHHV)")
        _check_tensor(n_name, n, 3, kind)
        _check_shape(n_name, n, (B, NH, DHQK), "(B, NH, DHQK)")
        _require(c.dtype == n.dtype, lambda: f"{c_name} and {n_name} must share a dtype, got {c.dtype} and {n.dtype}")
    if m is not None and cell == "exp":
        _require(kind.is_array(m), lambda: f"{m_name} must be a {kind.type_name}, got {type(m).__name__}")
        _require(
            tuple(m.shape) in ((B, NH, 1), (B, NH)),
            lambda: f"{m_name} must have shape (B, NH, 1) = {(B, NH, 1)}, got {tuple(m.shape)}",
        )
        _require(m.dtype in kind.float_dtypes, lambda: f"{m_name} must be a floating array, got {m.dtype}")


def check_sequence_inputs(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, *, cell: str = "exp",
                          kind: ArrayKind = TORCH, states_batch: int | None = None) -> Dims:  # fmt: skip
    """Validate the inputs of a chunkwise/parallel/sequence kernel; return the problem dimensions. Initial states
    have ``states_batch`` rows (default: B; packed documents: one per document)."""
    _check_tensor("q", q, 4, kind)
    B, NH, S, DHQK = q.shape
    _require(S >= 1, lambda: f"the sequence length S must be >= 1, got q of shape {tuple(q.shape)}")
    _require(DHQK >= 1, lambda: f"DHQK must be >= 1, got q of shape {tuple(q.shape)}")
    _check_tensor("k", k, 4, kind)
    _check_shape("k", k, (B, NH, S, DHQK), "(B, NH, S, DHQK) like q")
    _check_tensor("v", v, 4, kind)
    _require(
        tuple(v.shape[:3]) == (B, NH, S) and v.shape[3] >= 1,
        lambda: f"v must have shape (B, NH, S, DHHV) with (B, NH, S) = {(B, NH, S)} as in q, got {tuple(v.shape)}",
    )
    DHHV = v.shape[3]
    _require(
        q.dtype == k.dtype == v.dtype, lambda: f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
    )
    for name, g in (("i", i), ("f", f)):
        _check_tensor(name, g, 3, kind)
        _check_shape(name, g, (B, NH, S), "(B, NH, S)")
    _require(i.dtype == f.dtype, lambda: f"i and f must share a dtype, got i {i.dtype}, f {f.dtype}")
    _check_states(c_initial, n_initial, m_initial, B if states_batch is None else states_batch, NH, DHQK, DHHV, cell,
                  kind=kind)  # fmt: skip
    named = dict(q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial)
    _check_same_device(named, kind)
    _check_finite(named, kind)
    return Dims(B, NH, S, DHQK, DHHV)


# what step inputs that passed looked like: a decoding loop calls the step with the same kinds of tensors every token,
# and the checks depend on nothing but each argument's type, shape, dtype and device (and the cell)
_STEP_PASSED: dict[tuple, Dims] = {}


def _step_signature(cell: str, args: tuple, kind: ArrayKind) -> tuple | None:
    device = kind.device_of
    try:
        return (cell, kind.type_name) + tuple(
            None if a is None else (type(a), a.shape, a.dtype, device(a) if device else None) for a in args
        )
    except (AttributeError, TypeError):  # not an array, or unhashable (symbolic) sizes: the full checks run
        return None


def check_step_inputs(q, k, v, i, f, c, n, m, *, cell: str = "exp", kind: ArrayKind = TORCH) -> Dims:
    """Validate the inputs of a step kernel: q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH, 1) or (B, NH).
    Arguments of the same types, shapes, dtypes and devices as a set that passed before are not checked again
    (a step call's Python time is what a small batch waits for); the finite check, when enabled, always runs.
    Under torch.compile the checks run in full, once, when the graph is traced: the memo is not traced (its keys
    may hold any array library's dtypes, which Dynamo cannot hash)."""
    if torch.compiler.is_compiling():
        return _check_step_inputs(q, k, v, i, f, c, n, m, cell=cell, kind=kind)
    key = _step_signature(cell, (q, k, v, i, f, c, n, m), kind)
    try:
        dims = _STEP_PASSED.get(key) if key is not None else None
    except TypeError:  # a signature that cannot be hashed
        key = dims = None
    if dims is None:
        dims = _check_step_inputs(q, k, v, i, f, c, n, m, cell=cell, kind=kind)
        if key is not None:
            if len(_STEP_PASSED) >= 256:
                _STEP_PASSED.clear()
            _STEP_PASSED[key] = dims
    elif os.environ.get("MLSTM_AUTOTUNE_CHECK_FINITE", "0") not in ("", "0"):
        _check_finite(dict(q=q, k=k, v=v, i=i, f=f, c=c, n=n, m=m), kind)
    return dims


def _check_step_inputs(q, k, v, i, f, c, n, m, *, cell: str, kind: ArrayKind) -> Dims:
    _check_tensor("q", q, 3, kind)
    B, NH, DHQK = q.shape
    _require(DHQK >= 1, lambda: f"DHQK must be >= 1, got q of shape {tuple(q.shape)}")
    _check_tensor("k", k, 3, kind)
    _check_shape("k", k, (B, NH, DHQK), "(B, NH, DHQK) like q")
    _check_tensor("v", v, 3, kind)
    _require(
        tuple(v.shape[:2]) == (B, NH) and v.shape[2] >= 1,
        lambda: f"v must have shape (B, NH, DHHV) with (B, NH) = {(B, NH)} and DHHV >= 1, got {tuple(v.shape)}",
    )
    DHHV = v.shape[2]
    _require(
        q.dtype == k.dtype == v.dtype, lambda: f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
    )
    for name, g in (("i", i), ("f", f)):
        _require(kind.is_array(g), lambda name=name, g=g: f"{name} must be a {kind.type_name}, got "
                 f"{type(g).__name__}")  # fmt: skip
        _require(
            tuple(g.shape) in ((B, NH, 1), (B, NH)),
            lambda name=name, g=g: f"{name} must have shape (B, NH, 1) = {(B, NH, 1)}, got {tuple(g.shape)}",
        )
        _require(g.dtype in kind.float_dtypes, lambda name=name, g=g: f"{name} must be a floating array, got {g.dtype}")
    _require(i.dtype == f.dtype, lambda: f"i and f must share a dtype, got i {i.dtype}, f {f.dtype}")
    _check_states(c, n, m, B, NH, DHQK, DHHV, cell, names=("c", "n", "m"), kind=kind)
    named = dict(q=q, k=k, v=v, i=i, f=f, c=c, n=n, m=m)
    _check_same_device(named, kind)
    _check_finite(named, kind)
    return Dims(B, NH, 1, DHQK, DHHV)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32: the dtype native kernels compute and keep states in."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
