"""Launcher of the generated parallel backward (templates/parallel_bw.py.j2): exact gradients of the parallel form,
flash-attention-like, without chunk states. Same inputs and outputs as autotune.launch.chunkwise_bw.chunkwise_bw
(the two compute the same gradients; see that module for the derivation)."""

from __future__ import annotations

import torch

from ..load import load_variant
from ..variants import Variant
from .chunkwise_bw import _dot
from .common import cdiv, contiguous, dot_precision, empty, next_pow2, require_pow2

TEMPLATE = "parallel_bw.py.j2"


def default_config(variant: Variant, DHQK: int, DHHV: int) -> dict:
    return {"BT": 64, "BK": min(64, next_pow2(DHQK)), "BV": min(64, next_pow2(DHHV)), "num_warps": 4,
            "num_stages": 1}  # fmt: skip


def check_config(variant: Variant, config: dict) -> None:
    require_pow2(config, "BT", "BK", "BV")


def parallel_bw(q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, *, variant: Variant, config: dict,
                eps: float = 1e-6, normalize: bool = True, borders=None):  # fmt: skip
    """Gradients of the parallel (or chunkwise) forward; arguments as chunkwise_bw (``borders`` is ignored: the
    parallel form has no chunk states). Returns dq, dk, dv, di, df, dC0, dn0, dm0."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    check_config(variant, config)
    cell = variant.params["cell"]
    BT, BK, BV = config["BT"], config["BK"], config["BV"]
    NT, NKT = cdiv(S, BT), cdiv(DHQK, BK)
    dev = q.device
    q, k, v, i, f, h, dh = contiguous(q, k, v, i, f, h, dh)
    has_state, has_last = C0 is not None, dC is not None
    prec = dot_precision(q.dtype)
    module = load_variant(variant)
    f32 = dict(dtype=torch.float32, device=dev)
    dummy = torch.zeros(1, **f32)
    if has_state:
        m0 = m0 if m0 is not None else torch.zeros(B, NH, **f32)
        C0, n0, m0 = contiguous(C0, n0, m0.reshape(B, NH))
    C0a, n0a, m0a = (C0, n0, m0) if has_state else (dummy, dummy, dummy)
    launch = dict(num_warps=config["num_warps"], num_stages=config["num_stages"])
    tiles = dict(scale=DHQK**-0.5, DHQK=DHQK, DHHV=DHHV, BT=BT, BK=BK, BV=BV, DOT_PRECISION=prec, **launch)

    r, ds, G, Fl = (empty(B, NH, S, **f32) for _ in range(4))
    module.bw_prep_kernel[(cdiv(S, 64), B * NH)](
        h, dh, s, mt, r, ds, G, Fl, S, eps, DHHV=DHHV, BT=64, BV=min(64, next_pow2(DHHV)), NORMALIZE=normalize
    )
    if has_last:
        dC, dn = contiguous(dC.float(), dn.float())
        mS = last[2].reshape(B, NH).float().contiguous() if cell == "exp" else dummy
        dmS = dm.reshape(B, NH).float().contiguous() if cell == "exp" else dummy
        T = (dm.reshape(B, NH).double() - _dot(last[0], dC, 2) - _dot(last[1], dn, 1)).float() if cell == "exp" \
            else dummy  # fmt: skip
    else:
        dC = dn = mS = dmS = T = dummy
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
            m_term = (m0.double() - last[2].reshape(B, NH).double()) if cell == "exp" else 0.0
            X = (torch.exp(lf_sum + m_term) * (_dot(C0, dC, 2) + _dot(n0, dn, 1))).float()
    di, df = empty(B, NH, S, **f32), empty(B, NH, S, **f32)
    dm0 = torch.zeros(B, NH, **f32) if has_state and cell == "exp" else dummy
    module.parallel_bw_gates_kernel[(B * NH,)](
        i, f, mt, m0a, R, Fl, rowall, rowbefore, diag, bs, colall, colafter, partq, partk, X, dmS, di, df, dm0, S, NT,
        NKT, BT=BT, NTP=next_pow2(NT, minimum=2), HAS_STATE=has_state, HAS_LAST_GRAD=has_last, **launch,
    )  # fmt: skip
    dm0 = dm0.reshape(B, NH, 1) if has_state and cell == "exp" else None
    return dq, dk, dv, di, df, dC0, dn0, dm0
