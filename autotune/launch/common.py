"""What every launcher needs: tensors made contiguous, the initial-state arguments, power-of-two tiles, checks of a
launch configuration, and the dot precision for fp32 inputs."""

from __future__ import annotations

import os

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from ..checks import MLSTMInputError


def poisoning() -> bool:
    """MLSTM_AUTOTUNE_POISON=1 fills every buffer a kernel must write with NaN before the launch, so that an
    element a kernel forgets to write fails the check instead of passing on stale memory (used by the tests)."""
    return os.environ.get("MLSTM_AUTOTUNE_POISON", "0") not in ("", "0")


def empty(*shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for kernel outputs: NaN-filled when poisoning() is on."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if poisoning() and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def without_data(t: torch.Tensor) -> bool:
    """Whether ``t`` is a meta, fake or functional tensor: a call being recorded (autotune/launch/trace.py) or traced
    by torch.compile, whose buffers exist only per call (a launcher's cached buffers cannot be used in it)."""
    return t.device.type == "meta" or isinstance(t, (FakeTensor, FunctionalTensor))


def tile_store(buffer: torch.Tensor, BK: int, BV: int, knob: str, tma: bool):
    """(what a kernel gets for ``buffer``, whether it stores through a descriptor). ``buffer``: per-chunk state tiles
    (..., DHQK, DHHV), one tile per chunk, that a kernel stores in [BK, BV] tiles. With ``tma`` (``knob`` is "tma"),
    a tensor descriptor of it as (chunk slots, DHQK, DHHV) in blocks [1, BK, BV], whose bounds clip a last partial
    tile; a recorded or traced call (without_data: JAX's replay, torch.compile) gets the buffer and plain stores,
    the same bits. A buffer a descriptor cannot describe (two planes per chunk, rows not at 16-byte multiples) raises
    MLSTMInputError."""
    if not tma or without_data(buffer):
        return buffer, False
    DHQK, DHHV = buffer.shape[-2:]
    if buffer.dim() != 5 or DHHV * buffer.element_size() % 16:
        raise MLSTMInputError(f'{knob} "tma" needs one state tile per chunk in rows of 16-byte multiples, not a '
                              f"{buffer.dtype} buffer of shape {tuple(buffer.shape)}")  # fmt: skip
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(buffer.view(-1, DHQK, DHHV), [1, BK, BV]), True


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (max(1, x) - 1).bit_length())


def contiguous(*tensors):
    return tuple(t.contiguous() if t is not None else None for t in tensors)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use true fp32 dots ("ieee", limit 1e-5 in docs/math.md §7) unless MLSTM_AUTOTUNE_TF32=1 asks
    for TF32."""
    if dtype == torch.float32 and os.environ.get("MLSTM_AUTOTUNE_TF32", "0") not in ("", "0"):
        return "tf32"
    return "ieee"


def state_args(C0, n0, m0, like: torch.Tensor):
    """Pointers for the initial state: the given tensors (contiguous), or a 1-element dummy when there is none."""
    if C0 is None:
        dummy = torch.zeros(1, dtype=torch.float32, device=like.device)
        return dummy, dummy, dummy, False
    m0 = m0 if m0 is not None else torch.zeros(C0.shape[:2], dtype=torch.float32, device=C0.device)
    C0, n0, m0 = contiguous(C0, n0, m0.reshape(C0.shape[:2]))
    return C0, n0, m0, True


def require_pow2(config: dict, *names: str, minimum: int = 16) -> None:
    for name in names:
        value = config[name]
        if not isinstance(value, int) or value < minimum or value & (value - 1):
            raise MLSTMInputError(f"launch parameter {name} must be a power of two >= {minimum}, got {value!r}")


def require_choice(config: dict, name: str, choices: tuple, default) -> None:
    """A categorical launch parameter (absent: ``default``, for entries tuned before it existed) must be one of
    ``choices``."""
    value = config.get(name, default)
    if value not in choices:
        raise MLSTMInputError(f"launch parameter {name} must be one of {choices}, got {value!r}")


def last_state_buffers(B, NH, DHQK, DHHV, device, store: bool):
    if not store:
        dummy = torch.empty(1, dtype=torch.float32, device=device)
        return dummy, dummy, dummy
    C = empty(B, NH, DHQK, DHHV, dtype=torch.float32, device=device)
    n = empty(B, NH, DHQK, dtype=torch.float32, device=device)
    # m in the shape the launchers return: a reshaped view of it as an operator's output, which the backward views
    # again, made AOTAutograd's partitioner return the backward's view in its place (compiled_ops)
    m = empty(B, NH, 1, dtype=torch.float32, device=device)
    return C, n, m


def stats_buffers(B, NH, S, device, saved: dict | None):
    """The per-token statistics a forward keeps for the backward: s (the normaliser's argument) and m (the max
    state), fp32 (B, NH, S) each, entered into ``saved``; 1-element dummies when ``saved`` is None."""
    if saved is None:
        dummy = torch.empty(1, dtype=torch.float32, device=device)
        return dummy, dummy
    saved["s"] = empty(B, NH, S, dtype=torch.float32, device=device)
    saved["mt"] = empty(B, NH, S, dtype=torch.float32, device=device)
    return saved["s"], saved["mt"]


MAX_GRID_HEADS = 65535  # CUDA's limit on a grid's y and z axes, where the launchers put B * NH


def check_heads(B: int, NH: int) -> None:
    """The generated kernels put one program row per (batch, head) on a grid axis that CUDA limits to 65,535."""
    if B * NH > MAX_GRID_HEADS:
        raise MLSTMInputError(f"B * NH = {B * NH} is more than the {MAX_GRID_HEADS} (batch, head) pairs one launch of "
                              "a generated kernel takes: split the batch, or use a native kernel")  # fmt: skip
