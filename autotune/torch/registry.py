"""The PyTorch kernel registry (autotune/kernel_registry.py): the native kernels, and the generated-kernel entries
that autotune/torch/triton_kernels.py registers on import. The module-level names are the registry's methods."""

from __future__ import annotations

from ..kernel_registry import KernelRegistry
from .native import chunkwise as _native_chunkwise
from .native import parallel as _native_parallel
from .native import recurrent as _native_recurrent
from .packed import packable

REGISTRY = KernelRegistry(
    sequence={"chunkwise": _native_chunkwise.registry, "parallel": _native_parallel.registry},
    step=_native_recurrent.step_registry,
    sequence_loop=_native_recurrent.sequence_registry,
    wrap_sequence=packable,  # every chunkwise and parallel kernel takes cu_seqlens (autotune/torch/packed.py)
)

available_kernels = REGISTRY.available_kernels
kernel = REGISTRY.kernel
available_step_kernels = REGISTRY.available_step_kernels
step_kernel = REGISTRY.step_kernel
available_sequence_kernels = REGISTRY.available_sequence_kernels
sequence_kernel = REGISTRY.sequence_kernel
kernel_cell = REGISTRY.kernel_cell
register_kernel = REGISTRY.register_kernel
register_step_kernel = REGISTRY.register_step_kernel
register_sequence_kernel = REGISTRY.register_sequence_kernel
