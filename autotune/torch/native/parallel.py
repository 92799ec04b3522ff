"""Native PyTorch parallel (quadratic) mLSTM kernels, with autograd or with an exact hand-written backward.

    parallel_forward   docs/math.md §3 on tensors with any leading batch dims (..., S, D); also returns the last state
    parallel_backward  its exact gradient (docs/math.md §6), including initial-state and last-state gradients
    _ParallelFn        the autograd Function around the two (one class, plain-Python non-tensor arguments)
    mlstm_parallel__native_* / mlstm_siging_parallel__native_*   the registered kernels

``stable_fgate`` chooses how ``F_t - F_j`` is formed: True sums each segment directly, False subtracts two
cumulative sums formed in float64 (in float32 they would lose digits for long S). Both compute the same function.
The chunkwise kernels reuse parallel_forward/parallel_backward within each chunk.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...checks import check_chunk_size
from .common import pack_output, prepare_sequence


def _log_decay(lf: torch.Tensor, i_log: torch.Tensor, stable_fgate: bool):
    """log D[t, j] = F_t - F_j + i_log_j for j <= t else -inf (..., S, S), and F_t = sum_{s<=t} lf_s (..., S)."""
    S = lf.shape[-1]
    causal = torch.ones(S, S, dtype=torch.bool, device=lf.device).tril()
    F_t = lf.cumsum(-1)
    if stable_fgate:
        # seg[t, j] = sum_{s=j+1..t} lf_s: cumulative sum down each column of the strictly lower triangle
        seg = torch.where(causal.tril(-1), lf[..., :, None].expand(*lf.shape, S), 0.0).cumsum(-2)
    else:
        # a difference of cumulative sums cancels for long S; formed in float64, it keeps float32 accuracy
        F64 = lf.double().cumsum(-1)
        seg = (F64[..., :, None] - F64[..., None, :]).to(lf.dtype)
    log_D = torch.where(causal, seg + i_log[..., None, :], -math.inf)
    return log_D, F_t


def _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate):
    """Everything the forward computes, as a dict (the backward needs the intermediates)."""
    lf = F.logsigmoid(f)
    i_log = i if cell == "exp" else F.logsigmoid(i)
    log_D, F_t = _log_decay(lf, i_log, stable_fgate)
    log_D0 = F_t + m0 if cell == "exp" else F_t  # (..., S): the initial-state column
    if cell == "exp":
        m = torch.maximum(log_D.amax(-1), log_D0)
    else:
        m = torch.zeros_like(F_t)
    D = torch.exp(log_D - m[..., None])  # (..., S, S)
    D0 = torch.exp(log_D0 - m)  # (..., S)
    q_s = q * q.shape[-1] ** -0.5
    A = q_s @ k.transpose(-1, -2)  # [S, DHQK] @ [DHQK, S] -> [S, S]
    P = A * D
    qC0 = q_s @ C0  # [S, DHQK] @ [DHQK, DHHV] -> [S, DHHV]
    qn0 = (q_s * n0[..., None, :]).sum(-1)  # (..., S)
    num = P @ v + D0[..., None] * qC0  # [S, S] @ [S, DHHV] -> [S, DHHV]
    s = P.sum(-1) + D0 * qn0
    if cell == "exp" or normalize:
        floor = torch.exp(-m) if cell == "exp" else torch.ones_like(s)
        use_s = s.abs() >= floor  # which branch of the max the gradient takes
        den = torch.maximum(s.abs(), floor) + eps  # maximum, not where: a NaN in s must reach h
    else:
        floor, use_s, den = None, None, torch.ones_like(s)
    h = num / den[..., None]
    return dict(lf=lf, log_D=log_D, log_D0=log_D0, m=m, D=D, D0=D0, q_s=q_s, A=A, P=P, qC0=qC0, qn0=qn0, s=s,
                floor=floor, use_s=use_s, den=den, h=h)  # fmt: skip


def parallel_forward(q, k, v, i, f, C0, n0, m0, *, cell="exp", normalize=True, eps=1e-6, stable_fgate=True):
    """docs/math.md §3. q, k (..., S, DHQK); v (..., S, DHHV); i, f (..., S); C0 (..., DHQK, DHHV); n0 (..., DHQK);
    m0 (..., 1). Returns h (..., S, DHHV) and the last state (C (..., DHQK, DHHV), n (..., DHQK), m (..., 1))."""
    r = _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate)
    w, w0 = r["D"][..., -1, :], r["D0"][..., -1:]  # weights of each token and of the initial state in the last state
    C_last = (k * w[..., None]).transpose(-1, -2) @ v + w0[..., None] * C0  # [DHQK, S] @ [S, DHHV]
    n_last = (k * w[..., None]).sum(-2) + w0 * n0
    return r["h"], (C_last, n_last, r["m"][..., -1:])


def parallel_backward(q, k, v, i, f, C0, n0, m0, dh, dC, dn, dm, *, cell="exp", normalize=True, eps=1e-6,
                      stable_fgate=True):  # fmt: skip
    """Exact gradient of parallel_forward (docs/math.md §6) for cotangents dh (..., S, DHHV) on h and dC, dn, dm on the
    last state. Returns dq, dk, dv, di, df, dC0, dn0, dm0 (dm0 is zeros for the sig cell)."""
    r = _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate)
    D, D0, A, P, q_s, h = r["D"], r["D0"], r["A"], r["P"], r["q_s"], r["h"]
    # h = num / den, den = max(|s|, floor) + eps
    dnum = dh / r["den"][..., None]
    if r["use_s"] is not None:
        dden = -(dh * h).sum(-1) / r["den"]
        ds = torch.where(r["use_s"], dden * torch.sign(r["s"]), 0.0)
        dfloor = torch.where(r["use_s"], 0.0, dden)
    else:
        ds = torch.zeros_like(r["s"])
        dfloor = None
    # num = P v + D0 qC0 ; s = P 1 + D0 qn0 ; P = A * D ; A = q_s k^T
    dP = dnum @ v.transpose(-1, -2) + ds[..., None]  # [S, DHHV] @ [DHHV, S] -> [S, S]
    dD = dP * A
    dA = dP * D
    dq_s = dA @ k + D0[..., None] * (dnum @ C0.transpose(-1, -2) + ds[..., None] * n0[..., None, :])
    dk = dA.transpose(-1, -2) @ q_s  # [S, S] @ [S, DHQK] -> [S, DHQK]
    dv = P.transpose(-1, -2) @ dnum  # [S, S] @ [S, DHHV] -> [S, DHHV]
    dD0 = (dnum * r["qC0"]).sum(-1) + ds * r["qn0"]
    dC0 = (q_s * D0[..., None]).transpose(-1, -2) @ dnum  # [DHQK, S] @ [S, DHHV] -> [DHQK, DHHV]
    dn0 = (q_s * (D0 * ds)[..., None]).sum(-2)
    # last state: C = sum_j w_j k_j v_j^T + w0 C0, n = sum_j w_j k_j + w0 n0, with w = D[-1, :], w0 = D0[-1]
    w, w0 = D[..., -1, :], D0[..., -1:]
    kdC = k @ dC  # [S, DHQK] @ [DHQK, DHHV] -> [S, DHHV]
    dD[..., -1, :] += (kdC * v).sum(-1) + (k * dn[..., None, :]).sum(-1)
    dk = dk + w[..., None] * (v @ dC.transpose(-1, -2) + dn[..., None, :])
    dv = dv + w[..., None] * kdC
    dD0[..., -1] += (C0 * dC).sum((-2, -1)) + (n0 * dn).sum(-1)
    dC0 = dC0 + w0[..., None] * dC
    dn0 = dn0 + w0 * dn
    # through the exponentials: D = exp(log_D - m), D0 = exp(log_D0 - m)
    dlog_D = dD * D
    dlog_D0 = dD0 * D0
    if cell == "exp":
        # m_t = max(max_j log_D[t, j], log_D0[t]) enters D, D0, the floor exp(-m) and (for t = S) the last state
        dm_rows = -dlog_D.sum(-1) - dlog_D0 - r["floor"] * dfloor
        dm_rows[..., -1] += dm[..., 0]
        cols = torch.cat([r["log_D0"][..., None], r["log_D"]], dim=-1)  # (..., S, S + 1)
        onehot = torch.zeros_like(cols).scatter_(-1, cols.argmax(-1, keepdim=True), 1.0)
        dlog_D = dlog_D + onehot[..., 1:] * dm_rows[..., None]
        dlog_D0 = dlog_D0 + onehot[..., 0] * dm_rows
        dm0 = dlog_D0.sum(-1, keepdim=True)
    else:
        dm0 = torch.zeros_like(m0)
    # log_D[t, j] = (F_t - F_j) + i_log_j, log_D0[t] = F_t (+ m0), F_t = sum_{s<=t} lf_s
    di_log = dlog_D.sum(-2)
    if stable_fgate:
        # dlf_s = sum_{t>=s} sum_{j<s} dlog_D[t, j] + sum_{t>=s} dlog_D0[t], without cancellation
        S = r["lf"].shape[-1]
        before = dlog_D.cumsum(-1) - dlog_D  # before[t, s] = sum_{j<s} dlog_D[t, j]
        rows_from_s = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()  # [t, s]: t >= s
        dlf = torch.where(rows_from_s, before, 0.0).sum(-2)
    else:
        dF = dlog_D.sum(-1) - di_log
        dlf = dF.flip(-1).cumsum(-1).flip(-1)
    dlf = dlf + dlog_D0.flip(-1).cumsum(-1).flip(-1)
    df = dlf * torch.sigmoid(-f)
    di = di_log if cell == "exp" else di_log * torch.sigmoid(-i)
    dq = dq_s * q.shape[-1] ** -0.5
    return dq, dk, dv, di, df, dC0, dn0, dm0


class _ParallelFn(torch.autograd.Function):
    """Parallel forward with the exact backward above. Inputs are in the compute dtype; C0/n0/m0 are tensors."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, cell: str, normalize: bool, eps: float, stable_fgate: bool):
        h, (C, n, m) = parallel_forward(
            q, k, v, i, f, C0, n0, m0, cell=cell, normalize=normalize, eps=eps, stable_fgate=stable_fgate
        )
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0)
        ctx.opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=stable_fgate)
        return h, C, n, m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        grads = parallel_backward(*ctx.saved_tensors, dh, dC, dn, dm, **ctx.opts)
        return (*grads, None, None, None, None)


