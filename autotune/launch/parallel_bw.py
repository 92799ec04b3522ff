"""Launcher of the generated parallel backward (templates/parallel_bw.py.j2): exact gradients of the parallel form,
flash-attention-like, without chunk states. Same inputs and outputs as autotune.launch.chunkwise_bw.chunkwise_bw
(the two compute the same gradients; see that module for the derivation)."""

from __future__ import annotations

import torch

from .. import families
from ..load import load_variant
from ..variants import Variant
from .bw_common import dot64, prepare
from .common import cdiv, empty, next_pow2

TEMPLATE = "parallel_bw.py.j2"


def check_config(variant: Variant, config: dict) -> dict:
    """``config`` in current knob names, checked against the variant's family spec (autotune.families)."""
    return families.checked(variant.template, config)


def parallel_bw(q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, *, variant: Variant, config: dict,
                eps: float = 1e-6, normalize: bool = True, borders=None):  # fmt: skip
    """Gradients of the parallel (or chunkwise) forward; arguments as chunkwise_bw (``borders`` is ignored: the
    parallel form has no chunk states). Returns dq, dk, dv, di, df, dC0, dn0, dm0."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = check_config(variant, config)
    cell = variant.params["cell"]
    BT, BK, BV = config["token_tile"], config["dhqk_tile"], config["dhhv_tile"]
    NT, NKT = cdiv(S, BT), cdiv(DHQK, BK)
    dev = q.device
    module = families.bind(load_variant(variant), variant.template, config)
    x = prepare(module, cell, q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, eps=eps, normalize=normalize)
    q, k, v, i, f, h, dh, C0a, n0a, m0a = x.q, x.k, x.v, x.i, x.f, x.h, x.dh, x.C0, x.n0, x.m0
    has_state, has_last, f32, dummy, dC, dn, T = x.has_state, x.has_last, x.f32, x.dummy, x.dC, x.dn, x.T
    r, ds, G, Fl = x.r, x.ds, x.G, x.Fl
    launch = dict(num_warps=config["num_warps"], num_stages=config["num_stages"])
    tiles = dict(scale=DHQK**-0.5, DHQK=DHQK, DHHV=DHHV, BT=BT, BK=BK, BV=BV, DOT_PRECISION=x.prec, **launch)
    mS = last[2].float().contiguous() if has_last and cell == "exp" else dummy
    dmS = dm.reshape(B, NH).float().contiguous() if has_last and cell == "exp" else dummy
    R = empty(B, NH, S, **f32) if cell == "exp" else dummy
    if cell == "exp":
        module.parallel_bw_chain_kernel[(B * NH,)](i, f, mt, m0a, G, T, R, S, NT, BT=BT, HAS_STATE=has_state,
                                                   HAS_LAST_GRAD=has_last)  # fmt: skip

    dq, dk, dv = (empty(*t.shape, dtype=t.dtype, device=dev) for t in (q, k, v))
    rowall, rowbefore, diag, colall, colafter = (empty(B, NH, S, **f32) for _ in range(5))
    bs = empty(B, NH, NT, NT, **f32)
    partq, partk = empty(NKT, B, NH, S, **f32), empty(NKT, B, NH, S, **f32)
    module.parallel_bw_dq_kernel[(NKT, NT, B * NH)](
        q, k, v, i, f, dh, mt, m0a, r, ds, C0a, n0a, dq, rowall, rowbefore, diag, bs, partq, S, NT,
        HAS_STATE=has_state, **tiles,
    )  # fmt: skip
    module.parallel_bw_dk_kernel[(NKT, NT, B * NH)](
        q, k, v, i, f, dh, mt, r, ds, dC, dn, mS, dk, colall, colafter, partk, S, NT, HAS_LAST_GRAD=has_last, **tiles
    )
    module.parallel_bw_dv_kernel[(cdiv(DHHV, BV), NT, B * NH)](
        q, k, i, f, dh, mt, r, dC, mS, dv, S, NT, HAS_LAST_GRAD=has_last, **tiles
    )
    dC0 = dn0 = None
    X = torch.zeros(B, NH, **f32)
    if has_state:
        dC0, dn0 = empty(B, NH, DHQK, DHHV, **f32), empty(B, NH, DHQK, **f32)
        module.parallel_bw_dstate_kernel[(NKT, cdiv(DHHV, BV), B * NH)](
            q, i, f, dh, mt, m0a, r, ds, dC, dn, mS, dC0, dn0, S, NT, HAS_LAST_GRAD=has_last, **tiles
        )
        if has_last:  # the last state's row against the initial state's column
            lf_sum = torch.nn.functional.logsigmoid(f.double()).sum(-1)
            m_term = (m0a.double() - last[2].reshape(B, NH).double()) if cell == "exp" else 0.0
            X = (torch.exp(lf_sum + m_term) * (dot64(C0a, dC, 2) + dot64(n0a, dn, 1))).float()
    di, df = empty(B, NH, S, **f32), empty(B, NH, S, **f32)
    dm0 = torch.zeros(B, NH, **f32) if has_state and cell == "exp" else dummy
    module.parallel_bw_gates_kernel[(B * NH,)](
        i, f, mt, m0a, R, Fl, rowall, rowbefore, diag, bs, colall, colafter, partq, partk, X, dmS, di, df, dm0, S, NT,
        NKT, BT=BT, NTP=next_pow2(NT, minimum=2), HAS_STATE=has_state, HAS_LAST_GRAD=has_last, **launch,
    )  # fmt: skip
    dm0 = dm0.reshape(B, NH, 1) if has_state and cell == "exp" else None
    return dq, dk, dv, di, df, dC0, dn0, dm0
