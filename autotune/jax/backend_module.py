"""``mLSTMBackend``: the Flax (linen) module model code calls; the JAX twin of autotune/torch/backend_module.py.

Modes:
    train               the configured chunkwise (or parallel) kernel over the whole sequence, any S >= 1
    train_with_padding  the same: the kernels take any S, so nothing needs padding (kept for compatibility with the
                        PyTorch module; last states are allowed because no padding token enters them)
    inference           always returns the last state. S == 1: the step kernel. S > 1: the chunkwise kernel over the
                        largest multiple of chunk_size, then the sequence kernel over the rest, states handed along;
                        C and n are kept in ``inference_state_dtype``, m in at least float32.
Kernels whose name contains ``siging`` compute the sig cell; the module then runs the step and sequence kernels in
the sig cell too and returns states ``(C, n)``. Invalid configurations raise ValueError at construction.

The module has no parameters: ``mLSTMBackend(config).apply({}, q, k, v, i, f)``, or as a submodule of a model.
S is static under ``jax.jit``, so which kernels run is fixed at trace time. Needs the ``jax`` extra (Flax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .extra import require

require("flax", "autotune.jax.backend_module")

import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from ..backend_rules import check_backend_config, check_mode  # noqa: E402
from ..checks import check_sequence_inputs  # noqa: E402
from . import registry  # noqa: E402
from .checks import JAX, max_state_dtype  # noqa: E402

BackendModeType = Literal["train", "train_with_padding", "inference"]
DtypeType = Literal["float32", "bfloat16", "float16"]
_DTYPES = ("float32", "bfloat16", "float16")


def _dtype(field: str, value) -> jnp.dtype:
    try:
        dt = jnp.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _DTYPES:
        raise ValueError(f"mLSTMBackendConfig.{field} must be one of {', '.join(_DTYPES)}, got {value!r}")
    return dt


@dataclass(frozen=True)
class mLSTMBackendConfig:
    chunkwise_kernel: str = "chunkwise--native_autograd"
    """The chunkwise (or parallel) kernel for training and for the bulk of a prefill
    (``autotune.jax.get_available_mlstm_kernels()``)."""
    sequence_kernel: str = "native_sequence__native"
    """The recurrent sequence kernel for the remainder of a prefill (fewer than chunk_size tokens)."""
    step_kernel: str = "native"
    """The step kernel for generation (S == 1) in inference mode."""
    mode: BackendModeType = "train"
    """train | train_with_padding | inference; ``__call__(mode=...)`` overrides it per call."""
    chunk_size: int = 64
    """The chunk size passed to the chunkwise kernel; in inference, the bulk is the largest multiple of it."""
    return_last_states: bool = True
    """Whether training modes return the last states (inference always does)."""
    autocast_kernel_dtype: DtypeType = "bfloat16"
    """The kernel compute dtype passed to the kernels (native kernels compute in float32/float64 regardless)."""
    eps: float = 1e-6
    """The eps of the denominator (docs/math.md §1)."""
    inference_state_dtype: DtypeType = "float32"
    """The dtype of C and n carried in inference mode (m stays in at least float32)."""
    normalize_siging: bool = True
    """For sig-cell kernels only: whether h is normalised (docs/math.md §2)."""

    def __post_init__(self):
        check_backend_config(self, registry.REGISTRY, _dtype)

    @property
    def cell(self) -> str:
        return registry.REGISTRY.kernel_cell(self.chunkwise_kernel)


class mLSTMBackend(nn.Module):
    """The mLSTM cell as a Flax module: ``__call__(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=None, mode=None)``. Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S);
    states C (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1). Returns h (B, NH, S, DHHV), or
    ``(h, (C, n, m))`` (``(h, (C, n))`` for the sig cell) when last states are returned."""

    config: mLSTMBackendConfig

    def __post_init__(self):
        if not isinstance(self.config, mLSTMBackendConfig):
            raise ValueError(f"config must be an mLSTMBackendConfig, got {type(self.config).__name__}")
        super().__post_init__()

    @property
    def cell(self) -> str:
        return self.config.cell

    def _cell_kwargs(self) -> dict:
        return {"normalize": self.config.normalize_siging} if self.cell == "sig" else {}

    def __call__(self, q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                 return_last_states: bool | None = None, mode: BackendModeType | None = None):  # fmt: skip
        mode = self.config.mode if mode is None else mode
        check_mode(mode, "mode")
        if self.cell == "sig":
            m_initial = None
        check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=self.cell, kind=JAX)
        if mode == "inference":
            return self._inference(q, k, v, i, f, c_initial, n_initial, m_initial)
        if return_last_states is None:
            return_last_states = self.config.return_last_states
        return registry.REGISTRY.kernel(self.config.chunkwise_kernel)(
            q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
            return_last_states=return_last_states, eps=self.config.eps,
            autocast_kernel_dtype=_dtype("autocast_kernel_dtype", self.config.autocast_kernel_dtype),
            chunk_size=self.config.chunk_size, **self._cell_kwargs(),
        )  # fmt: skip

    def _inference(self, q, k, v, i, f, c, n, m):
        cfg = self.config
        S, L = q.shape[2], cfg.chunk_size
        state_dtype = _dtype("inference_state_dtype", cfg.inference_state_dtype)
        cell_kw = dict(self._cell_kwargs(), cell=self.cell)
        if S == 1:
            h, (c, n, m) = registry.REGISTRY.step_kernel(cfg.step_kernel)(
                q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0:1], f[:, :, 0:1], c, n, m,
                eps=cfg.eps, dtype_state=state_dtype, **cell_kw,
            )  # fmt: skip
            return h[:, :, None], self._pack(*self._cast(c, n, m, state_dtype))
        bulk = (S // L) * L
        hs = []
        if bulk > 0:
            h, states = registry.REGISTRY.kernel(cfg.chunkwise_kernel)(
                q=q[:, :, :bulk], k=k[:, :, :bulk], v=v[:, :, :bulk], i=i[:, :, :bulk], f=f[:, :, :bulk],
                c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=cfg.eps,
                autocast_kernel_dtype=_dtype("autocast_kernel_dtype", cfg.autocast_kernel_dtype), chunk_size=L,
                **self._cell_kwargs(),
            )  # fmt: skip
            hs.append(h)
            c, n, m = self._cast(*self._unpack(states), state_dtype)
        if bulk < S:
            h, states = registry.REGISTRY.sequence_kernel(cfg.sequence_kernel)(
                q=q[:, :, bulk:], k=k[:, :, bulk:], v=v[:, :, bulk:], i=i[:, :, bulk:], f=f[:, :, bulk:],
                c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=cfg.eps,
                dtype_state=state_dtype, **cell_kw,
            )  # fmt: skip
            hs.append(h)
            c, n, m = self._unpack(states)
        return jnp.concatenate(hs, axis=2), self._pack(*self._cast(c, n, m, state_dtype))

    def _unpack(self, states):
        return (states[0], states[1], states[2] if self.cell == "exp" else None)

    def _cast(self, c, n, m, state_dtype):
        """C and n in inference_state_dtype (float64 stays float64); m as (B, NH, 1) in at least float32."""
        dt = jnp.dtype("float64") if c.dtype == jnp.float64 else state_dtype
        m = m.astype(max_state_dtype(dt)).reshape(*c.shape[:2], 1) if m is not None else None
        return c.astype(dt), n.astype(dt), m

    def _pack(self, c, n, m):
        return (c, n) if self.cell == "sig" else (c, n, m)
