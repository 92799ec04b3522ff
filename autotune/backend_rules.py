"""The rules of a backend-module configuration, shared by the PyTorch module (autotune/torch/backend_module.py) and
the Flax module (autotune/jax/backend_module.py): kernel names that exist in the framework's registry, the mode, the
chunk size, the flags, the dtypes and eps. Any violation raises ValueError naming the field."""

from __future__ import annotations

import math

MODES = ("train", "train_with_padding", "inference")


def check_backend_config(config, registry, dtype_of) -> None:
    """``registry``: the framework's KernelRegistry; ``dtype_of(field, value)`` raises ValueError for a dtype the
    framework does not take."""
    for field, lookup in (
        ("chunkwise_kernel", registry.kernel),
        ("sequence_kernel", registry.sequence_kernel),
        ("step_kernel", registry.step_kernel),
    ):
        try:
            lookup(getattr(config, field))
        except ValueError as err:
            raise ValueError(f"mLSTMBackendConfig.{field}: {err}") from None
    check_mode(config.mode)
    if not isinstance(config.chunk_size, int) or isinstance(config.chunk_size, bool) or config.chunk_size < 1:
        raise ValueError(f"mLSTMBackendConfig.chunk_size must be an int >= 1, got {config.chunk_size!r}")
    for flag in ("return_last_states", "normalize_siging"):
        if not isinstance(getattr(config, flag), bool):
            raise ValueError(f"mLSTMBackendConfig.{flag} must be a bool, got {getattr(config, flag)!r}")
    dtype_of("autocast_kernel_dtype", config.autocast_kernel_dtype)
    dtype_of("inference_state_dtype", config.inference_state_dtype)
    bad_eps = isinstance(config.eps, bool) or not isinstance(config.eps, (int, float))
    if bad_eps or not math.isfinite(config.eps) or config.eps < 0:
        raise ValueError(f"mLSTMBackendConfig.eps must be a finite float >= 0, got {config.eps!r}")


def check_mode(mode, what: str = "mLSTMBackendConfig.mode") -> None:
    if mode not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(MODES)}, got {mode!r}")
