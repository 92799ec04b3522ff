"""Native PyTorch chunkwise mLSTM kernels (docs/math.md §4), with autograd or with an exact hand-written backward.

Forward, for chunks of length L (the last chunk may be shorter, so any S >= 1 works without padding):
    1. chunk-local states of every full chunk at once: C_loc = sum_j exp(g_j - m_loc) k_j v_j^T, g_j the log weight
       of token j at the chunk end, m_loc = max_j g_j;
    2. the recurrence over chunk borders: m_k = max(F_k + m_{k-1}, m_loc_k),
       C_k = exp(F_k + m_{k-1} - m_k) C_{k-1} + exp(m_loc_k - m_k) C_loc_k (and n likewise), F_k the chunk's lf sum;
    3. the parallel form within all full chunks at once, each with its border state as the initial-state column;
       then the short tail chunk, if any, which also yields the last state.
Backward (custbw): chunk by chunk in reverse order, the exact parallel backward of each chunk with the gradient of
its end state flowing in from the next chunk (a reverse recurrence over chunk borders); border states are kept from
the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...checks import check_chunk_size
from .common import pack_output, prepare_sequence
from .parallel import parallel_backward, parallel_forward


def _chunk_local_states(k, v, i, f, cell: str):
    """k (..., L, DHQK), v (..., L, DHHV), i, f (..., L) -> C_loc (..., DHQK, DHHV), n_loc (..., DHQK),
    m_loc (..., 1), and the chunk's forget-gate sum F (..., 1)."""
    lf = F.logsigmoid(f)
    i_log = i if cell == "exp" else F.logsigmoid(i)
    suffix = lf.flip(-1).cumsum(-1).flip(-1)  # sum_{s>=j} lf_s
    after = torch.cat([suffix[..., 1:], torch.zeros_like(suffix[..., :1])], dim=-1)  # sum_{s>j} lf_s
    g = after + i_log
    m_loc = g.amax(-1, keepdim=True) if cell == "exp" else torch.zeros_like(g[..., :1])
    w = torch.exp(g - m_loc)
    C_loc = (k * w[..., None]).transpose(-1, -2) @ v  # [DHQK, L] @ [L, DHHV] -> [DHQK, DHHV]
    n_loc = (k * w[..., None]).sum(-2)
    return C_loc, n_loc, m_loc, suffix[..., :1]


def _border_states(C0, n0, m0, C_loc, n_loc, m_loc, F_chunk, cell: str):
    """The recurrence over chunk borders. Inputs per chunk (B, NH, NC, ...); returns the states *before* each chunk
    and after the last one: C (B, NH, NC + 1, DHQK, DHHV), n (B, NH, NC + 1, DHQK), m (B, NH, NC + 1, 1)."""
    Cs, ns, ms = [C0], [n0], [m0]
    C, n, m = C0, n0, m0
    for c in range(C_loc.shape[2]):
        if cell == "exp":
            m_new = torch.maximum(F_chunk[:, :, c] + m, m_loc[:, :, c])
            decay = torch.exp(F_chunk[:, :, c] + m - m_new)
            scale_loc = torch.exp(m_loc[:, :, c] - m_new)
            m = m_new
        else:
            decay, scale_loc = torch.exp(F_chunk[:, :, c]), 1.0
        C = decay[..., None] * C + (scale_loc[..., None] if cell == "exp" else 1.0) * C_loc[:, :, c]
        n = decay * n + scale_loc * n_loc[:, :, c]
        Cs.append(C)
        ns.append(n)
        ms.append(m)
    return torch.stack(Cs, 2), torch.stack(ns, 2), torch.stack(ms, 2)


def chunkwise_forward(q, k, v, i, f, C0, n0, m0, *, chunk_size, cell="exp", normalize=True, eps=1e-6):
    """Returns h (B, NH, S, DHHV), the last state (C, n, m) and the states before every chunk
    (C (B, NH, NC_all, DHQK, DHHV), n, m), NC_all counting the tail chunk."""
    B, NH, S, DHQK = q.shape
    L = chunk_size
    NC, tail = divmod(S, L)
    opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=True)
    Cb, nb, mb = C0[:, :, None], n0[:, :, None], m0[:, :, None]
    hs = []
    if NC > 0:
        S_full = NC * L

        def chunks(x):  # (B, NH, S, ...) -> (B, NH, NC, L, ...)
            return x[:, :, :S_full].reshape(B, NH, NC, L, *x.shape[3:])

        qc, kc, vc, ic, fc = (chunks(x) for x in (q, k, v, i, f))
        C_loc, n_loc, m_loc, F_chunk = _chunk_local_states(kc, vc, ic, fc, cell)
        Cb, nb, mb = _border_states(C0, n0, m0, C_loc, n_loc, m_loc, F_chunk, cell)
        h_full, _ = parallel_forward(qc, kc, vc, ic, fc, Cb[:, :, :-1], nb[:, :, :-1], mb[:, :, :-1], **opts)
        hs.append(h_full.reshape(B, NH, S_full, -1))
        last = (Cb[:, :, -1], nb[:, :, -1], mb[:, :, -1])
    if tail > 0:
        sl = slice(S - tail, S)
        Cp, np_, mp = Cb[:, :, -1], nb[:, :, -1], mb[:, :, -1]
        h_tail, last = parallel_forward(q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], f[:, :, sl], Cp, np_, mp,
                                        **opts)  # fmt: skip
        hs.append(h_tail)
    else:
        Cb, nb, mb = Cb[:, :, :-1], nb[:, :, :-1], mb[:, :, :-1]  # drop the state after the last (full) chunk
    return torch.cat(hs, dim=2), last, (Cb, nb, mb)


