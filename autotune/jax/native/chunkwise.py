"""Native JAX chunkwise mLSTM kernels (docs/math.md §4), with autodiff or with the exact hand-written backward.

Forward: a ``lax.scan`` over the full chunks of length L, each chunk the parallel form (docs/math.md §3) with the
state at its start as the initial-state column, handing its end state to the next chunk; then the shorter tail
chunk, if any (any S >= 1 works without padding). Backward (custbw): a reverse ``lax.scan`` over the same chunks, the
exact parallel backward of each chunk with the gradient of its end state flowing in from the chunk after it. Only the
states at the chunk starts are kept from the forward, so memory is linear in S. The torch twin,
autotune/torch/native/chunkwise.py, computes the same function with the chunk-local states formed all at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ...checks import check_chunk_size
from .common import pack_output, prepare_sequence, sequence_docstring
from .parallel import parallel_backward, parallel_forward


def _split(x, L: int):
    """(B, NH, S, ...) -> the full chunks (NC, B, NH, L, ...) and the tail (B, NH, S mod L, ...) (either may be
    empty)."""
    B, NH, S = x.shape[:3]
    NC = S // L
    full = x[:, :, : NC * L].reshape(B, NH, NC, L, *x.shape[3:])
    return jnp.moveaxis(full, 2, 0), x[:, :, NC * L :]


def _join(full, tail):
    """The inverse of _split."""
    NC, B, NH, L = full.shape[:4]
    return jnp.concatenate([jnp.moveaxis(full, 0, 2).reshape(B, NH, NC * L, *full.shape[4:]), tail], axis=2)


def chunkwise_forward(q, k, v, i, f, C0, n0, m0, *, chunk_size, cell="exp", normalize=True, eps=1e-6):
    """Returns h (B, NH, S, DHHV), the last state (C, n, m) and the states at the start of every chunk: those of the
    full chunks stacked (NC, B, NH, ...) and that of the tail chunk (the last state when there is no tail)."""
    opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=True)
    pieces = [_split(x, chunk_size) for x in (q, k, v, i, f)]
    full, tail = [p[0] for p in pieces], [p[1] for p in pieces]

    def chunk(state, xs):
        h, end = parallel_forward(*xs, *state, **opts)
        return end, (h, state)

    state, (h_full, starts) = jax.lax.scan(chunk, (C0, n0, m0), full)
    tail_start = state
    h_tail = tail[2]  # (B, NH, 0, DHHV) when there is no tail
    if tail[0].shape[2] > 0:
        h_tail, state = parallel_forward(*tail, *tail_start, **opts)
    return _join(h_full, h_tail), state, (starts, tail_start)


def chunkwise_backward(inputs, starts, tail_start, cotangents, *, chunk_size, cell="exp", normalize=True, eps=1e-6):
    """Exact gradients (docs/math.md §6) given the chunk-start states of chunkwise_forward: the tail chunk, then the
    full chunks in reverse, each the parallel backward with its end-state gradient. Returns dq, dk, dv, di, df, dC0,
    dn0, dm0."""
    opts = dict(cell=cell, normalize=normalize, eps=eps, stable_fgate=True)
    dh, d_end = cotangents[0], tuple(cotangents[1:])
    pieces = [_split(x, chunk_size) for x in (*inputs, dh)]
    full, tail = [p[0] for p in pieces], [p[1] for p in pieces]
    tail_grads = [x for x in tail[:5]]  # empty arrays when there is no tail
    if tail[0].shape[2] > 0:
        g = parallel_backward(*tail[:5], *tail_start, tail[5], *d_end, **opts)
        tail_grads, d_end = list(g[:5]), tuple(g[5:])

    def chunk(d_state, xs):
        x, start, dh_chunk = xs[:5], xs[5], xs[6]
        g = parallel_backward(*x, *start, dh_chunk, *d_state, **opts)
        return tuple(g[5:]), g[:5]

    d_start, full_grads = jax.lax.scan(chunk, d_end, (*full[:5], starts, full[5]), reverse=True)
    return (*(_join(g, t) for g, t in zip(full_grads, tail_grads)), *d_start)


@functools.cache
def exact_chunkwise(chunk_size: int, cell: str, normalize: bool, eps: float):
    """(q, k, v, i, f, C0, n0, m0) -> (h, C, n, m), chunkwise_forward with chunkwise_backward as its VJP."""
    opts = dict(chunk_size=chunk_size, cell=cell, normalize=normalize, eps=eps)

    @jax.custom_vjp
    def fn(q, k, v, i, f, C0, n0, m0):
        h, (C, n, m), _ = chunkwise_forward(q, k, v, i, f, C0, n0, m0, **opts)
        return h, C, n, m

    def fwd(*inputs):
        h, (C, n, m), (starts, tail_start) = chunkwise_forward(*inputs, **opts)
        return (h, C, n, m), (inputs[:5], starts, tail_start)

    def bwd(residuals, cotangents):
        inputs, starts, tail_start = residuals
        return chunkwise_backward(inputs, starts, tail_start, cotangents, **opts)

    fn.defvjp(fwd, bwd)
    return fn


@functools.partial(jax.jit, static_argnames=("chunk_size", "cell", "normalize", "eps", "custom_backward"))
def _chunkwise(q, k, v, i, f, C0, n0, m0, *, chunk_size, cell, normalize, eps, custom_backward):
    if custom_backward:
        h, C, n, m = exact_chunkwise(chunk_size, cell, normalize, eps)(q, k, v, i, f, C0, n0, m0)
    else:
        h, (C, n, m), _ = chunkwise_forward(
            q, k, v, i, f, C0, n0, m0, chunk_size=chunk_size, cell=cell, normalize=normalize, eps=eps
        )
    return h, (C, n, m)


def chunkwise_kernel(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size, *, cell,
                     normalize, custom_backward):  # fmt: skip
    check_chunk_size(chunk_size)
    x = prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, normalize=normalize, eps=eps)
    h, last = _chunkwise(x.q, x.k, x.v, x.i, x.f, x.C0, x.n0, x.m0, chunk_size=chunk_size, cell=cell,
                         normalize=normalize, eps=float(eps), custom_backward=custom_backward)  # fmt: skip
    return pack_output(h, last, cell, return_last_states, x.out_dtype)


def _make(name: str, *, custom_backward: bool):
    def kernel(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states: bool = False,
               eps: float = 1e-6, autocast_kernel_dtype=None, chunk_size: int = 64, **kwargs):  # fmt: skip
        return chunkwise_kernel(
            q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size,
            cell="exp", normalize=True, custom_backward=custom_backward,
        )  # fmt: skip

    kernel.__name__ = kernel.__qualname__ = name
    grad = (
        "exact hand-written backward (docs/math.md §6), memory linear in S"
        if custom_backward
        else "backward by autodiff"
    )
    kernel.__doc__ = sequence_docstring("chunkwise", f"exp cell, {grad}") + (
        "    S need not divide by chunk_size: the last chunk is shorter.\n"
    )
    return kernel


mlstm_chunkwise__native_autograd = _make("mlstm_chunkwise__native_autograd", custom_backward=False)
mlstm_chunkwise__native_custbw = _make("mlstm_chunkwise__native_custbw", custom_backward=True)


def mlstm_siging_chunkwise__native(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                                   return_last_states=False, eps=1e-6, autocast_kernel_dtype=None, chunk_size=64,
                                   normalize: bool = True, custom_backward: bool = True, **kwargs):  # fmt: skip
    """The sig cell (docs/math.md §2) in chunkwise form; returns h and, on request, (C, n)."""
    return chunkwise_kernel(
        q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps, chunk_size,
        cell="sig", normalize=normalize, custom_backward=custom_backward,
    )  # fmt: skip


registry = {
    "native_autograd": mlstm_chunkwise__native_autograd,
    "native_custbw": mlstm_chunkwise__native_custbw,
}
