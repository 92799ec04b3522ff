"""Adapter kernels: a generated kernel with its parameters in the order jax-triton passes them.

jax-triton calls a kernel with the input arrays and scalars first, then one pointer per output; the generated
kernels interleave inputs, outputs and scalars, and may take one buffer in several parameters (a dummy pointer).
An adapter is a small ``@triton.jit`` function with the parameters (in0.., scalar0.., out0.., constexprs) that calls
the kernel with each of its parameters bound to one of them; Triton inlines the call, so the adapter compiles to the
kernel itself. Adapters are written as source files (Triton compiles from source) under
``$MLSTM_AUTOTUNE_ADAPTER_DIR`` (default ``~/.cache/mlstm-autotune/adapters``), one per kernel and layout, named by
the hash of their text, and can be read there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """How an adapter binds its kernel's parameters: ``params`` holds (name, source, index) per kernel parameter,
    source one of "in", "out", "scalar" (indexes into the adapter's own parameters), "none" (the value None) or
    "constexpr" (the adapter's constexpr of that name)."""

    inputs: int
    scalars: int
    outputs: int
    params: tuple[tuple[str, str, int], ...]
    constexprs: tuple[str, ...]


def adapter_dir() -> Path:
    base = os.environ.get("MLSTM_AUTOTUNE_ADAPTER_DIR")
    if base:
        return Path(base)
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "mlstm-autotune" / "adapters"


def adapter_source(kernel, layout: Layout) -> str:
    """The text of the adapter of ``kernel`` (a @triton.jit function of an importable module) for ``layout``."""
    fn = kernel.fn
    name = f"{fn.__name__}__outputs_last"
    params = [f"in{j}" for j in range(layout.inputs)] + [f"scalar{j}" for j in range(layout.scalars)]
    params += [f"out{j}" for j in range(layout.outputs)] + [f"{c}: tl.constexpr" for c in layout.constexprs]
    binds = []
    for pname, source, index in layout.params:
        value = {"in": f"in{index}", "out": f"out{index}", "scalar": f"scalar{index}", "none": "None",
                 "constexpr": pname}[source]  # fmt: skip
        binds.append(f"        {pname}={value},")
    lines = [
        "# Written by autotune.launch.adapters. Do not edit; the file name is the hash of this text.",
        f"# {fn.__module__}.{fn.__name__}",
        "# with its parameters in jax-triton's order: inputs, scalars, outputs, constexprs.",
        "import sys",
        "",
        "import triton",
        "import triton.language as tl",
        "",
        f"kernel = sys.modules[{fn.__module__!r}].{fn.__name__}",
        "",
        "",
        "@triton.jit",
        f"def {name}(",
        *(f"    {p}," for p in params),
        "):",
        "    kernel(",
        *binds,
        "    )",
        "",
    ]
    return "\n".join(lines)


@cache
def adapter(kernel, layout: Layout):
    """The adapter of ``kernel`` for ``layout``: a Triton kernel (written once per text, imported once per
    process)."""
    source = adapter_source(kernel, layout)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = adapter_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kernel.fn.__name__}__{digest}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)  # atomic: another process may write the same file
    module_name = f"autotune._adapters.{path.stem}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(module, f"{kernel.fn.__name__}__outputs_last")
