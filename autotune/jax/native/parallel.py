"""Native JAX parallel (quadratic) mLSTM kernels, with autodiff or with the exact hand-written backward.

    parallel_forward   docs/math.md §3 on arrays with any leading batch dims (..., S, D); also returns the last state
    parallel_backward  its exact gradient (docs/math.md §6), including initial-state and last-state gradients
    mlstm_parallel__native_* / mlstm_siging_parallel__native_*   the registered kernels

The JAX twin of autotune/torch/native/parallel.py. ``stable_fgate`` chooses how ``F_t - F_j`` is formed: True sums
each segment directly; False subtracts two cumulative sums, formed in float64 when x64 is enabled and otherwise as
float32 pairs (hi, lo) whose sum carries the digits a plain float32 cumulative sum would drop for long S.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ...checks import check_chunk_size
from .common import pack_output, prepare_sequence, sequence_docstring


def _two_sum(a, b):
    """a + b = s + err exactly (Knuth's error-free sum)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _add_pairs(x, y):
    hi, err = _two_sum(x[0], y[0])
    err = err + x[1] + y[1]
    s = hi + err
    return s, err - (s - hi)


def _prefix_sum(x):
    """The cumulative sum of x along the last axis as (hi, lo), hi + lo accurate to the dtype's precision squared
    for float32 (lo is zero for float64, whose plain cumulative sum is accurate enough)."""
    if x.dtype == jnp.float64:
        return jnp.cumsum(x, -1), jnp.zeros_like(x)
    return jax.lax.associative_scan(_add_pairs, (x, jnp.zeros_like(x)), axis=x.ndim - 1)


def _log_decay(lf, i_log, stable_fgate: bool):
    """log D[t, j] = F_t - F_j + i_log_j for j <= t else -inf (..., S, S), and F_t = sum_{s<=t} lf_s (..., S)."""
    S = lf.shape[-1]
    causal = jnp.tril(jnp.ones((S, S), bool))
    F_t = jnp.cumsum(lf, -1)
    if stable_fgate:
        # seg[t, j] = sum_{s=j+1..t} lf_s: cumulative sum down each column of the strictly lower triangle
        seg = jnp.cumsum(jnp.where(jnp.tril(causal, -1), lf[..., :, None], 0.0), axis=-2)
    else:
        hi, lo = _prefix_sum(lf)
        seg = (hi[..., :, None] - hi[..., None, :]) + (lo[..., :, None] - lo[..., None, :])
    log_D = jnp.where(causal, seg + i_log[..., None, :], -jnp.inf)
    return log_D, F_t


def _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate):
    """Everything the forward computes, as a dict (the backward needs the intermediates)."""
    lf = jax.nn.log_sigmoid(f)
    i_log = i if cell == "exp" else jax.nn.log_sigmoid(i)
    log_D, F_t = _log_decay(lf, i_log, stable_fgate)
    log_D0 = F_t + m0 if cell == "exp" else F_t  # (..., S): the initial-state column
    m = jnp.maximum(log_D.max(-1), log_D0) if cell == "exp" else jnp.zeros_like(F_t)
    D = jnp.exp(log_D - m[..., None])  # (..., S, S)
    D0 = jnp.exp(log_D0 - m)  # (..., S)
    q_s = q * q.shape[-1] ** -0.5
    A = q_s @ jnp.swapaxes(k, -1, -2)  # [S, DHQK] @ [DHQK, S] -> [S, S]
    P = A * D
    qC0 = q_s @ C0  # [S, DHQK] @ [DHQK, DHHV] -> [S, DHHV]
    qn0 = (q_s * n0[..., None, :]).sum(-1)  # (..., S)
    num = P @ v + D0[..., None] * qC0  # [S, S] @ [S, DHHV] -> [S, DHHV]
    s = P.sum(-1) + D0 * qn0
    if cell == "exp" or normalize:
        floor = jnp.exp(-m) if cell == "exp" else jnp.ones_like(s)
        use_s = jnp.abs(s) >= floor  # which branch of the max the gradient takes
        den = jnp.maximum(jnp.abs(s), floor) + eps  # maximum, not where: a NaN in s must reach h
    else:
        floor, use_s, den = None, None, jnp.ones_like(s)
    h = num / den[..., None]
    return dict(lf=lf, log_D=log_D, log_D0=log_D0, m=m, D=D, D0=D0, q_s=q_s, A=A, P=P, qC0=qC0, qn0=qn0, s=s,
                floor=floor, use_s=use_s, den=den, h=h)  # fmt: skip


