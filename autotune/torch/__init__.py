"""The public PyTorch API, compatible with the upstream ``mlstm_kernels.torch`` module.

    get_available_mlstm_kernels() / get_mlstm_kernel(name)                   chunkwise and parallel kernels
    get_available_mlstm_step_kernels() / get_mlstm_step_kernel(name)         one-token step kernels
    get_available_mlstm_sequence_kernels() / get_mlstm_sequence_kernel(name) recurrent whole-sequence kernels
    autotune.torch.backend_module.{mLSTMBackendConfig, mLSTMBackend}        the nn.Module for model code

Sequence interface: ``fn(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
eps=1e-6, autocast_kernel_dtype=torch.bfloat16, chunk_size=64, **kwargs)``; step interface:
``fn(q, k, v, i, f, c, n, m, eps=1e-6, **kwargs) -> (h, (c, n, m))``. Unknown names raise ValueError listing the
known ones; invalid inputs raise ``MLSTMInputError`` (a ValueError).
"""

from __future__ import annotations

from ..checks import MLSTMInputError
from . import registry as _registry
from . import triton_kernels as _triton_kernels  # noqa: F401  (registers the generated-kernel entries)

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