def chunkwise_backward(q, k, v, i, f, Cb, nb, mb, dh, dC, dn, dm, *, chunk_size, cell="exp", normalize=True,
                       eps=1e-6):  # fmt: skip
    """Exact gradients (docs/math.md §6) given the states before every chunk (Cb, nb, mb from chunkwise_forward):
    chunk by chunk in reverse, the parallel backward of the chunk with the end-state gradient of the chunk after it.
    Returns dq, dk, dv, di, df, dC0, dn0, dm0."""
    S, L = q.shape[2], chunk_size
    opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=True)
    grads = [torch.empty_like(x) for x in (q, k, v, i, f)]
    for c in reversed(range(Cb.shape[2])):
        sl = slice(c * L, min(c * L + L, S))
        dq, dk, dv, di, df, dC, dn, dm = parallel_backward(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], f[:, :, sl], Cb[:, :, c], nb[:, :, c],
            mb[:, :, c], dh[:, :, sl], dC, dn, dm, **opts,
        )  # fmt: skip
        for g, d in zip(grads, (dq, dk, dv, di, df)):
            g[:, :, sl] = d
    return (*grads, dC, dn, dm)


class _ChunkwiseFn(torch.autograd.Function):
    """Chunkwise forward with the exact backward: per chunk, in reverse, parallel_backward with the end-state
    gradient of the chunk after it. Inputs are in the compute dtype; C0/n0/m0 are tensors."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size: int, cell: str, normalize: bool, eps: float):
        h, (C, n, m), (Cb, nb, mb) = chunkwise_forward(
            q, k, v, i, f, C0, n0, m0, chunk_size=chunk_size, cell=cell, normalize=normalize, eps=eps
        )
        ctx.save_for_backward(q, k, v, i, f, Cb, nb, mb)
        ctx.chunk_size = chunk_size
        ctx.opts = dict(cell=cell, normalize=normalize, eps=eps)
        return h, C, n, m

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        q, k, v, i, f, Cb, nb, mb = ctx.saved_tensors
        grads = chunkwise_backward(q, k, v, i, f, Cb, nb, mb, dh, dC, dn, dm, chunk_size=ctx.chunk_size, **ctx.opts)
        return (*grads, None, None, None, None)


def _chunkwise_kernel(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size, *,
                      cell, normalize, custom_backward):  # fmt: skip
    check_chunk_size(chunk_size)
    x = prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, normalize=normalize, eps=eps)
    args = (x.q, x.k, x.v, x.i, x.f, x.C0, x.n0, x.m0)
    if custom_backward:
        h, C, n, m = _ChunkwiseFn.apply(*args, chunk_size, cell, normalize, float(eps))
    else:
        h, (C, n, m), _ = chunkwise_forward(*args, chunk_size=chunk_size, cell=cell, normalize=normalize, eps=eps)
    return pack_output(h, (C, n, m), cell, return_last_states, x.out_dtype)


def _make(name: str, *, custom_backward: bool):
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
        **kwargs,
    ):
        return _chunkwise_kernel(
            q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size,
            cell="exp", normalize=True, custom_backward=custom_backward,
        )  # fmt: skip

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"""Native PyTorch chunkwise mLSTM (exp cell), {
        "exact hand-written backward (docs/math.md §6)" if custom_backward else "backward by autograd"
    }.

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHHV); i, f: (B, NH, S); optional initial states c_initial
    (B, NH, DHQK, DHHV), n_initial (B, NH, DHQK), m_initial (B, NH, 1). Any S >= 1 (S need not divide by
    chunk_size: the last chunk is shorter), any head dims. Computes in float32 (float64 for float64 inputs); h is
    returned in q's dtype, last states in the compute dtype. ``autocast_kernel_dtype`` is accepted and not used.
    """
    return kernel


mlstm_chunkwise__native_autograd = _make("mlstm_chunkwise__native_autograd", custom_backward=False)
mlstm_chunkwise__native_custbw = _make("mlstm_chunkwise__native_custbw", custom_backward=True)


def mlstm_siging_chunkwise__native(
    q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, eps=1e-6,
    autocast_kernel_dtype=torch.bfloat16, chunk_size=64, normalize: bool = True, custom_backward: bool = True,
    **kwargs,
):  # fmt: skip
    """The sig cell (docs/math.md §2) in chunkwise form; returns h and, on request, (C, n). Used by the backend module
    and the sequence-splitting paths for the sig variant."""
    return _chunkwise_kernel(
        q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size,
        cell="sig", normalize=normalize, custom_backward=custom_backward,
    )  # fmt: skip


registry = {
    "native_autograd": mlstm_chunkwise__native_autograd,
    "native_custbw": mlstm_chunkwise__native_custbw,
}
