"""Native JAX recurrent mLSTM kernels for inference: one step (docs/math.md §5), and a whole sequence by
``lax.scan`` over the steps.

    mlstm_recurrent_step__native       step interface: (q, k, v, i, f, c, n, m, eps) -> (h, (c, n, m))
    mlstm_recurrent_sequence__native   sequence interface; scans the step over S (any S >= 1)

The JAX twin of autotune/torch/native/recurrent.py. C and n are kept in ``dtype_state`` (float32 by default;
float64 when an input is float64), m in at least float32. JAX arrays are immutable: where the PyTorch step writes
into the caller's buffers (``inplace=True``), a JAX caller donates the state to ``jax.jit`` instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ...checks import MLSTMInputError, check_cell, check_eps, check_sequence_inputs, check_step_inputs
from ..checks import JAX, compute_dtype, max_state_dtype, state_dtype


def _step(q, k, v, i, f, C, n, m, *, cell: str, normalize: bool, eps: float, dtype):
    """One step in ``dtype``: q, k (B, NH, DHQK), v (B, NH, DHHV), i, f (B, NH, 1), C, n, m in any float dtype."""
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    i, f = i.astype(dtype).reshape(*q.shape[:2], 1), f.astype(dtype).reshape(*q.shape[:2], 1)
    C, n = C.astype(dtype), n.astype(dtype)
    if cell == "exp":
        m = m.astype(dtype).reshape(*q.shape[:2], 1)
        log_f = jax.nn.log_sigmoid(f)
        m_new = jnp.maximum(log_f + m, i)
        decay, weight = jnp.exp(log_f + m - m_new), jnp.exp(i - m_new)
    else:
        m_new, decay, weight = m, jax.nn.sigmoid(f), jax.nn.sigmoid(i)
    C_new = decay[..., None] * C + (k * weight)[..., :, None] * v[..., None, :]  # rank-1 update i' k v^T
    n_new = decay * n + k * weight
    q_s = q * q.shape[-1] ** -0.5
    num = jnp.einsum("bhkv,bhk->bhv", C_new, q_s)
    dot = jnp.einsum("bhk,bhk->bh", n_new, q_s)[..., None]
    if cell == "exp":
        h = num / (jnp.maximum(jnp.abs(dot), jnp.exp(-m_new)) + eps)
    elif normalize:
        h = num / (jnp.maximum(jnp.abs(dot), 1.0) + eps)
    else:
        h = num
    return h, C_new, n_new, m_new


@functools.partial(jax.jit, static_argnames=("cell", "normalize", "eps", "dtype", "state_dt"))
def _step_jit(q, k, v, i, f, C, n, m, *, cell, normalize, eps, dtype, state_dt):
    h, C, n, m = _step(q, k, v, i, f, C, n, m, cell=cell, normalize=normalize, eps=eps, dtype=dtype)
    m = m.astype(max_state_dtype(state_dt)) if cell == "exp" else m
    return h.astype(q.dtype), C.astype(state_dt), n.astype(state_dt), m


def mlstm_recurrent_step__native(q, k, v, i, f, c, n, m, eps: float = 1e-6, dtype_state=jnp.float32,
                                 cell: str = "exp", normalize: bool = True, inplace: bool = False,
                                 **kwargs):  # fmt: skip
    """One mLSTM step. q, k: (B, NH, DHQK); v: (B, NH, DHHV); i, f: (B, NH, 1) or (B, NH); state c
    (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1), or all None for the zero state. Returns h (B, NH, DHHV) in
    q's dtype and the new state, C and n in ``dtype_state``, m in at least float32. ``cell="sig"`` runs
    docs/math.md §2 (m is passed through unchanged)."""
    if inplace:
        raise MLSTMInputError("inplace=True is a PyTorch option: JAX arrays are immutable (donate the state to jit)")
    check_cell(cell, normalize)
    check_eps(eps)
    dims = check_step_inputs(q, k, v, i, f, c, n, m if cell == "exp" else None, cell=cell, kind=JAX)
    dtype = compute_dtype(q, i, c)
    if c is None:
        c = jnp.zeros((dims.B, dims.NH, dims.DHQK, dims.DHHV), dtype)
        n = jnp.zeros((dims.B, dims.NH, dims.DHQK), dtype)
        m = jnp.zeros((dims.B, dims.NH, 1), dtype) if cell == "exp" else m
    state_dt = state_dtype(dtype_state, q, i, c)
    h, C, n, m = _step_jit(
        q, k, v, i, f, c, n, m, cell=cell, normalize=normalize, eps=float(eps), dtype=dtype, state_dt=state_dt
    )
    return h, (C, n, m)


@functools.partial(jax.jit, static_argnames=("cell", "normalize", "eps", "dtype", "state_dt"))
def _scan_steps(q, k, v, i, f, C, n, m, *, cell, normalize, eps, dtype, state_dt):
    m_dt = max_state_dtype(state_dt)

    def one(state, x):
        h, C, n, m = _step(*x, *state, cell=cell, normalize=normalize, eps=eps, dtype=dtype)
        return (C.astype(state_dt), n.astype(state_dt), m.astype(m_dt)), h

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, i, f))  # time first
    (C, n, m), h = jax.lax.scan(one, (C.astype(state_dt), n.astype(state_dt), m.astype(m_dt)), xs)
    return jnp.moveaxis(h, 0, 2).astype(q.dtype), (C, n, m)


def mlstm_recurrent_sequence__native(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                                     return_last_states: bool = False, eps: float = 1e-6, dtype_state=jnp.float32,
                                     cell: str = "exp", normalize: bool = True, **kwargs):  # fmt: skip
    """The recurrent form over a whole sequence, the native step scanned over S (any S >= 1; differentiable by
    autodiff). Shapes as the chunkwise interface; returns h (B, NH, S, DHHV) in q's dtype and, on request, the last
    state, C and n in ``dtype_state``: (C, n, m) for the exp cell, (C, n) for the sig cell."""
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None
    dims = check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, kind=JAX)
    state_dt = state_dtype(dtype_state, q, i, c_initial)
    B, NH = dims.B, dims.NH
    C = c_initial if c_initial is not None else jnp.zeros((B, NH, dims.DHQK, dims.DHHV), state_dt)
    n = n_initial if n_initial is not None else jnp.zeros((B, NH, dims.DHQK), state_dt)
    m = m_initial.reshape(B, NH, 1) if m_initial is not None else jnp.zeros((B, NH, 1), state_dt)
    dtype = compute_dtype(q, i, c_initial)
    h, (C, n, m) = _scan_steps(q, k, v, i, f, C, n, m, cell=cell, normalize=normalize, eps=float(eps), dtype=dtype,
                               state_dt=state_dt)  # fmt: skip
    if not return_last_states:
        return h
    return h, ((C, n, m) if cell == "exp" else (C, n))


step_registry = {"native": mlstm_recurrent_step__native}
sequence_registry = {"native_sequence__native": mlstm_recurrent_sequence__native}
