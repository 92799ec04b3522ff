"""The JAX kernel registry (autotune/kernel_registry.py): the native JAX kernels, and the generated-kernel entries
that autotune/jax/triton_kernels.py registers on import."""

from __future__ import annotations

from ..kernel_registry import KernelRegistry
from .native import chunkwise as _native_chunkwise
from .native import parallel as _native_parallel
from .native import recurrent as _native_recurrent

REGISTRY = KernelRegistry(
    sequence={"chunkwise": _native_chunkwise.registry, "parallel": _native_parallel.registry},
    step=_native_recurrent.step_registry,
    sequence_loop=_native_recurrent.sequence_registry,
)
