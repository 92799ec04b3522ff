"""Launcher of the generated chunkwise backward (templates/chunkwise_bw.py.j2): exact gradients, docs/math.md §6.

How the gradient splits (checked in float64 against native.chunkwise.chunkwise_backward before any kernel was
written; the kernels follow the same steps). Within chunk c of L tokens, with the state (C_c, n_c, m_c) before it
and the gradient (dC_{c+1}, dn_{c+1}) of the state after it:

* The max state enters h only through eps: in unstabilised terms h_t = num*_t / (max(|s*_t|, 1) + eps e^{m_t}).
  Its gradient is G_t = -eps (dh_t . h_t) / den_t per token, and it reaches the gates along the running max
  m_t = max(lf_t + m_{t-1}, i_t): R_t = G_t + [m_{t+1} came from m_t] R_{t+1}, then i_t gets R_t where m_t = i_t and
  lf_t gets it where m_t = lf_t + m_{t-1}; m0 gets R_0 where the first max came from m0. The chain starts from
  dm_S - <C_S, dC_S> - <n_S, dn_S> (the last state's max, with the state it scales held fixed).
* Everything else is the gradient at fixed m: the parallel form within the chunk with the state before it as the
  initial-state column and the state after it as the last row. So
    dC_c  = decay_c dC_{c+1} + scale sum_t D0_t q_t dnum_t^T       (dnum = dh / den; n likewise with ds)
    dq    = (dP * D * scale) k + scale D0 (dnum C_c^T + ds n_c^T)
    dk    = (dP * D * scale)^T q + w (v dC_{c+1}^T + dn_{c+1})
    dv    = P^T dnum + w (k dC_{c+1})
  with dP = dnum v^T + ds, P = (q k^T) * scale * D, w_j the weight of token j in the state after the chunk; and the
  gate gradients are sums over dlogD = dP * P (see _gate_grads in the template).
* dm0 = R-chain share + <C_0, dC_0> + <n_0, dn_0>.

The states before every chunk are either recomputed here by the forward's recurrence kernel ("states":
"recompute") or the ones the two-pass forward kept ("reuse"; then L is the forward's LO).

With ``cu_seqlens`` the kernels walk the documents of a packed sequence (batch size 1) as the two-pass forward does
(autotune/launch/packed.py): every document's chunks in slots of their own, a reverse recurrence and a max-state
chain per (document, head), and initial and last states per document.
"""

from __future__ import annotations

import torch

from .. import families
from ..checks import MLSTMInputError
from ..load import load_variant
from ..variants import Variant, find
from .bw_common import prepare
from .chunkwise import TWOPASS, _launch_states
from .common import cdiv, empty, tile_store
from .packed import no_packing, packing

TEMPLATE = "chunkwise_bw.py.j2"


def check_config(variant: Variant, config: dict) -> dict:
    """``config`` in current knob names, checked against the variant's family spec (autotune.families)."""
    return families.checked(variant.template, config)


def segment_sums(q) -> bool:
    """F_t - F_j of the within-chunk kernels segment by segment for fp32 inputs; for 16-bit ones as differences of
    prefix sums (no [L, L] scans)."""
    return q.dtype.itemsize >= 4


