"""Shared plumbing of the native JAX kernels: validate, cast to the compute dtype, make default states, pack results.

The JAX twin of autotune/torch/native/common.py: the same rules, on ``jax.Array`` inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ...checks import Dims, check_cell, check_eps, check_sequence_inputs
from ..checks import JAX, compute_dtype


class Prepared(NamedTuple):
    """Inputs in the compute dtype (float32, or float64 when an input is float64), with explicit initial states
    (C0 = 0, n0 = 0, m0 = 0 where the caller gave none, docs/math.md §1)."""

    q: jnp.ndarray
    k: jnp.ndarray
    v: jnp.ndarray
    i: jnp.ndarray
    f: jnp.ndarray
    C0: jnp.ndarray  # (B, NH, DHQK, DHHV)
    n0: jnp.ndarray  # (B, NH, DHQK)
    m0: jnp.ndarray  # (B, NH, 1)
    dims: Dims
    out_dtype: jnp.dtype


def prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, *, cell: str, normalize: bool, eps) -> Prepared:
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None  # the sig cell has no max state; it is accepted and ignored
    dims = check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, kind=JAX)
    dtype = compute_dtype(q, i, c_initial)
    B, NH, DHQK, DHHV = dims.B, dims.NH, dims.DHQK, dims.DHHV
    C0 = c_initial.astype(dtype) if c_initial is not None else jnp.zeros((B, NH, DHQK, DHHV), dtype)
    n0 = n_initial.astype(dtype) if n_initial is not None else jnp.zeros((B, NH, DHQK), dtype)
    m0 = m_initial.astype(dtype).reshape(B, NH, 1) if m_initial is not None else jnp.zeros((B, NH, 1), dtype)
    cast = (x.astype(dtype) for x in (q, k, v, i, f))
    return Prepared(*cast, C0, n0, m0, dims, q.dtype)


def pack_output(h, last, cell: str, return_last_states: bool, out_dtype):
    """h in the input dtype; last states (kept in the compute dtype) as (C, n, m) for exp or (C, n) for sig."""
    h = h.astype(out_dtype)
    if not return_last_states:
        return h
    C, n, m = last
    return h, ((C, n, m) if cell == "exp" else (C, n))


def sequence_docstring(form: str, details: str) -> str:
    """The docstring of a native JAX sequence kernel."""
    return f"""Native JAX {form} mLSTM, {details}.

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHHV); i, f: (B, NH, S); optional initial states c_initial
    (B, NH, DHQK, DHHV), n_initial (B, NH, DHQK), m_initial (B, NH, 1) (exp cell). Any S >= 1 and any head dims.
    Computes in float32 (float64 for float64 inputs, with jax_enable_x64); h is returned in q's dtype, last states
    in the compute dtype. ``autocast_kernel_dtype`` is accepted for interface compatibility and not used.
    """
