"""Launchers of the chunkwise forward variants: the fused single pass, and the two passes (states, then outputs).

Inputs are assumed validated (autotune.checks); the launchers check launch configurations, make inputs
contiguous, allocate outputs and launch.
"""

from __future__ import annotations

import torch

from ..checks import MLSTMInputError
from ..load import load_variant
from ..variants import Variant, find
from .common import (
    cdiv,
    contiguous,
    dot_precision,
    empty,
    last_state_buffers,
    next_pow2,
    require_choice,
    require_pow2,
    state_args,
    stats_buffers,
)

FUSED = "chunkwise_fused_fw.py.j2"
TWOPASS = "chunkwise_twopass_fw.py.j2"
# the two-pass output kernels: one program per value tile, or one per chunk looping over the value tiles, or that
# over chunks of 2 LO tokens taken as two halves of LO (states stored once per 2 LO tokens, at the [L, L] work of
# chunks of LO plus one block per pair)
OUT_VALUES = ("tiles", "loop", "halves")
# the states kernel's gates: computed in its sequential loop, or for all sub-chunks first by a parallel kernel
STATES_GATES = ("inline", "pre")
# the states kernel's product: k weighted by the tokens' weights and transposed in registers, or k^T loaded as such
# and v weighted ("v"), or k^T loaded as such and weighted there ("kT"); for "v" and "kT" only the first value tile's
# programs reduce n
STATES_WEIGHTING = ("k", "v", "kT")
# how the states kernel forms n: a reduction across threads of the weighted k (by the first value tile's programs,
# except for "k" with gates in the loop), or the weighted k^T times a column of ones on the tensor cores in every
# program ("dot": with "states_weighting" "k" or "kT"; 12-20% off the states kernel on the H200, NOTES.md), each
# term rounded to 16 bits, or with the rounding remainder as a second product ("dot2": not yet measured on a GPU,
# so not in the search space)
STATES_N = ("sum", "dot", "dot2")


def check_states_n(config: dict) -> None:
    """n on the tensor cores needs the weights on k: with "v" it faulted on the H200 (NOTES.md, eighth session)."""
    require_choice(config, "states_n", STATES_N, "sum")
    if config.get("states_n", "sum") != "sum" and config.get("states_weighting", "k") == "v":
        raise MLSTMInputError(f'"states_n": "{config["states_n"]}" needs "states_weighting" "k" or "kT" (the weights '
                              'on k), not "v"')


def default_config(variant: Variant, DHQK: int, DHHV: int) -> dict:
    """The configuration a variant runs with when the tuning database has nothing better."""
    BK, BVmax = next_pow2(DHQK), next_pow2(DHHV)
    if variant.template == FUSED:
        # the whole of DHQK x BV of C lives in registers: narrower value tiles for wider keys
        BV = 64 if BK <= 128 else (32 if BK <= 256 else 16)
        return {"L": 64 if BK <= 256 else 32, "BV": min(BV, BVmax), "num_warps": 4, "num_stages": 1}
    # the best two-pass point of sweeps on an H200 (tuning_db/reports/NOTES.md): wide value tiles, 4 warps, software
    # pipelining (2 stages, not the measured 3: 3 would need ~210 KB of shared memory for fp32 inputs), one program
    # per chunk for the outputs, so q k^T and the gate matrix are formed once per chunk, and a states kernel whose
    # sequential loop keeps only loads, the products and the max-state chain (gates first, k^T loaded as such and
    # weighted there, n on the tensor cores: 1.18 -> 1.04 ms at the 7B layout, 0.80 -> 0.68 at head 128)
    return {"LI": 64, "LO": 64, "BKS": min(64, BK), "BVS": min(128, BVmax), "BKO": min(64, BK),
            "BVO": min(128, BVmax), "num_warps_states": 4, "num_warps_out": 4, "num_stages": 2,
            "out_values": "loop", "states_gates": "pre", "states_weighting": "kT", "states_n": "dot"}  # fmt: skip


def check_config(variant: Variant, config: dict) -> None:
    if variant.template == FUSED:
        require_pow2(config, "L", "BV")
    else:
        require_pow2(config, "LI", "LO", "BKS", "BVS", "BKO", "BVO")
        require_choice(config, "out_values", OUT_VALUES, "tiles")
        require_choice(config, "states_gates", STATES_GATES, "inline")
        require_choice(config, "states_weighting", STATES_WEIGHTING, "k")
        check_states_n(config)
        if config["LO"] % config["LI"]:
            raise MLSTMInputError(f"LO ({config['LO']}) must be a multiple of LI ({config['LI']})")


def state_stride(config: dict) -> int:
    """How many tokens apart a two-pass ``config`` stores its states: LO, or 2 LO for the halves output kernel."""
    return config["LO"] * (2 if config.get("out_values") == "halves" else 1)