def _parallel_kernel(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, *, cell, normalize,
                     stable_fgate, custom_backward):  # fmt: skip
    x = prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, normalize=normalize, eps=eps)
    args = (x.q, x.k, x.v, x.i, x.f, x.C0, x.n0, x.m0)
    if custom_backward:
        h, C, n, m = _ParallelFn.apply(*args, cell, normalize, float(eps), stable_fgate)
    else:
        h, (C, n, m) = parallel_forward(*args, cell=cell, normalize=normalize, eps=eps, stable_fgate=stable_fgate)
    return pack_output(h, (C, n, m), cell, return_last_states, x.out_dtype)


_DOC = """Native PyTorch parallel mLSTM ({cell} cell), {grad}; F_t - F_j {fgate}.

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHHV); i, f: (B, NH, S); optional initial states c_initial
    (B, NH, DHQK, DHHV), n_initial (B, NH, DHQK){m_doc}. Any S >= 1 and any head dims. Computes in float32
    (float64 for float64 inputs); h is returned in q's dtype, last states in the compute dtype.
    ``autocast_kernel_dtype`` and ``chunk_size`` are accepted for interface compatibility and not used.
    Memory is O(S^2) per head: meant as a reference and for short sequences.
    """


def _make(name: str, *, cell: str, stable_fgate: bool, custom_backward: bool):
    def kernel(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        i: torch.Tensor,
        f: torch.Tensor,
        c_initial: torch.Tensor | None = None,
        n_initial: torch.Tensor | None = None,
        m_initial: torch.Tensor | None = None,
        return_last_states: bool = False,
        eps: float = 1e-6,
        autocast_kernel_dtype: torch.dtype = torch.bfloat16,
        chunk_size: int = 64,
        normalize: bool = True,
        **kwargs,
    ):
        check_chunk_size(chunk_size)  # not used by the parallel form, but a bad value is still a caller's bug
        return _parallel_kernel(
            q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps,
            cell=cell, normalize=normalize if cell == "sig" else True, stable_fgate=stable_fgate,
            custom_backward=custom_backward,
        )  # fmt: skip

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = _DOC.format(
        cell=cell,
        grad="exact hand-written backward (docs/math.md §6)" if custom_backward else "backward by autograd",
        fgate="summed per segment" if stable_fgate else "as a difference of float64 cumulative sums",
        m_doc=", m_initial (B, NH, 1)" if cell == "exp" else "; ``normalize`` (default True) as in docs/math.md §2",
    )
    return kernel


