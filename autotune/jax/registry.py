"""The JAX kernel registry (autotune/kernel_registry.py): the native JAX kernels, and the generated-kernel entries
that autotune/jax/triton_kernels.py registers on import."""

from __future__ import annotations

import functools

from ..checks import MLSTMInputError
from ..kernel_registry import KernelRegistry
from .native import chunkwise as _native_chunkwise
from .native import parallel as _native_parallel
from .native import recurrent as _native_recurrent


def _not_packed(kernel):
    """``kernel``, refusing ``cu_seqlens`` (which its ``**kwargs`` would otherwise swallow): packed sequences are
    autotune.torch's (autotune/torch/packed.py)."""

    @functools.wraps(kernel)
    def run(*args, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
        if cu_seqlens is not None or cu_seqlens_cpu is not None:
            raise MLSTMInputError("autotune.jax kernels do not take cu_seqlens (packed sequences): autotune.torch's do")
        return kernel(*args, **kwargs)

    return run


REGISTRY = KernelRegistry(
    sequence={"chunkwise": _native_chunkwise.registry, "parallel": _native_parallel.registry},
    step=_native_recurrent.step_registry,
    sequence_loop=_native_recurrent.sequence_registry,
    wrap_sequence=_not_packed,
)
