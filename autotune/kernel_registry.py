"""The kernel registries behind ``autotune.torch.get_*`` and ``autotune.jax.get_*``: names, lookup with helpful
errors, and each entry's cell. Each framework package holds one ``KernelRegistry``.

Names follow the upstream library: sequence kernels are ``"<form>--<backend>"`` (form: chunkwise | parallel), step
kernels and sequence-loop kernels are plain names. Kernels whose backend name contains ``siging`` compute the sig
cell (docs/math.md §2) and return last states ``(C, n)``; all others compute the exp cell and return ``(C, n, m)``.
"""

from __future__ import annotations

from collections.abc import Callable


def _unknown(kind: str, name, known: list[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; available: {', '.join(known)}")


class KernelRegistry:
    """Sequence kernels by form and backend, step kernels and sequence-loop kernels by name."""

    def __init__(self, sequence: dict[str, dict[str, Callable]], step: dict[str, Callable],
                 sequence_loop: dict[str, Callable], wrap_sequence: Callable = lambda fn: fn):  # fmt: skip
        """``wrap_sequence``: applied to every chunkwise and parallel kernel as it is registered (PyTorch's adds
        ``cu_seqlens``, autotune.torch.packed)."""
        self._wrap = wrap_sequence
        self._sequence = {form: {b: wrap_sequence(fn) for b, fn in backends.items()}
                          for form, backends in sequence.items()}  # fmt: skip
        self._step = dict(step)
        self._sequence_loop = dict(sequence_loop)

    def available_kernels(self) -> list[str]:
        """Names of the chunkwise and parallel kernels (training and prefill), as ``"<form>--<backend>"``."""
        return [f"{form}--{backend}" for form, backends in self._sequence.items() for backend in backends]

    def kernel(self, name: str) -> Callable:
        """The chunkwise or parallel kernel called ``name`` (e.g. ``"chunkwise--native_custbw"``)."""
        if not isinstance(name, str) or name.count("--") != 1:
            raise _unknown("mLSTM kernel (expected '<form>--<backend>')", name, self.available_kernels())
        form, backend = name.split("--")
        if form not in self._sequence or backend not in self._sequence[form]:
            raise _unknown("mLSTM kernel", name, self.available_kernels())
        return self._sequence[form][backend]

    def available_step_kernels(self) -> list[str]:
        """Names of the step kernels (one token, for generation)."""
        return list(self._step)

    def step_kernel(self, name: str) -> Callable:
        """The step kernel called ``name`` (e.g. ``"native"``)."""
        if not isinstance(name, str) or name not in self._step:
            raise _unknown("mLSTM step kernel", name, self.available_step_kernels())
        return self._step[name]

    def available_sequence_kernels(self) -> list[str]:
        """Names of the recurrent sequence kernels (any sequence length, step by step)."""
        return list(self._sequence_loop)

    def sequence_kernel(self, name: str) -> Callable:
        """The recurrent sequence kernel called ``name`` (e.g. ``"native_sequence__native"``)."""
        if not isinstance(name, str) or name not in self._sequence_loop:
            raise _unknown("mLSTM sequence kernel", name, self.available_sequence_kernels())
        return self._sequence_loop[name]

    def kernel_cell(self, name: str) -> str:
        """'sig' for the sigmoid-input-gate kernels (backend name contains 'siging'), else 'exp'."""
        self.kernel(name)  # raises for unknown names
        return "sig" if "siging" in name else "exp"

    def register_kernel(self, form: str, backend: str, fn: Callable) -> None:
        """Add a sequence kernel ``"<form>--<backend>"`` (used by the generated-kernel packages)."""
        if form not in self._sequence:
            raise ValueError(f"unknown kernel form {form!r}; known: {', '.join(self._sequence)}")
        self._sequence[form][backend] = self._wrap(fn)

    def register_step_kernel(self, name: str, fn: Callable) -> None:
        self._step[name] = fn

    def register_sequence_kernel(self, name: str, fn: Callable) -> None:
        self._sequence_loop[name] = fn
