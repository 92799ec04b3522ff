"""Launchers of the recurrent inference kernels: one step (optionally in place), and a whole sequence."""

from __future__ import annotations

import torch

from .. import families
from ..load import load_variant
from ..variants import Variant
from .common import cdiv, contiguous, empty, next_pow2, state_args, without_data

_COUNTERS: dict[tuple, torch.Tensor] = {}


def _arrival_counters(n: int, like: torch.Tensor) -> torch.Tensor:
    """Per-head int32 counters that the in-place step kernel and the split step kernel use and reset; allocated once
    per (device, B * NH), so steady-state calls allocate nothing (call once before capturing a CUDA graph). Shared by
    every launch of that B * NH on the device: two such launches must not run at the same time (different streams,
    or two CUDA graphs replayed concurrently). A recorded or traced launch (``like`` without data:
    common.without_data) gets fresh ones: its replay, or the compiled graph, allocates them per call."""
    device = like.device
    if without_data(like):
        return torch.zeros(n, dtype=torch.int32, device=device)
    key = (str(device), n)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _COUNTERS[key]


# the split step's scratch per device: the buffers handed out so far, the last the largest (older ones are kept:
# a CUDA graph may hold their addresses)
_SCRATCH: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}


def _split_scratch(n: int, NK: int, DHHV: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The split step's per-key-tile shares (numerator (n, NK, DHHV), n . q (n, NK)), fp32, overwritten by every
    call: views of one buffer per device, which grows (at least doubling) when a larger batch comes, so memory stays
    within a few times the largest batch's need, and steady-state calls allocate nothing (CUDA-graph safe). A
    recorded or traced launch gets fresh ones."""
    device = like.device
    if without_data(like):
        return (torch.empty(n, NK, DHHV, dtype=torch.float32, device=device),
                torch.empty(n, NK, dtype=torch.float32, device=device))  # fmt: skip
    held = _SCRATCH.setdefault(str(device), [])
    if not held or held[-1][0].numel() < n * NK * DHHV or held[-1][1].numel() < n * NK:
        size = max(n * NK * DHHV, 2 * held[-1][0].numel()) if held else n * NK * DHHV
        sizes = max(n * NK, 2 * held[-1][1].numel()) if held else n * NK
        held.append((torch.empty(size, dtype=torch.float32, device=device),
                     torch.empty(sizes, dtype=torch.float32, device=device)))  # fmt: skip
    part, parts = held[-1]
    return part[: n * NK * DHHV].view(n, NK, DHHV), parts[: n * NK].view(n, NK)


def step_fw(q, k, v, i, f, C, n, m, *, variant: Variant, config: dict | None = None, eps: float = 1e-6,
            normalize: bool = True, out=None):  # fmt: skip
    """One step. q, k (B, NH, DHQK); v (B, NH, DHHV); i, f (B, NH) or (B, NH, 1); C, n, m the state (m may be None
    for the sig cell). ``out`` = (C', n', m') buffers to write the new state to; ``out`` is (C, n, m) itself for an
    in-place update (the buffers must then be contiguous). Returns h (B, NH, DHHV) in q's dtype."""
    B, NH, DHQK = q.shape
    DHHV = v.shape[-1]
    config = families.checked(variant.template, config or families.default_config(variant, DHQK, DHHV))
    BK, BV = config["dhqk_tile"], config["dhhv_tile"]
    inplace = out[0] is C
    q, k, v, i, f = contiguous(q, k, v, i, f)
    h = empty(B, NH, DHHV, dtype=q.dtype, device=q.device)
    m = h if m is None else m  # the sig cell reads no m: any pointer will do, and nothing is allocated
    Cout, nout, mout = out[0], out[1], out[2] if out[2] is not None else m
    NV = cdiv(DHHV, BV)
    module = families.bind(load_variant(variant), variant.template, config)
    if config["k_tiles"] == "programs":
        NK = cdiv(DHQK, BK)
        part, parts = _split_scratch(B * NH, NK, DHHV, q)
        module.recurrent_step_split_kernel[(NK * NV, B * NH)](
            q, k, v, i, f, C, n, m, Cout, nout, mout, h, _arrival_counters(B * NH, q), part, parts,
            scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV, BK=BK, BV=BV, NK=NK,
            NKP=next_pow2(NK), NV=NV, INPLACE=inplace, NORMALIZE=normalize, num_warps=config["num_warps"],
        )  # fmt: skip
        return h
    counters = _arrival_counters(B * NH, q) if inplace else h
    module.recurrent_step_kernel[(NV, B * NH)](
        q, k, v, i, f, C, n, m, Cout, nout, mout, h, counters, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV,
        BK=BK, BV=BV, NV=NV, INPLACE=inplace, NORMALIZE=normalize, num_warps=config["num_warps"],
    )  # fmt: skip
    return h


def sequence_fw(q, k, v, i, f, C0=None, n0=None, m0=None, *, variant: Variant, config: dict | None = None,
                eps: float = 1e-6, normalize: bool = True, return_last_states: bool = False,
                state_dtype: torch.dtype = torch.float32):  # fmt: skip
    """The recurrence over a whole sequence in one launch. Returns h in q's dtype and the last state (C, n in
    ``state_dtype``, m in at least fp32) or None."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = families.checked(variant.template, config or families.default_config(variant, DHQK, DHHV))
    q, k, v, i, f = contiguous(q, k, v, i, f)
    C0, n0, m0, has_state = state_args(C0, n0, m0, q)
    h = empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    if return_last_states:
        m_dtype = torch.promote_types(state_dtype, torch.float32)
        last = (empty(B, NH, DHQK, DHHV, dtype=state_dtype, device=q.device),
                empty(B, NH, DHQK, dtype=state_dtype, device=q.device),
                empty(B, NH, 1, dtype=m_dtype, device=q.device))  # fmt: skip
    else:
        dummy = torch.empty(1, dtype=torch.float32, device=q.device)
        last = (dummy, dummy, dummy)
    grid = (cdiv(DHHV, config["dhhv_tile"]), B * NH)
    families.bind(load_variant(variant), variant.template, config).recurrent_sequence_kernel[grid](
        q, k, v, i, f, C0, n0, m0, h, *last, S, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV,
        BK=next_pow2(DHQK), BV=config["dhhv_tile"], HAS_STATE=has_state, STORE_LAST=return_last_states,
        NORMALIZE=normalize, num_warps=config["num_warps"],
    )  # fmt: skip
    if not return_last_states:
        return h, None
    return h, last