def parallel_forward(q, k, v, i, f, C0, n0, m0, *, cell="exp", normalize=True, eps=1e-6, stable_fgate=True):
    """docs/math.md §3. q, k (..., S, DHQK); v (..., S, DHHV); i, f (..., S); C0 (..., DHQK, DHHV); n0 (..., DHQK);
    m0 (..., 1). Returns h (..., S, DHHV) and the last state (C (..., DHQK, DHHV), n (..., DHQK), m (..., 1))."""
    r = _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate)
    w, w0 = r["D"][..., -1, :], r["D0"][..., -1:]  # weights of each token and of the initial state in the last state
    C_last = jnp.swapaxes(k * w[..., None], -1, -2) @ v + w0[..., None] * C0  # [DHQK, S] @ [S, DHHV]
    n_last = (k * w[..., None]).sum(-2) + w0 * n0
    return r["h"], (C_last, n_last, r["m"][..., -1:])


def parallel_backward(q, k, v, i, f, C0, n0, m0, dh, dC, dn, dm, *, cell="exp", normalize=True, eps=1e-6,
                      stable_fgate=True):  # fmt: skip
    """Exact gradient of parallel_forward (docs/math.md §6) for cotangents dh (..., S, DHHV) on h and dC, dn, dm on the
    last state. Returns dq, dk, dv, di, df, dC0, dn0, dm0 (dm0 is zeros for the sig cell)."""
    r = _recompute(q, k, v, i, f, C0, n0, m0, cell, normalize, eps, stable_fgate)
    D, D0, A, P, q_s, h = r["D"], r["D0"], r["A"], r["P"], r["q_s"], r["h"]
    T = functools.partial(jnp.swapaxes, axis1=-1, axis2=-2)
    # h = num / den, den = max(|s|, floor) + eps
    dnum = dh / r["den"][..., None]
    if r["use_s"] is not None:
        dden = -(dh * h).sum(-1) / r["den"]
        ds = jnp.where(r["use_s"], dden * jnp.sign(r["s"]), 0.0)
        dfloor = jnp.where(r["use_s"], 0.0, dden)
    else:
        ds, dfloor = jnp.zeros_like(r["s"]), None
    # num = P v + D0 qC0 ; s = P 1 + D0 qn0 ; P = A * D ; A = q_s k^T
    dP = dnum @ T(v) + ds[..., None]  # [S, DHHV] @ [DHHV, S] -> [S, S]
    dD = dP * A
    dA = dP * D
    dq_s = dA @ k + D0[..., None] * (dnum @ T(C0) + ds[..., None] * n0[..., None, :])
    dk = T(dA) @ q_s  # [S, S] @ [S, DHQK] -> [S, DHQK]
    dv = T(P) @ dnum  # [S, S] @ [S, DHHV] -> [S, DHHV]
    dD0 = (dnum * r["qC0"]).sum(-1) + ds * r["qn0"]
    dC0 = T(q_s * D0[..., None]) @ dnum  # [DHQK, S] @ [S, DHHV] -> [DHQK, DHHV]
    dn0 = (q_s * (D0 * ds)[..., None]).sum(-2)
    # last state: C = sum_j w_j k_j v_j^T + w0 C0, n = sum_j w_j k_j + w0 n0, with w = D[-1, :], w0 = D0[-1]
    w, w0 = D[..., -1, :], D0[..., -1:]
    kdC = k @ dC  # [S, DHQK] @ [DHQK, DHHV] -> [S, DHHV]
    dD = dD.at[..., -1, :].add((kdC * v).sum(-1) + (k * dn[..., None, :]).sum(-1))
    dk = dk + w[..., None] * (v @ T(dC) + dn[..., None, :])
    dv = dv + w[..., None] * kdC
    dD0 = dD0.at[..., -1].add((C0 * dC).sum((-2, -1)) + (n0 * dn).sum(-1))
    dC0 = dC0 + w0[..., None] * dC
    dn0 = dn0 + w0 * dn
    # through the exponentials: D = exp(log_D - m), D0 = exp(log_D0 - m)
    dlog_D = dD * D
    dlog_D0 = dD0 * D0
    if cell == "exp":
        # m_t = max(max_j log_D[t, j], log_D0[t]) enters D, D0, the floor exp(-m) and (for t = S) the last state
        dm_rows = -dlog_D.sum(-1) - dlog_D0 - r["floor"] * dfloor
        dm_rows = dm_rows.at[..., -1].add(dm[..., 0])
        cols = jnp.concatenate([r["log_D0"][..., None], r["log_D"]], axis=-1)  # (..., S, S + 1)
        onehot = jax.nn.one_hot(cols.argmax(-1), cols.shape[-1], dtype=cols.dtype)
        dlog_D = dlog_D + onehot[..., 1:] * dm_rows[..., None]
        dlog_D0 = dlog_D0 + onehot[..., 0] * dm_rows
        dm0 = dlog_D0.sum(-1, keepdims=True)
    else:
        dm0 = jnp.zeros_like(m0)
    # log_D[t, j] = (F_t - F_j) + i_log_j, log_D0[t] = F_t (+ m0), F_t = sum_{s<=t} lf_s
    di_log = dlog_D.sum(-2)
    if stable_fgate:
        # dlf_s = sum_{t>=s} sum_{j<s} dlog_D[t, j] + sum_{t>=s} dlog_D0[t], without cancellation
        S = r["lf"].shape[-1]
        before = jnp.cumsum(dlog_D, -1) - dlog_D  # before[t, s] = sum_{j<s} dlog_D[t, j]
        rows_from_s = jnp.tril(jnp.ones((S, S), bool))  # [t, s]: t >= s
        dlf = jnp.where(rows_from_s, before, 0.0).sum(-2)
    else:
        dF = dlog_D.sum(-1) - di_log
        dlf = jnp.flip(jnp.cumsum(jnp.flip(dF, -1), -1), -1)
    dlf = dlf + jnp.flip(jnp.cumsum(jnp.flip(dlog_D0, -1), -1), -1)
    df = dlf * jax.nn.sigmoid(-f)
    di = di_log if cell == "exp" else di_log * jax.nn.sigmoid(-i)
    dq = dq_s * q.shape[-1] ** -0.5
    return dq, dk, dv, di, df, dC0, dn0, dm0