def chunkwise_bw(q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, *, variant: Variant, config: dict,
                 eps: float = 1e-6, normalize: bool = True, borders: tuple | None = None,
                 cu_seqlens: torch.Tensor | None = None):  # fmt: skip
    """Gradients of the chunkwise (or parallel) forward. q, k, v, i, f, C0, n0, m0 as the forward got them; h, s, mt
    what it saved (s, mt from ``saved``); dh the cotangent of h; dC, dn, dm those of the last state (None when it
    was not used) and ``last`` = (C_S, n_S, m_S) the last state itself (needed then; m_S may be None for the sig
    cell). ``borders`` = (Cb, nb, mb) when config["states"] == "reuse" (the two-pass forward's states at chunks of
    config["chunk"] tokens). ``cu_seqlens``: N + 1 checked offsets on q's device of the documents of a packed
    sequence (B = 1; the forward's borders then of the same packing); states and their cotangents per document.
    Returns dq, dk, dv (q's dtype), di, df (fp32), dC0, dn0, dm0 (fp32; None without an initial state)."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = check_config(variant, config)
    cell = variant.params["cell"]
    L = config["chunk"]
    dev = q.device
    if cu_seqlens is not None and B != 1:
        raise MLSTMInputError(f"packed documents (cu_seqlens) need batch size 1, got B = {B}")
    packed = packing(cu_seqlens, S, L) if cu_seqlens is not None else None
    NC = packed.slots if packed else cdiv(S, L)  # chunks per row, or chunk slots per head
    rows = packed.N if packed else B  # per-row tensors: (rows, NH, ...)
    tables = (packed.cu, packed.cs, packed.ss) if packed else no_packing(dev)
    NSEQ = packed.N if packed else 0
    module = families.bind(load_variant(variant), variant.template, config)
    # 1. inputs, and per token: r = 1 / den, ds, G, Fl
    x = prepare(module, cell, q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, eps=eps, normalize=normalize,
                rows=rows)  # fmt: skip
    q, k, v, i, f, h, dh, C0, n0, m0 = x.q, x.k, x.v, x.i, x.f, x.h, x.dh, x.C0, x.n0, x.m0
    has_state, has_last, prec, f32, dummy = x.has_state, x.has_last, x.prec, x.f32, x.dummy
    r, ds, G, Fl = x.r, x.ds, x.G, x.Fl

    form = config["state_buffers"]
    buffers_dtype = torch.float32 if form == "float32" else q.dtype
    planes = (2,) if form == "planes" else ()  # a state tile as its hi and lo planes, one after the other per chunk
    # 2. the states before every chunk (and the max states of their frames)
    if config["states"] == "reuse":
        if borders is None:
            raise MLSTMInputError("states='reuse' needs the forward's border states")
        Cb, nb, mb = borders
        if (
            tuple(Cb.shape) not in ((B, NH, NC, DHQK, DHHV), (B, NH, NC, 2, DHQK, DHHV))
            or tuple(nb.shape) != (B, NH, NC, DHQK)
            or mb.numel() != B * NH * NC
        ):
            raise MLSTMInputError(f"the forward's border states are not of chunks of L={L} (Cb {tuple(Cb.shape)})")
    else:
        Cb = empty(B, NH, NC, *planes, DHQK, DHHV, dtype=buffers_dtype, device=dev)
        nb = empty(B, NH, NC, DHQK, **f32)
        mb = empty(B, NH, NC, **f32)
        state_config = {"chunk_inter": min(L, 64), "chunk_intra": L, "states_dhqk_tile": config["states_dhqk_tile"],
                        "states_dhhv_tile": config["states_dhhv_tile"], "states_warps": config["states_warps"],
                        "num_stages": 2, "states_gates": "pre", "states_weighting": config["states_weighting"],
                        "states_n": config["states_n"], "states_store": config["state_stores"]}  # fmt: skip
        # fp32 states stored as such or rounded to the buffers' dtype, or stored as planes
        states_variant = find(TWOPASS, cell=cell, state="planes" if planes else "float32")
        states = families.bind(load_variant(states_variant), TWOPASS, state_config)
        _launch_states(states, k, v, i, f, C0, n0, m0, has_state, (Cb, nb, mb), (dummy, dummy, dummy), S=S, NC=NC,
                       config=state_config, store_borders=True, prec=prec, packed=packed)  # fmt: skip

    # 3. reverse recurrence: gradient of the state after every chunk, and the max state's chain
    dC, dn, T = x.dC, x.dn, x.T
    dCa = empty(B, NH, NC, *planes, DHQK, DHHV, dtype=buffers_dtype, device=dev)
    c_planes = Cb.dim() == 6  # the forward's planes (reuse) or the recomputed ones
    dna = empty(B, NH, NC, DHQK, **f32)
    R = empty(B, NH, S, **f32) if cell == "exp" else dummy
    dC0 = empty(rows, NH, DHQK, DHHV, **f32) if has_state else dummy
    dn0 = empty(rows, NH, DHQK, **f32) if has_state else dummy
    if has_last and cell == "exp":
        mS = last[2].float().contiguous()  # (rows, NH, 1): the kernel reads one value per row and head
    elif packed:  # the max state at each document's last token
        mS = mt[0][:, packed.cu[1:] - 1].transpose(0, 1).contiguous()
    else:
        mS = mt[:, :, -1].contiguous()
    pre = config["dstate_gates"] == "pre"
    wr, wds, dec = dummy, dummy, dummy
    if pre:  # every chunk's weights in parallel, so the sequential loop below only loads them
        wr, wds, dec = empty(B, NH, NC * L, **f32), empty(B, NH, NC * L, **f32), empty(B, NH, NC, **f32)
        module.bw_dstate_weights_kernel[(NC, B * NH)](i, f, mt, mb, mS, r, ds, wr, wds, dec, *tables, S, NC, NSEQ, NH,
                                                      scale=DHQK**-0.5, L=L, PACKED=packed is not None)  # fmt: skip
    BKS, BVS = config["states_dhqk_tile"], config["states_dhhv_tile"]
    dCa_out, tma = tile_store(dCa, BKS, BVS, "state_stores", config["state_stores"] == "tma")
    module.chunkwise_bw_dstate_kernel[(cdiv(DHQK, BKS), cdiv(DHHV, BVS), rows * NH)](
        q, dh, i, f, mt, mb, mS, r, ds, G, dC, dn, T, dCa_out, dna, R, dC0, dn0, wr, wds, dec, *tables[:2], S, NC, NH,
        scale=DHQK**-0.5, DHQK=DHQK, DHHV=DHHV, L=L, BK=BKS, BV=BVS, HAS_STATE=has_state, HAS_LAST_GRAD=has_last,
        DOT_PRECISION=prec, PRE_WEIGHTS=pre, PACKED=packed is not None, DC_PLANES=bool(planes), DC_TMA=tma,
        DC_FP32=dCa.dtype == torch.float32, num_warps=config["states_warps"],
    )  # fmt: skip

    # 4. within every chunk: dq, dk, dv, di, df
    dq, dk = empty(*q.shape, dtype=q.dtype, device=dev), empty(*k.shape, dtype=k.dtype, device=dev)
    dv = empty(*v.shape, dtype=v.dtype, device=dev)
    di, df = empty(B, NH, S, **f32), empty(B, NH, S, **f32)
    Ya = empty(B, NH, NC, 2, **f32) if cell == "exp" else dummy  # (Y_c, a_c): dm_c = Y_c + a_c dm_{c+1}
    common = dict(scale=DHQK**-0.5, DHQK=DHQK, DHHV=DHHV, L=L, BK=config["dhqk_tile"], BV=config["dhhv_tile"],
                  DOT_PRECISION=prec, SEGMENT_SUMS=segment_sums(q), PACKED=packed is not None,
                  num_warps=config["num_warps"], num_stages=config["num_stages"])  # fmt: skip
    where = (*tables, S, NC, NSEQ, NH)  # the tables of a packed sequence, and the sizes every kernel gets
    reads = dict(common, C_PLANES=c_planes, DC_PLANES=bool(planes))  # and how the kernels that read Cb, dCa do
    if variant.params["kernels"] == "fused":
        module.chunkwise_bw_chunk_kernel[(NC, B * NH)](
            q, k, v, i, f, dh, mt, mb, mS, r, ds, R, Fl, Ya, Cb, nb, dCa, dna, dq, dk, dv, di, df, *where, **reads
        )
    else:  # split: dq/dk programs per DHQK tile, dv programs per DHHV tile, then the gate gradients per chunk
        NKT = cdiv(DHQK, config["dhqk_tile"])
        part = empty(NKT, 5, B, NH, S, **f32)  # per key tile: q.dq_inter, k.dk_trans, E's dlf, col, row
        partX = empty(NKT, B, NH, NC, **f32)
        module.chunkwise_bw_dqk_kernel[(NKT, NC, B * NH)](
            q, k, v, i, f, dh, mt, mb, mS, r, ds, Cb, nb, dCa, dna, dq, dk, part, partX, *where, **reads
        )
        BVD = config["dv_dhhv_tile"]  # the dv kernel's own value tile
        module.chunkwise_bw_dv_kernel[(cdiv(DHHV, BVD), NC, B * NH)](
            q, k, i, f, dh, mt, mb, mS, r, ds, dCa, dv, *where, **dict(common, BV=BVD, DC_PLANES=bool(planes))
        )
        module.chunkwise_bw_gates_kernel[(NC, B * NH)](
            i, f, mt, mb, mS, r, ds, R, Fl, Ya, part, partX, di, df, *where, NKT, **common
        )

    dm0 = None
    if has_state and cell == "exp":  # dm_0 = Y_0 + a_0 (Y_1 + a_1 (... (Y_{NC-1} + a_{NC-1} dm_S))), in float64
        dm0 = empty(rows, NH, 1, **f32)
        dm_S = dm.reshape(rows, NH).float().contiguous() if has_last else dummy
        module.bw_dm0_kernel[(rows * NH,)](Ya, dm_S, dm0, *tables[:2], NC, NH, HAS_LAST_GRAD=has_last,
                                           PACKED=packed is not None)  # fmt: skip
    return dq, dk, dv, di, df, (dC0 if has_state else None), (dn0 if has_state else None), dm0  # dm0: exp cell only
