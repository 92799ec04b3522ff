"""Launchers of the chunkwise forward variants: the fused single pass, and the two passes (states, then outputs).

Inputs are assumed validated (autotune.checks); the launchers check launch configurations, make inputs
contiguous, allocate outputs and launch.
"""

from __future__ import annotations

import torch

from .. import families
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
    state_args,
    stats_buffers,
    tile_store,
)
from .packed import Packing, no_packing, packing

FUSED = "chunkwise_fused_fw.py.j2"
TWOPASS = "chunkwise_twopass_fw.py.j2"


def check_config(variant: Variant, config: dict) -> dict:
    """``config`` in current knob names, checked against the variant's family spec (autotune.families)."""
    return families.checked(variant.template, config)


def states_every(variant: Variant, config: dict, L: int, DHQK: int, DHHV: int, dtype_bytes: int) -> dict:
    """A two-pass ``config`` that stores its states every ``L`` tokens, for a training step whose backward reuses
    them at its own chunks of L: a forward entry tuned alone with another stride would otherwise make the backward
    recompute them, which costs more than the forward's own gain (docs/performance.md). Where that point breaks a
    rule of the space (output chunks of 128 in 16 bits: registers at 4 warps, accuracy at 8), ``config`` as it is:
    the backward then recomputes its states."""
    if L == config["chunk_intra"]:
        return config
    out = dict(config, chunk_intra=L, chunk_inter=min(config["chunk_inter"], L))
    return out if families.invalid(variant, out, DHQK, DHHV, dtype_bytes, families.H100_LIMITS) is None else config