mlstm_parallel__native_autograd = _make(
    "mlstm_parallel__native_autograd", cell="exp", stable_fgate=False, custom_backward=False
)
mlstm_parallel__native_custbw = _make(
    "mlstm_parallel__native_custbw", cell="exp", stable_fgate=False, custom_backward=True
)
mlstm_parallel__native_stablef_autograd = _make(
    "mlstm_parallel__native_stablef_autograd", cell="exp", stable_fgate=True, custom_backward=False
)
mlstm_parallel__native_stablef_custbw = _make(
    "mlstm_parallel__native_stablef_custbw", cell="exp", stable_fgate=True, custom_backward=True
)
mlstm_siging_parallel__native_autograd = _make(
    "mlstm_siging_parallel__native_autograd", cell="sig", stable_fgate=True, custom_backward=False
)
mlstm_siging_parallel__native_custbw = _make(
    "mlstm_siging_parallel__native_custbw", cell="sig", stable_fgate=True, custom_backward=True
)

registry = {
    "native_autograd": mlstm_parallel__native_autograd,
    "native_custbw": mlstm_parallel__native_custbw,
    "native_stablef_autograd": mlstm_parallel__native_stablef_autograd,
    "native_stablef_custbw": mlstm_parallel__native_stablef_custbw,
    "native_siging_autograd": mlstm_siging_parallel__native_autograd,
    "native_siging_custbw": mlstm_siging_parallel__native_custbw,
}
