"""Imports of the optional JAX packages, each failing with an error that names the extra that installs it."""

from __future__ import annotations

import importlib

INSTALL = "pip install 'mlstm-autotune[jax]'"


def require(module: str, what: str):
    """Import ``module`` or raise ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the package {module!r}, which is not installed: {INSTALL}") from err
