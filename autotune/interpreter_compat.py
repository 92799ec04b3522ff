"""Triton's interpreter (``TRITON_INTERPRET=1``, how the kernels run without a GPU) with numpy 2.4 or newer.

Triton 3.6's interpreter turns a scalar tensor into a Python int (a run-time loop bound: ``range(0, n)``) with
``int(array)`` on a one-element array, which numpy 2.4 no longer accepts (numpy 2.3 warns). ``install`` makes that
conversion take the element instead, only where the interpreter still has the old conversion and numpy refuses it;
the interpreter patches and restores ``tl.tensor`` around every kernel call, and this runs inside that patching.
"""

from __future__ import annotations

import inspect
import os

_OLD_CONVERSION = "int(self.handle.data)"


def install() -> bool:
    """Apply the fix if it is needed; return whether it is in place. Idempotent."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
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
