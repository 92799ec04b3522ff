"""The public JAX API: the names and signatures of ``autotune.torch``, on ``jax.Array`` inputs.

    get_available_mlstm_kernels() / get_mlstm_kernel(name)                   chunkwise and parallel kernels
    get_available_mlstm_step_kernels() / get_mlstm_step_kernel(name)         one-token step kernels
    get_available_mlstm_sequence_kernels() / get_mlstm_sequence_kernel(name) recurrent whole-sequence kernels
    autotune.jax.backend_module.{mLSTMBackendConfig, mLSTMBackend}          the Flax module for model code

Sequence interface: ``fn(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
eps=1e-6, autocast_kernel_dtype=None, chunk_size=64, **kwargs)``; step interface:
``fn(q, k, v, i, f, c, n, m, eps=1e-6, **kwargs) -> (h, (c, n, m))``. Every kernel works under ``jax.jit`` and
``jax.grad`` (the step kernels under ``jax.jit``). Unknown names raise ValueError listing the known ones; invalid
inputs raise ``MLSTMInputError`` (a ValueError), at trace time under ``jax.jit``.

Needs the ``jax`` extra: ``pip install 'mlstm-autotune[jax]'``; ``import autotune`` itself never imports JAX.
"""

from __future__ import annotations

from collections.abc import Callable

from .extra import require

require("jax", "autotune.jax")

from ..checks import MLSTMInputError  # noqa: E402
from . import registry as _registry  # noqa: E402
from . import triton_kernels as _triton_kernels  # noqa: E402, F401  (registers the generated-kernel entries)

__all__ = [
    "MLSTMInputError",
    "get_available_mlstm_kernels",
    "get_mlstm_kernel",
    "get_available_mlstm_step_kernels",
    "get_mlstm_step_kernel",
    "get_available_mlstm_sequence_kernels",
    "get_mlstm_sequence_kernel",
]


def get_available_mlstm_kernels() -> list[str]:
    """Names of the chunkwise and parallel kernels (training and prefill), as ``"<form>--<backend>"``."""
    return _registry.available_kernels()


def get_mlstm_kernel(name: str) -> Callable:
    """The chunkwise or parallel kernel called ``name`` (e.g. ``"chunkwise--native_custbw"``)."""
    return _registry.kernel(name)


def get_available_mlstm_step_kernels() -> list[str]:
    """Names of the step kernels (one token, for generation)."""
    return _registry.available_step_kernels()


def get_mlstm_step_kernel(name: str) -> Callable:
    """The step kernel called ``name`` (e.g. ``"native"``)."""
    return _registry.step_kernel(name)


def get_available_mlstm_sequence_kernels() -> list[str]:
    """Names of the recurrent sequence kernels (any sequence length, step by step)."""
    return _registry.available_sequence_kernels()


def get_mlstm_sequence_kernel(name: str) -> Callable:
    """The recurrent sequence kernel called ``name`` (e.g. ``"native_sequence__native"``)."""
    return _registry.sequence_kernel(name)
