"""The PyTorch operations a recorded launcher performs besides kernel launches (autotune/launch/trace.py Op events:
float64 arithmetic on per-head values, strided views of results), written with jax.numpy.

Each entry takes the recorded arguments (arrays where the launcher had tensors) and returns what the aten overload
returns. An operation missing here raises TraceError naming it when a trace that needs it is replayed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch

from ..launch.trace import TraceError

DTYPES = {
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
    torch.float32: jnp.float32,
    torch.float64: jnp.float64,
    torch.int32: jnp.int32,
    torch.int64: jnp.int64,
    torch.bool: jnp.bool_,
}


def jnp_dtype(dtype: torch.dtype):
    return DTYPES[dtype]


def _axis(a, dim: int) -> int:
    return dim % a.ndim


def _sum(a, dim=None, keepdim=False, dtype=None):
    axes = None if dim is None else tuple(_axis(a, d) for d in dim)
    return jnp.sum(a, axis=axes, keepdims=keepdim, dtype=None if dtype is None else DTYPES[dtype])


def _select(a, dim, index):
    axis = _axis(a, dim)
    return jax.lax.index_in_dim(a, index % a.shape[axis], axis, keepdims=False)


def _slice(a, dim=0, start=None, end=None, step=1):
    axis = _axis(a, dim)
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, end, step)
    return a[tuple(index)]


def _to_copy(a, dtype=None, **_):
    return a if dtype is None else a.astype(DTYPES[dtype])


OPS = {
    "mul.Tensor": lambda a, b: jnp.multiply(a, b),
    "mul.Scalar": lambda a, b: jnp.multiply(a, b),
    "add.Tensor": lambda a, b, alpha=1: a + alpha * b,
    "sub.Tensor": lambda a, b, alpha=1: a - alpha * b,
    "div.Tensor": lambda a, b: jnp.divide(a, b),
    "neg.default": jnp.negative,
    "exp.default": jnp.exp,
    "log.default": jnp.log,
    "maximum.default": jnp.maximum,
    "minimum.default": jnp.minimum,
    "where.self": jnp.where,
    "sum.dim_IntList": _sum,
    "sum.default": lambda a, dtype=None: _sum(a, None, False, dtype),
    "cumprod.default": lambda a, dim, dtype=None: jnp.cumprod(a, axis=_axis(a, dim)),
    "cumsum.default": lambda a, dim, dtype=None: jnp.cumsum(a, axis=_axis(a, dim)),
    "cat.default": lambda tensors, dim=0: jnp.concatenate(tensors, axis=_axis(tensors[0], dim)),
    "select.int": _select,
    "slice.Tensor": _slice,
    "clone.default": lambda a, memory_format=None: a,
    "_to_copy.default": _to_copy,
    "log_sigmoid_forward.default": lambda a: (jax.nn.log_sigmoid(a), jnp.zeros((0,), a.dtype)),
    "unsqueeze.default": lambda a, dim: jnp.expand_dims(a, dim % (a.ndim + 1)),
    "squeeze.dim": lambda a, dim: jnp.squeeze(a, _axis(a, dim)) if a.shape[_axis(a, dim)] == 1 else a,
    "permute.default": lambda a, dims: jnp.transpose(a, dims),
    "transpose.int": lambda a, d0, d1: jnp.swapaxes(a, d0, d1),
    "expand.default": lambda a, size, implicit=False: jnp.broadcast_to(
        a, tuple(a.shape[i - (len(size) - a.ndim)] if s == -1 else s for i, s in enumerate(size))
    ),
}


def run(func, args, kwargs):
    """The aten overload ``func`` on JAX arrays (float64 allowed whatever jax_enable_x64 says: the launchers keep
    cancelling differences of dot products in float64)."""
    name = f"{func.overloadpacket.__name__}.{func._overloadname}"
    impl = OPS.get(name)
    if impl is None:
        raise TraceError(f"replaying with JAX has no rule for aten.{name} (autotune/jax/aten.py)")
    with jax.enable_x64(True):
        return impl(*args, **kwargs)