def _launch_states(module, k, v, i, f, C0, n0, m0, has_state, buffers, last, *, S, NC, config, store_borders, prec,
                   packed: Packing | None = None):  # fmt: skip
    """The states kernel over NC chunks of every row (with ``packed``: over each document's chunks, NC slots per
    head), after the sub-chunks' own weights where the configuration precomputes them."""
    B, NH, _, DHQK = k.shape
    DHHV = v.shape[-1]
    LI, LO = config["chunk_inter"], config["chunk_intra"]
    tables = (packed.cu, packed.cs, packed.ss) if packed else no_packing(k.device)
    rows = packed.N * NH if packed else B * NH  # the sequential kernel's rows: documents x heads, or the batch's
    pre = config["states_gates"] == "pre"
    if pre:  # every sub-chunk's own weights first, in parallel: (B, NH, NC * LO) and (B, NH, NCI, 2)
        NCI = NC * (LO // LI)
        w = empty(B, NH, NCI * LI, dtype=torch.float32, device=k.device)
        gw = empty(B, NH, NCI, 2, dtype=torch.float32, device=k.device)
        NSEQ = packed.N if packed else 0
        module.chunk_gate_weights_kernel[(NCI, B * NH)](i, f, w, gw, *tables, S, NCI, NSEQ, LI=LI, LO=LO,
                                                        PACKED=packed is not None, num_warps=2)  # fmt: skip
    else:
        w = gw = buffers[2]  # not read
    BK, BV = config["states_dhqk_tile"], config["states_dhhv_tile"]
    Cb, tma = tile_store(buffers[0], BK, BV, "states_store", store_borders and config["states_store"] == "tma")
    module.chunkwise_states_kernel[(cdiv(DHQK, BK), cdiv(DHHV, BV), rows)](
        k, v, i, f, C0, n0, m0, Cb, *buffers[1:], *last, w, gw, *tables[:2], S, NC, NH, DHQK=DHQK, DHHV=DHHV, LI=LI,
        LO=LO, BK=BK, BV=BV, HAS_STATE=has_state, STORE_LAST=last[0].numel() > 1, STORE_BORDERS=store_borders,
        DOT_PRECISION=prec, PRE_GATES=pre, WEIGHT_V=config["states_weighting"] == "v",
        WEIGHT_KT=config["states_weighting"] == "kT", N_DOT=config["states_n"] == "dot", PACKED=packed is not None,
        STORE_TMA=tma, num_warps=config["states_warps"], num_stages=config["num_stages"],
    )  # fmt: skip


def last_state(k, v, i, f, C0=None, n0=None, m0=None, *, cell: str, config: dict | None = None):
    """The state after the whole sequence, from the recurrence kernel alone (no outputs): fp32 (C, n, m). Without a
    ``config``, the default's with n reduced in fp32 ("states_n": "sum"): a state handed on to later calls keeps
    n at fp32 precision rather than the 16-bit rounding of n on the tensor cores."""
    variant = find(TWOPASS, cell=cell, state="float32")
    B, NH, S, DHQK = k.shape
    DHHV = v.shape[-1]
    config = check_config(variant, config or dict(families.default_config(variant, DHQK, DHHV), states_n="sum"))
    config["chunk_intra"] = config["chunk_inter"]
    k, v, i, f = contiguous(k, v, i, f)
    C0, n0, m0, has_state = state_args(C0, n0, m0, k)
    last = last_state_buffers(B, NH, DHQK, DHHV, k.device, True)
    dummy = torch.empty(1, dtype=torch.float32, device=k.device)
    module, no_borders = families.bind(load_variant(variant), variant.template, config), (dummy, dummy, dummy)
    _launch_states(module, k, v, i, f, C0, n0, m0, has_state, no_borders, last, S=S, NC=cdiv(S, config["chunk_inter"]),
                   config=config, store_borders=False, prec=dot_precision(k.dtype))  # fmt: skip
    return last


# how a two-pass forward that returns its last state forms n, whatever its configuration says: summed in fp32. On
# the tensor cores ("dot") every weighted key is rounded to the inputs' dtype first, which is within the outputs'
# error but left the last n of a bf16 prefill at 6.6e-4 relative error against 8e-8 for the sum (H100, the gate's
# adversarial draw, tests/gpu/test_gpu_packed.py); a decoding loop carries that n on. The outputs then differ in
# their last bits from the same call without last states.
LAST_STATE_N = "sum"

# what a training step's forward changes in the two-pass default: fp32 states with the weights on v, n summed in fp32
TRAINING_PRECISION = {"states_weighting": "v", "states_n": "sum"}
# how a training step's forward stores its fp32 states: as such ("float32"), or as their two 16-bit parts ("planes",
# the products' operands as they are split in registers otherwise; bench/tools/planes_step.py times both)
TRAINING_STATES = "float32"


def training_forward(cell: str, DHQK: int, DHHV: int, L: int) -> tuple[Variant, dict]:
    """The forward of a chunkwise training step whose backward works in chunks of L tokens: the two-pass structure
    at its defaults, output chunks of L (its states stored at the stride a backward reuses), fp32 states, the weights
    on v and n summed in fp32. The backward reads this forward's h, and at tokens where h's normaliser is a small
    difference of large terms its error grows by that factor: 16-bit states cost q C an error of |q| |C| instead of
    the parallel form's |q^T k_j| |v_j|, and weighted keys rounded to 16 bits (in C, or in n on the tensor cores) the
    same; that gave gradients 1.5-5x the trusted kernel's error at 4,080 tokens (docs/hazards.md). The gate's
    training-step candidates (autotune.measure) run behind this forward too, so it is the one that was checked.
    The states are stored in the form TRAINING_STATES: fp32, or its two 16-bit parts ("planes"), which give the same
    h bit for bit and which a backward reading them turns into the same dq, dk, dv."""
    variant = find(TWOPASS, cell=cell, state=TRAINING_STATES)
    config = dict(families.default_config(variant, DHQK, DHHV), chunk_inter=min(64, L), chunk_intra=L)
    return variant, dict(config, **TRAINING_PRECISION)


def segment_sums(q: torch.Tensor, saved: dict | None) -> bool:
    """Whether an output kernel forms F_t - F_j of its decay matrix as [L, L] segment sums (SEGMENT_SUMS) rather
    than as a difference of chunk-local prefix sums: for fp32 inputs, and whenever a backward follows (``saved``).
    The difference rounds to an ulp of |F| (up to a chunk's worth of log forget gates); s_t, a sum of terms of both
    signs, carries that error times its condition, and a backward reads h_t and s_t together: the difference gave
    dq of the 7B layout's training step 1.7x the trusted kernel's error at 4,080 tokens of the gate's adversarial
    draw on an H100, segment sums 1.00x (docs/hazards.md). A forward alone keeps the cheaper difference: the gate
    judges its h within the trusted kernel's error."""
    return q.dtype == torch.float32 or saved is not None


def chunkwise_fw(q, k, v, i, f, C0=None, n0=None, m0=None, *, variant: Variant, config: dict | None = None,
                 eps: float = 1e-6, normalize: bool = True, return_last_states: bool = False,
                 saved: dict | None = None, cu_seqlens: torch.Tensor | None = None):  # fmt: skip
    """q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); optional C0, n0, m0. Returns h (B, NH, S, DHHV) in
    q's dtype and the fp32 last state (C, n, m), or None unless return_last_states. With a dict ``saved``, the
    launcher also keeps what the backward needs in it: the per-token statistics "s" and "mt", and the states before
    every chunk ("Cb", "nb", "mb", of chunks of "L" tokens): always for the two-pass structure (L = its
    chunk_intra, or ``saved["borders_at"]`` when given), and for the fused one when ``saved["borders_at"]`` equals its
    chunk (a backward that will reuse them). A training step runs the forward of ``training_forward``.

    With ``cu_seqlens`` (N + 1 checked offsets on q's device, autotune/torch/packed.py), q, k, v, i, f hold N
    documents packed into one sequence (B = 1) and the two-pass kernels walk the documents themselves: initial and
    last states are per document, (N, NH, ...); the states kept in ``saved`` take the chunk slots of
    autotune/launch/packed.py, as launch.chunkwise_bw reads them with the same offsets."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = check_config(variant, config or families.default_config(variant, DHQK, DHHV))
    if cu_seqlens is not None and (variant.template != TWOPASS or B != 1):
        raise MLSTMInputError(f"packed documents (cu_seqlens) run the two-pass forward of batch size 1; got "
                              f"{variant.name}, B = {B}")  # fmt: skip
    q, k, v, i, f = contiguous(q, k, v, i, f)
    C0, n0, m0, has_state = state_args(C0, n0, m0, q)
    h = empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    rows = cu_seqlens.numel() - 1 if cu_seqlens is not None else B  # a last state per document, or per batch row
    last = last_state_buffers(rows, NH, DHQK, DHHV, q.device, return_last_states)
    module = families.bind(load_variant(variant), variant.template, config)
    prec = dot_precision(q.dtype)
    stats = stats_buffers(B, NH, S, q.device, saved)
    if variant.template == FUSED:
        # the fused pass keeps no states unless a backward asked to reuse them at this chunk size
        L = config["chunk"]
        keep = saved is not None and saved.get("borders_at") == L
        NC = cdiv(S, L) if keep else 1
        borders = (
            empty(B, NH, NC, DHQK, DHHV, dtype=torch.float32, device=q.device) if keep else stats[0],
            empty(B, NH, NC, DHQK, dtype=torch.float32, device=q.device) if keep else stats[0],
            empty(B, NH, NC, dtype=torch.float32, device=q.device) if keep else stats[0],
        )
        grid = (cdiv(DHHV, config["dhhv_tile"]), B * NH)
        module.chunkwise_fused_fw_kernel[grid](
            q, k, v, i, f, C0, n0, m0, h, *last, *stats, *borders, S, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV,
            L=L, BK=next_pow2(DHQK), BV=config["dhhv_tile"], HAS_STATE=has_state, STORE_LAST=return_last_states,
            NORMALIZE=normalize, STORE_STATS=saved is not None, STORE_BORDERS=keep, DOT_PRECISION=prec,
            SEGMENT_SUMS=segment_sums(q, saved),
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )  # fmt: skip
        if keep:
            saved.update(Cb=borders[0], nb=borders[1], mb=borders[2], L=L)
    elif variant.template == TWOPASS:
        if saved is not None and saved.get("borders_at"):  # a backward will reuse states so far apart
            config = states_every(variant, config, saved["borders_at"], DHQK, DHHV, q.element_size())
        if return_last_states and config["states_n"] == "dot":  # a state handed on keeps n at fp32 precision
            config = dict(config, states_n=LAST_STATE_N)
        LO = config["chunk_intra"]  # the output kernel's chunk, the stride of the stored states
        packed = packing(cu_seqlens, S, LO) if cu_seqlens is not None else None
        NC = packed.slots if packed else cdiv(S, LO)  # chunks per row, or chunk slots per head
        state = variant.params["state"]
        planes = (2,) if state == "planes" else ()  # hi and lo, one after the other per chunk
        state_dtype = torch.float32 if state == "float32" else q.dtype
        buffers = (
            empty(B, NH, NC, *planes, DHQK, DHHV, dtype=state_dtype, device=q.device),
            empty(B, NH, NC, DHQK, dtype=torch.float32, device=q.device),
            empty(B, NH, NC, dtype=torch.float32, device=q.device),
        )
        _launch_states(module, k, v, i, f, C0, n0, m0, has_state, buffers, last, S=S, NC=NC, config=config,
                       store_borders=True, prec=prec, packed=packed)  # fmt: skip
        BV = config["out_dhhv_tile"]
        if config["out_values"] == "loop":
            kernel, grid = module.chunkwise_output_loop_kernel, (NC, B * NH)
        else:
            kernel, grid = module.chunkwise_output_kernel, (cdiv(DHHV, BV), NC, B * NH)
        tables = (packed.cu, packed.cs, packed.ss) if packed else no_packing(q.device)
        kernel[grid](
            q, k, v, i, f, *buffers, h, *stats, *tables, S, NC, packed.N if packed else 0, scale=DHQK**-0.5, eps=eps,
            DHQK=DHQK, DHHV=DHHV, LO=LO, BK=config["out_dhqk_tile"], BV=BV, NORMALIZE=normalize,
            STORE_STATS=saved is not None, DOT_PRECISION=prec, SEGMENT_SUMS=segment_sums(q, saved),
            PACKED=packed is not None, num_warps=config["out_warps"], num_stages=config["num_stages"],
        )  # fmt: skip
        if saved is not None:
            saved.update(Cb=buffers[0], nb=buffers[1], mb=buffers[2], L=LO)
    else:
        raise MLSTMInputError(f"{variant.name} is not a chunkwise forward variant")
    if not return_last_states:
        return h, None
    return h, last
