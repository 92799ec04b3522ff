"""Import a generated module from its file (Triton's @jit needs real source files; we never exec a string)."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from types import ModuleType

from . import interpreter_compat, paths
from .variants import Variant


@cache
def load_variant(variant: Variant) -> ModuleType:
    """The generated module of ``variant``, imported once per process from generated/<name>.py."""
    path = paths.generated_dir() / f"{variant.name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `mlstm-tune render` to regenerate generated/")
    interpreter_compat.install()  # under TRITON_INTERPRET=1 with numpy >= 2.4
    module_name = f"autotune._generated.{variant.name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
