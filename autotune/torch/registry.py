"""The kernel registries behind ``autotune.torch.get_*``: names, lookup with helpful errors, and each entry's cell.

Names follow the upstream library: sequence kernels are ``"<form>--<backend>"`` (form: chunkwise | parallel), step
kernels and sequence-loop kernels are plain names. Kernels whose backend name contains ``siging`` compute the sig
cell (docs/math.md §2) and return last states ``(C, n)``; all others compute the exp cell and return ``(C, n, m)``.
"""

from __future__ import annotations

from collections.abc import Callable

from .native import chunkwise as _native_chunkwise
from .native import parallel as _native_parallel
from .native import recurrent as _native_recurrent

_SEQUENCE_KERNELS: dict[str, dict[str, Callable]] = {
    "chunkwise": dict(_native_chunkwise.registry),
    "parallel": dict(_native_parallel.registry),
}
_STEP_KERNELS: dict[str, Callable] = dict(_native_recurrent.step_registry)
_SEQUENCE_LOOP_KERNELS: dict[str, Callable] = dict(_native_recurrent.sequence_registry)


def _unknown(kind: str, name, known: list[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; available: {', '.join(known)}")


def available_kernels() -> list[str]:
    return [f"{form}--{backend}" for form, backends in _SEQUENCE_KERNELS.items() for backend in backends]


def kernel(name: str) -> Callable:
    if not isinstance(name, str) or name.count("--") != 1:
        raise _unknown("mLSTM kernel (expected '<form>--<backend>')", name, available_kernels())
    form, backend = name.split("--")
    if form not in _SEQUENCE_KERNELS or backend not in _SEQUENCE_KERNELS[form]:
        raise _unknown("mLSTM kernel", name, available_kernels())
    return _SEQUENCE_KERNELS[form][backend]


def available_step_kernels() -> list[str]:
    return list(_STEP_KERNELS)


def step_kernel(name: str) -> Callable:
    if not isinstance(name, str) or name not in _STEP_KERNELS:
        raise _unknown("mLSTM step kernel", name, available_step_kernels())
    return _STEP_KERNELS[name]


def available_sequence_kernels() -> list[str]:
    return list(_SEQUENCE_LOOP_KERNELS)


def sequence_kernel(name: str) -> Callable:
    if not isinstance(name, str) or name not in _SEQUENCE_LOOP_KERNELS:
        raise _unknown("mLSTM sequence kernel", name, available_sequence_kernels())
    return _SEQUENCE_LOOP_KERNELS[name]


def kernel_cell(name: str) -> str:
    """'sig' for the sigmoid-input-gate kernels (backend name contains 'siging'), else 'exp'."""
    kernel(name)  # raises for unknown names
    return "sig" if "siging" in name else "exp"


def register_kernel(form: str, backend: str, fn: Callable) -> None:
    """Add a sequence kernel ``"<form>--<backend>"`` (used by the generated-kernel packages)."""
    if form not in _SEQUENCE_KERNELS:
        raise ValueError(f"unknown kernel form {form!r}; known: {', '.join(_SEQUENCE_KERNELS)}")
    _SEQUENCE_KERNELS[form][backend] = fn


def register_step_kernel(name: str, fn: Callable) -> None:
    _STEP_KERNELS[name] = fn


def register_sequence_kernel(name: str, fn: Callable) -> None:
    _SEQUENCE_LOOP_KERNELS[name] = fn