@functools.cache
def exact_parallel(cell: str, normalize: bool, eps: float, stable_fgate: bool):
    """(q, k, v, i, f, C0, n0, m0) -> (h, C, n, m), parallel_forward with parallel_backward as its VJP."""
    opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=stable_fgate)

    @jax.custom_vjp
    def fn(q, k, v, i, f, C0, n0, m0):
        h, (C, n, m) = parallel_forward(q, k, v, i, f, C0, n0, m0, **opts)
        return h, C, n, m

    def fwd(*inputs):
        return fn(*inputs), inputs

    def bwd(inputs, cotangents):
        return parallel_backward(*inputs, *cotangents, **opts)

    fn.defvjp(fwd, bwd)
    return fn


@functools.partial(jax.jit, static_argnames=("cell", "normalize", "eps", "stable_fgate", "custom_backward"))
def _parallel(q, k, v, i, f, C0, n0, m0, *, cell, normalize, eps, stable_fgate, custom_backward):
    if custom_backward:
        h, C, n, m = exact_parallel(cell, normalize, eps, stable_fgate)(q, k, v, i, f, C0, n0, m0)
    else:
        h, (C, n, m) = parallel_forward(
            q, k, v, i, f, C0, n0, m0, cell=cell, normalize=normalize, eps=eps, stable_fgate=stable_fgate
        )
    return h, (C, n, m)


def _make(name: str, *, cell: str, stable_fgate: bool, custom_backward: bool):
    def kernel(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states: bool = False,
               eps: float = 1e-6, autocast_kernel_dtype=None, chunk_size: int = 64, normalize: bool = True,
               **kwargs):  # fmt: skip
        check_chunk_size(chunk_size)  # not used by the parallel form, but a bad value is still a caller's bug
        normalize = normalize if cell == "sig" else True
        x = prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, normalize=normalize, eps=eps)
        h, last = _parallel(x.q, x.k, x.v, x.i, x.f, x.C0, x.n0, x.m0, cell=cell, normalize=normalize,
                            eps=float(eps), stable_fgate=stable_fgate, custom_backward=custom_backward)  # fmt: skip
        return pack_output(h, last, cell, return_last_states, x.out_dtype)

    kernel.__name__ = kernel.__qualname__ = name
    grad = "exact hand-written backward (docs/math.md §6)" if custom_backward else "backward by autodiff"
    fgate = "summed per segment" if stable_fgate else "as a difference of cumulative sums"
    kernel.__doc__ = sequence_docstring("parallel", f"{cell} cell, {grad}; F_t - F_j {fgate}") + (
        "    Memory is O(S^2) per head: meant as a reference and for short sequences.\n"
        + ("    ``normalize`` (default True) as in docs/math.md §2.\n" if cell == "sig" else "")
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
