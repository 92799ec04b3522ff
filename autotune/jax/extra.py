"""Imports of the optional JAX packages, each failing with an error that names the extra that installs it."""

from __future__ import annotations

import importlib

INSTALL = "pip install 'mlstm-autotune[jax]'"


def require(module: str, what: str):
    """Import ``module`` or raise ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module and not module.startswith(f"{err.name}."):
            raise  # the package is there; something it imports is not
        raise ImportError(f"{what} needs the package {module!r}, which is not installed: {INSTALL}") from err
    except ImportError as err:  # installed, but it cannot load here (jax-triton without a GPU build of JAX)
        raise ImportError(
            f"{what} needs the package {module!r}, which cannot be imported here ({err}); it comes "
            f"with {INSTALL} and needs a GPU build of JAX"
        ) from err
