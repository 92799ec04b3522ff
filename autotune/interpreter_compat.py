"""Triton's interpreter (``TRITON_INTERPRET=1``, how the kernels run without a GPU): two changes, both made by
``install`` and only where the interpreter is the one they were written for.

- numpy 2.4 or newer. Triton 3.6's interpreter turns a scalar tensor into a Python int (a run-time loop bound:
  ``range(0, n)``) with ``int(array)`` on a one-element array, which numpy 2.4 no longer accepts (numpy 2.3 warns).
  The conversion takes the element instead, where the interpreter still has the old conversion and numpy refuses
  it; the interpreter patches and restores ``tl.tensor`` around every kernel call, and this runs inside that
  patching.
- Speed. The interpreter maps ``triton.language`` onto numpy once per kernel launch (``_patch_lang``, undone when
  the launch ends) and again at every call of a ``@triton.jit`` helper inside it, each time walking every member
  of the language's modules (about 2 ms). The generated kernels call a dozen helpers per program, so a fifth of an
  interpreted launch went to that. Inside a launch, a helper whose language modules the launch (or an earlier
  helper) already mapped skips the walk: the mapping it would make is the one in place (the same builder). A helper
  seeing another module (``triton.language.core``, as ``tl.sigmoid``'s does) still maps it.
"""

from __future__ import annotations

import inspect
import os
import sys

_OLD_CONVERSION = "int(self.handle.data)"


def install() -> bool:
    """Make both changes where they apply; return whether the numpy fix is in place. Idempotent."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    _map_language_once_per_launch()
    return _fix_int_conversion()


def _map_language_once_per_launch() -> bool:
    """The speed change of the module docstring; whether it is in place."""
    import triton.language as tl
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang", None)
    if original is None or getattr(original, "mlstm_autotune_once", False):
        return original is not None
    try:  # the two callers it was written for: the launch (undone after it) and the helper call (never undone)
        launch = inspect.getsource(interpreter.GridExecutor.__call__)
        helper = inspect.getsource(interpreter.InterpretedFunction.__call__)
    except (AttributeError, OSError, TypeError):
        return False
    if "patch_scope = _patch_lang(self.fn)" not in launch or "_patch_lang(self.fn)" not in helper:
        return False
    mapped: set[int] = set()  # the language modules mapped by the launch in progress (ids)

    class _Nothing:
        def restore(self) -> None:
            pass

    def languages(fn) -> set[int]:
        return {id(value) for value in fn.__globals__.values() if value is tl or value is tl.core}

    def patch_lang(fn):
        if not isinstance(sys._getframe(1).f_locals.get("self"), interpreter.GridExecutor):  # a helper's call
            wanted = languages(fn)
            if mapped and wanted <= mapped:
                return _Nothing()
            mapped.update(wanted)
            return original(fn)
        scope = original(fn)  # a launch: map, and forget the record when the launch undoes its mapping
        mapped.clear()
        mapped.update(languages(fn))
        restore = scope.restore

        def undo() -> None:
            mapped.clear()
            restore()

        scope.restore = undo
        return scope

    patch_lang.mlstm_autotune_once = True
    interpreter._patch_lang = patch_lang
    return True


def _fix_int_conversion() -> bool:
    """The numpy change of the module docstring, if needed; whether it is in place."""
    import numpy as np

    try:
        int(np.ones(1, dtype=np.int32))
        return False  # this numpy still converts one-element arrays
    except TypeError:
        pass
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "mlstm_autotune_fix", False):
        return patch is not None
    try:
        if _OLD_CONVERSION not in inspect.getsource(patch):
            return False  # a Triton that converts some other way
    except (OSError, TypeError):
        return False

    def patch_lang_tensor(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.mlstm_autotune_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
