"""The generated backward's algorithm (autotune/launch/chunkwise_bw.py) in plain PyTorch, for any dtype.

Two uses in the tests: in float64 it must equal the native exact backward (so the decomposition itself is right);
in float32 its error against the oracle is a rounding baseline for the kernels, which evaluate the same formulas.
dm0 is routed chunk by chunk as in the native backward (dm_c = Y_c + a_c dm_{c+1}, see _gate_grads in the
template); ``dm0_by_dots=True`` gives the equal value <C0, dC0> + <n0, dn0> + (max-state chain) instead, whose two
dot products nearly cancel where the state dominates the outputs (the normalised output is invariant to scaling
the state): 5e-4 relative error in fp32 on such an input, against 6e-6 routed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autotune.torch.native.chunkwise import chunkwise_forward
from autotune.torch.native.parallel import _recompute


def forward_stats(q, k, v, i, f, C0, n0, m0, *, cell="exp", normalize=True, eps=1e-6):
    """h, s, m per token (what the generated forwards save), by the native parallel form."""
    r = _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, True)
    return r["h"], r["s"], r["m"]


def decomposed_backward(
    q, k, v, i, f, C0, n0, m0, dh, dC_S, dn_S, dm_S, *, L, cell="exp", normalize=True, eps=1e-6, dm0_by_dots=False
):
    """Gradients (dq, dk, dv, di, df, dC0, dn0, dm0) of chunkwise form by the kernels' decomposition, chunks of L.
    States C0, n0, m0 and last-state cotangents are tensors (zeros when absent)."""
    B, NH, S, DK = q.shape
    scale = DK**-0.5
    h, s, mt = forward_stats(q, k, v, i, f, C0, n0, m0, cell=cell, normalize=normalize, eps=eps)
    _, (C_S, n_S, m_S), (Cb, nb, mb) = chunkwise_forward(q, k, v, i, f, C0, n0, m0, chunk_size=L, cell=cell,
                                                         normalize=normalize, eps=eps)  # fmt: skip
    lf = F.logsigmoid(f)
    li = i if cell == "exp" else F.logsigmoid(i)
    if cell == "exp" or normalize:
        floor = torch.exp(-mt) if cell == "exp" else torch.ones_like(s)
        den, use_s = torch.maximum(s.abs(), floor) + eps, s.abs() >= floor
    else:
        den, use_s = torch.ones_like(s), torch.zeros_like(s, dtype=torch.bool)
    delta = (dh * h).sum(-1)
    Fl = torch.where(use_s, 0.0, floor * delta / den) if cell == "exp" else torch.zeros_like(s)  # -floor dfloor
    r, ds, G = 1 / den, torch.where(use_s, -delta / den * torch.sign(s), 0.0), -eps * delta / den
    NC = -(-S // L)
    m_next = [mb[:, :, c + 1] if c + 1 < NC else m_S for c in range(NC)]
    chunks = [slice(c * L, min(c * L + L, S)) for c in range(NC)]
    # reverse recurrence: the gradient of the state after every chunk
    dCa, dna = [None] * NC, [None] * NC
    dC, dn = dC_S, dn_S
    for c in reversed(range(NC)):
        sl = chunks[c]
        dCa[c], dna[c] = dC, dn
        D0 = torch.exp(lf[..., sl].cumsum(-1) + mb[:, :, c] - mt[..., sl])
        decay = torch.exp(lf[..., sl].sum(-1, keepdim=True) + mb[:, :, c] - m_next[c])
        qw = q[:, :, sl] * (scale * D0)[..., None]
        dC = decay[..., None] * dC + qw.transpose(-1, -2) @ (r[..., sl, None] * dh[:, :, sl])
        dn = decay * dn + (qw * ds[..., sl, None]).sum(-2)
    dC0, dn0 = dC, dn
    # the max state's chain
    mprev = torch.cat([m0, mt[..., :-1]], -1)
    fwin = lf + mprev >= li
    R = torch.zeros_like(G)
    carry = dm_S[..., 0] - (C_S * dC_S).sum((-1, -2)) - (n_S * dn_S).sum(-1)
    for t in reversed(range(S)):
        R[..., t] = G[..., t] + carry
        carry = torch.where(fwin[..., t], R[..., t], 0.0)
    dm0_dots = carry + (C0 * dC0).sum((-1, -2)) + (n0 * dn0).sum(-1)  # the same value, by a cancelling formula
    Y, A = [], []  # dm_c = Y_c + A_c dm_{c+1}
    # within every chunk
    dq, dk, dv, dli, dlf = (torch.zeros_like(t) for t in (q, k, v, i, f))
    for c, sl in enumerate(chunks):
        n_t = sl.stop - sl.start
        lfc, lic, mtc = lf[..., sl], li[..., sl], mt[..., sl]
        tt = torch.arange(n_t)
        causal = tt[:, None] >= tt[None, :]
        seg = torch.where(tt[:, None] > tt[None, :], lfc[..., :, None].expand(*lfc.shape, n_t), 0.0).cumsum(-2)
        D = torch.where(causal, torch.exp(seg + lic[..., None, :] - mtc[..., :, None]), 0.0)
        D0 = torch.exp(lfc.cumsum(-1) + mb[:, :, c] - mtc)
        w = torch.exp(lfc.flip(-1).cumsum(-1).flip(-1) - lfc + lic - m_next[c])
        decay = torch.exp(lfc.sum(-1) + mb[:, :, c, 0] - m_next[c][..., 0])
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        P = (qc @ kc.transpose(-1, -2)) * scale * D
        dnum = r[..., sl, None] * dh[:, :, sl]
        dP = dnum @ vc.transpose(-1, -2) + ds[..., sl, None]
        dA = dP * D * scale
        dq_inter = (
            scale * D0[..., None] * (dnum @ Cb[:, :, c].transpose(-1, -2) + ds[..., sl, None] * nb[:, :, c, None, :])
        )
        dk_trans = w[..., None] * (vc @ dCa[c].transpose(-1, -2) + dna[c][..., None, :])
        dq[:, :, sl] = dA @ kc + dq_inter
        dk[:, :, sl] = dA.transpose(-1, -2) @ qc + dk_trans
        dv[:, :, sl] = P.transpose(-1, -2) @ dnum + w[..., None] * (kc @ dCa[c])
        E, u, dD0 = dP * P, (kc * dk_trans).sum(-1), (qc * dq_inter).sum(-1)
        X = decay * ((Cb[:, :, c] * dCa[c]).sum((-1, -2)) + (nb[:, :, c] * dna[c]).sum(-1))
        # the max state before the chunk, routed as in the native backward: rows whose max came from it
        alive = torch.cumprod(fwin[..., sl].double(), -1).bool()
        last_alive = alive[..., -1]
        Y.append(torch.where(alive, -E.sum(-1) + Fl[..., sl], dD0).sum(-1)
                 + torch.where(last_alive, -u.sum(-1), X))  # fmt: skip
        A.append(last_alive)
        dli[..., sl] = E.sum(-2) + u
        before = E.cumsum(-1) - E
        dlf[..., sl] = (torch.where(causal, before, 0.0).sum(-2) + (u.cumsum(-1) - u)
                        + dD0.flip(-1).cumsum(-1).flip(-1) + X[..., None])  # fmt: skip
    if cell == "exp":
        dm0 = dm_S[..., 0]
        for c in reversed(range(NC)):
            dm0 = Y[c] + torch.where(A[c], dm0, 0.0)
        di = dli + torch.where(fwin, 0.0, R)
        dlf = dlf + torch.where(fwin, R, 0.0)
    else:
        di, dm0 = dli * torch.sigmoid(-i), torch.zeros_like(dm0_dots)
    if dm0_by_dots:
        dm0 = dm0_dots
    return dq, dk, dv, di, dlf * torch.sigmoid(-f), dC0, dn0, dm0[..., None]
