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


get_available_mlstm_kernels = _registry.REGISTRY.available_kernels
get_mlstm_kernel = _registry.REGISTRY.kernel
get_available_mlstm_step_kernels = _registry.REGISTRY.available_step_kernels
get_mlstm_step_kernel = _registry.REGISTRY.step_kernel
get_available_mlstm_sequence_kernels = _registry.REGISTRY.available_sequence_kernels
get_mlstm_sequence_kernel = _registry.REGISTRY.sequence_kernel
