"""Input checks for the JAX kernels: the rules of autotune/checks.py applied to ``jax.Array`` inputs.

Shapes and dtypes are static under ``jax.jit``, so every check runs at trace time as well as eagerly. Placement is
left to JAX (it moves or rejects arrays itself), and MLSTM_AUTOTUNE_CHECK_FINITE looks at concrete arrays only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..checks import ArrayKind, MLSTMInputError

FLOAT_DTYPES = tuple(jnp.dtype(d) for d in ("float16", "bfloat16", "float32", "float64"))


def _all_finite(x) -> bool:
    if isinstance(x, jax.core.Tracer):
        return True  # values are unknown while tracing
    return bool(jnp.isfinite(x).all())


JAX = ArrayKind(
    type_name="jax.Array",
    is_array=lambda x: isinstance(x, jax.Array),
    float_dtypes=FLOAT_DTYPES,
    device_of=None,
    all_finite=_all_finite,
)


def compute_dtype(*arrays) -> jnp.dtype:
    """float64 if any input is float64 (only possible with jax_enable_x64), else float32: the dtype the native
    kernels compute and keep states in."""
    f64 = jnp.dtype("float64")
    return f64 if any(x is not None and x.dtype == f64 for x in arrays) else jnp.dtype("float32")


def state_dtype(dtype_state, *arrays) -> jnp.dtype:
    """The dtype recurrent kernels keep C and n in: ``dtype_state`` (float16/bfloat16/float32/float64), or float64
    whenever an input is float64."""
    try:
        dt = jnp.dtype(dtype_state)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise MLSTMInputError(f"dtype_state must be a floating dtype, got {dtype_state!r}")
    return jnp.dtype("float64") if compute_dtype(*arrays) == jnp.dtype("float64") else dt


def max_state_dtype(dtype) -> jnp.dtype:
    """The dtype of m: at least float32 (m is the log-scale of C and n; 16 bits would rescale the state by
    percents)."""
    return jnp.promote_types(dtype, jnp.float32)