def states_every(config: dict, L: int) -> dict:
    """``config`` for a forward that must store its states every ``L`` tokens, for a training step whose backward
    reuses them at its own chunks of L: a forward entry tuned alone with another stride would otherwise make the
    backward recompute them, which costs more than the forward's own gain (NOTES.md).
    - The halves kernel at LO = L stays as it is: the states kernel stores one state per half, the kernel reads
      every other.
    - A backward taking states every 2 LO (its "states_every": 2 at L = LO) gets the halves kernel at this LO; at 8
      output warps with n reduced in fp32, the pair the search space allows (autotune.space rules out halves at 8
      warps with n on the tensor cores in 16 bits: NOTES.md, eighth session).
    - Anything else runs at LO = L, the halves kernel then as the plain per-chunk one."""
    out_values = config.get("out_values", "tiles")
    if L == state_stride(config) or (out_values == "halves" and L == config["LO"]):
        return config
    if L == 2 * config["LO"]:
        halves = dict(config, out_values="halves")
        if halves.get("num_warps_out", 4) >= 8 and halves.get("states_n", "sum") != "sum":
            halves["states_n"] = "sum"
        return halves
    return dict(config, LO=L, LI=min(config["LI"], L), out_values="loop" if out_values == "halves" else out_values)


def _launch_states(module, k, v, i, f, C0, n0, m0, has_state, buffers, last, *, S, NC, config, store_borders, prec):
    B, NH, _, DHQK = k.shape
    DHHV = v.shape[-1]
    LI, LO = config["LI"], config["LO"]
    pre = config.get("states_gates", "inline") == "pre"
    if pre:  # every sub-chunk's own weights first, in parallel: (B, NH, NC * LO) and (B, NH, NCI, 2)
        NCI = NC * (LO // LI)
        w = empty(B, NH, NCI * LI, dtype=torch.float32, device=k.device)
        gw = empty(B, NH, NCI, 2, dtype=torch.float32, device=k.device)
        module.chunk_gate_weights_kernel[(NCI, B * NH)](i, f, w, gw, S, NCI, LI=LI, num_warps=2)
    else:
        w = gw = buffers[2]  # not read
    grid = (cdiv(DHQK, config["BKS"]), cdiv(DHHV, config["BVS"]), B * NH)
    module.chunkwise_states_kernel[grid](
        k, v, i, f, C0, n0, m0, *buffers, *last, w, gw, S, NC, DHQK=DHQK, DHHV=DHHV, LI=LI, LO=LO,
        BK=config["BKS"], BV=config["BVS"], HAS_STATE=has_state, STORE_LAST=last[0].numel() > 1,
        STORE_BORDERS=store_borders, DOT_PRECISION=prec, PRE_GATES=pre,
        WEIGHT_V=config.get("states_weighting", "k") == "v", WEIGHT_KT=config.get("states_weighting", "k") == "kT",
        N_DOT=config.get("states_n", "sum") != "sum", N_SPLIT=config.get("states_n", "sum") == "dot2",
        num_warps=config["num_warps_states"],
        num_stages=config["num_stages"],
    )  # fmt: skip


def last_state(k, v, i, f, C0=None, n0=None, m0=None, *, cell: str, config: dict | None = None):
    """The state after the whole sequence, from the recurrence kernel alone (no outputs): fp32 (C, n, m). Without a
    ``config``, the default's with n reduced in fp32 ("states_n": "sum"): a state handed on to later calls keeps
    n at fp32 precision rather than the 16-bit rounding of n on the tensor cores."""
    variant = find(TWOPASS, cell=cell, state="float32")
    B, NH, S, DHQK = k.shape
    DHHV = v.shape[-1]
    config = dict(config or dict(default_config(variant, DHQK, DHHV), states_n="sum"))
    config["LO"] = config["LI"]
    check_config(variant, config)
    k, v, i, f = contiguous(k, v, i, f)
    C0, n0, m0, has_state = state_args(C0, n0, m0, k)
    last = last_state_buffers(B, NH, DHQK, DHHV, k.device, True)
    dummy = torch.empty(1, dtype=torch.float32, device=k.device)
    module, no_borders = load_variant(variant), (dummy, dummy, dummy)
    _launch_states(module, k, v, i, f, C0, n0, m0, has_state, no_borders, last, S=S, NC=cdiv(S, config["LI"]),
                   config=config, store_borders=False, prec=dot_precision(k.dtype))  # fmt: skip
    return last[0], last[1], last[2].reshape(B, NH, 1)


def chunkwise_fw(q, k, v, i, f, C0=None, n0=None, m0=None, *, variant: Variant, config: dict | None = None,
                 eps: float = 1e-6, normalize: bool = True, return_last_states: bool = False,
                 saved: dict | None = None):  # fmt: skip
    """q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); optional C0, n0, m0. Returns h (B, NH, S, DHHV) in
    q's dtype and the fp32 last state (C, n, m), or None unless return_last_states. With a dict ``saved``, the
    launcher also keeps what the backward needs in it: the per-token statistics "s" and "mt", and the states before
    every chunk ("Cb", "nb", "mb", of chunks of "L" tokens): always for the two-pass structure (L = its
    state_stride), and for the fused one when ``saved["borders_at"]`` equals its chunk size L (a backward that will
    reuse them)."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = dict(config or default_config(variant, DHQK, DHHV))
    check_config(variant, config)
    q, k, v, i, f = contiguous(q, k, v, i, f)
    C0, n0, m0, has_state = state_args(C0, n0, m0, q)
    h = empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    last = last_state_buffers(B, NH, DHQK, DHHV, q.device, return_last_states)
    module = load_variant(variant)
    prec = dot_precision(q.dtype)
    stats = stats_buffers(B, NH, S, q.device, saved)
    if variant.template == FUSED:
        # the fused pass keeps no states unless a backward asked to reuse them at this chunk size
        keep = saved is not None and saved.get("borders_at") == config["L"]
        NC = cdiv(S, config["L"]) if keep else 1
        borders = (
            empty(B, NH, NC, DHQK, DHHV, dtype=torch.float32, device=q.device) if keep else stats[0],
            empty(B, NH, NC, DHQK, dtype=torch.float32, device=q.device) if keep else stats[0],
            empty(B, NH, NC, dtype=torch.float32, device=q.device) if keep else stats[0],
        )
        grid = (cdiv(DHHV, config["BV"]), B * NH)
        module.chunkwise_fused_fw_kernel[grid](
            q, k, v, i, f, C0, n0, m0, h, *last, *stats, *borders, S, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV,
            L=config["L"], BK=next_pow2(DHQK), BV=config["BV"], HAS_STATE=has_state, STORE_LAST=return_last_states,
            NORMALIZE=normalize, STORE_STATS=saved is not None, STORE_BORDERS=keep, DOT_PRECISION=prec,
            SEGMENT_SUMS=q.dtype == torch.float32,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )  # fmt: skip
        if keep:
            saved.update(Cb=borders[0], nb=borders[1], mb=borders[2], L=config["L"])
    elif variant.template == TWOPASS:
        stored = saved.get("borders_at") if saved is not None else None  # a backward will reuse states so far apart
        if stored is not None:
            config = states_every(config, stored)
        stride = state_stride(config)  # the output kernel's chunk (its LO)
        stored = stored or stride  # the stored states' stride
        NC = cdiv(S, stored)
        state_dtype = torch.float32 if variant.params["state"] == "float32" else q.dtype
        buffers = (
            empty(B, NH, NC, DHQK, DHHV, dtype=state_dtype, device=q.device),
            empty(B, NH, NC, DHQK, dtype=torch.float32, device=q.device),
            empty(B, NH, NC, dtype=torch.float32, device=q.device),
        )
        _launch_states(module, k, v, i, f, C0, n0, m0, has_state, buffers, last, S=S, NC=NC,
                       config=dict(config, LO=stored), store_borders=True, prec=prec)  # fmt: skip
        # entries tuned before "out_values" existed ran the per-value-tile kernel
        out_values, extra = config.get("out_values", "tiles"), {}
        if out_values == "halves":  # chunks of 2 LO; with states stored per half (a training step), every other one
            kernel, grid = module.chunkwise_output_halves_kernel, (cdiv(S, stride), B * NH)
            extra["STATE_EVERY"] = stride // stored
        elif out_values == "loop":
            kernel, grid = module.chunkwise_output_loop_kernel, (NC, B * NH)
        else:
            kernel, grid = module.chunkwise_output_kernel, (cdiv(DHHV, config["BVO"]), NC, B * NH)
        kernel[grid](
            q, k, v, i, f, *buffers, h, *stats, S, NC, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV,
            LO=stride, BK=config["BKO"], BV=config["BVO"], NORMALIZE=normalize, STORE_STATS=saved is not None,
            DOT_PRECISION=prec, SEGMENT_SUMS=q.dtype == torch.float32,
            num_warps=config["num_warps_out"], num_stages=config["num_stages"], **extra,
        )  # fmt: skip
        if saved is not None:
            saved.update(Cb=buffers[0], nb=buffers[1], mb=buffers[2], L=stored)
    else:
        raise MLSTMInputError(f"{variant.name} is not a chunkwise forward variant")
    if not return_last_states:
        return h, None
    return h, (last[0], last[1], last[2].reshape(B, NH, 1))
