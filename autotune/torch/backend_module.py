"""``mLSTMBackend``: the nn.Module model code calls, compatible with ``mlstm_kernels.torch.backend_module``.

Modes:
    train               the configured chunkwise (or parallel) kernel over the whole sequence, any S >= 1
    train_with_padding  the same: our kernels take any S, so nothing needs padding (kept for compatibility; unlike
                        upstream, last states are allowed because no padding token enters them)
    inference           always returns the last state. S == 1: the step kernel. S > 1: the chunkwise kernel over the
                        largest multiple of chunk_size, then the sequence kernel over the rest, states handed along;
                        states are kept in ``inference_state_dtype``.
Kernels whose name contains ``siging`` compute the sig cell; the backend then runs the step and sequence kernels
in the sig cell too and returns states ``(C, n)``. Invalid configurations raise ValueError at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backend_rules import check_backend_config, check_mode
from ..checks import MLSTMInputError, check_sequence_inputs
from . import registry

ChunkwiseKernelType = Literal[
    "chunkwise--native_autograd",
    "chunkwise--native_custbw",
    "chunkwise--triton_limit_chunk",
    "chunkwise--triton_xl_chunk",
    "chunkwise--triton_xl_chunk_siging",
    "chunkwise--triton_fused",
    "chunkwise--triton_fused_siging",
    "chunkwise--triton_auto",
    "chunkwise--triton_auto_siging",
    "parallel--native_autograd",
    "parallel--native_custbw",
    "parallel--native_stablef_autograd",
    "parallel--native_stablef_custbw",
    "parallel--triton_limit_headdim",
    "parallel--native_siging_autograd",
    "parallel--native_siging_custbw",
    "parallel--triton_siging",
]
SequenceKernelType = Literal["native_sequence__native", "native_sequence__triton"]
StepKernelType = Literal["native", "triton"]
DtypeType = Literal["float32", "bfloat16", "float16"]
BackendModeType = Literal["train", "train_with_padding", "inference"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(field: str, value) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    raise ValueError(f"mLSTMBackendConfig.{field} must be one of {', '.join(_DTYPES)}, got {value!r}")


@dataclass
class mLSTMBackendConfig:
    chunkwise_kernel: ChunkwiseKernelType = "chunkwise--native_autograd"
    """The chunkwise (or parallel) kernel for training and for the bulk of a prefill."""
    sequence_kernel: SequenceKernelType = "native_sequence__native"
    """The recurrent sequence kernel for the remainder of a prefill (fewer than chunk_size tokens)."""
    step_kernel: StepKernelType = "native"
    """The step kernel for generation (S == 1) in inference mode."""
    mode: BackendModeType = "train"
    """train | train_with_padding | inference; ``forward(mode=...)`` overrides it per call."""
    chunk_size: int = 64
    """The chunk size passed to the chunkwise kernel; in inference, the bulk is the largest multiple of it."""
    return_last_states: bool = True
    """Whether training modes return the last states (inference always does)."""
    autocast_kernel_dtype: DtypeType = "bfloat16"
    """The kernel compute dtype passed to the kernels (native kernels compute in float32/float64 regardless)."""
    eps: float = 1e-6
    """The eps of the denominator (docs/math.md §1)."""
    inference_state_dtype: DtypeType = "float32"
    """The dtype of C and n carried in inference mode (m stays in at least fp32)."""
    normalize_siging: bool = True
    """For sig-cell kernels only: whether h is normalised (docs/math.md §2)."""

    def __post_init__(self):
        check_backend_config(self, registry.REGISTRY, _dtype)

    @property
    def cell(self) -> str:
        return registry.kernel_cell(self.chunkwise_kernel)


class mLSTMBackend(nn.Module):
    """The mLSTM cell as a module: ``forward(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
    return_last_states=None, mode=None, cu_seqlens=None, cu_seqlens_cpu=None)``. Shapes: q, k (B, NH, S, DHQK);
    v (B, NH, S, DHHV); i, f (B, NH, S); states C (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1). Returns
    h (B, NH, S, DHHV), or ``(h, (C, n, m))`` (``(h, (C, n))`` for the sig cell) when last states are returned.
    In the training modes ``cu_seqlens`` packs several sequences into B = 1, states per sequence
    (autotune/torch/packed.py)."""

    config_class = mLSTMBackendConfig

    def __init__(self, config: mLSTMBackendConfig):
        super().__init__()
        if not isinstance(config, mLSTMBackendConfig):
            raise ValueError(f"config must be an mLSTMBackendConfig, got {type(config).__name__}")
        self.config = config
        self.cell = config.cell
        self.chunkwise_kernel_fn = registry.kernel(config.chunkwise_kernel)
        self.sequence_kernel_fn = registry.sequence_kernel(config.sequence_kernel)
        self.step_kernel_fn = registry.step_kernel(config.step_kernel)
        self._kernel_dtype = _dtype("autocast_kernel_dtype", config.autocast_kernel_dtype)
        self._state_dtype = _dtype("inference_state_dtype", config.inference_state_dtype)
        self._cell_kwargs = {"normalize": config.normalize_siging} if self.cell == "sig" else {}

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        i: torch.Tensor,
        f: torch.Tensor,
        c_initial: torch.Tensor | None = None,
        n_initial: torch.Tensor | None = None,
        m_initial: torch.Tensor | None = None,
        return_last_states: bool | None = None,
        mode: BackendModeType | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cu_seqlens_cpu: torch.Tensor | None = None,
    ):
        mode = self.config.mode if mode is None else mode
        check_mode(mode, "mode")
        if self.cell == "sig":
            m_initial = None
        packed = cu_seqlens is not None or cu_seqlens_cpu is not None
        if packed and mode == "inference":
            raise MLSTMInputError("cu_seqlens (packed sequences) is for the training modes, not inference")
        if packed:  # per-sequence initial states: the packed call checks each sequence (autotune/torch/packed.py)
            return self.chunkwise_kernel_fn(
                q, k, v, i, f, c_initial, n_initial, m_initial,
                self.config.return_last_states if return_last_states is None else return_last_states,
                eps=self.config.eps, autocast_kernel_dtype=self._kernel_dtype, chunk_size=self.config.chunk_size,
                cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu, **self._cell_kwargs,
            )  # fmt: skip
        check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=self.cell)
        if mode == "inference":
            return self._inference(q, k, v, i, f, c_initial, n_initial, m_initial)
        if return_last_states is None:
            return_last_states = self.config.return_last_states
        return self.chunkwise_kernel_fn(
            q=q, k=k, v=v, i=i, f=f, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
            return_last_states=return_last_states, eps=self.config.eps, autocast_kernel_dtype=self._kernel_dtype,
            chunk_size=self.config.chunk_size, **self._cell_kwargs,
        )  # fmt: skip

    def _inference(self, q, k, v, i, f, c, n, m):
        S, L = q.shape[2], self.config.chunk_size
        cell_kw = dict(self._cell_kwargs, cell=self.cell)
        if S == 1:
            h, (c, n, m) = self.step_kernel_fn(
                q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0:1], f[:, :, 0:1], c, n, m,
                eps=self.config.eps, dtype_state=self._state_dtype, **cell_kw,
            )  # fmt: skip
            return h[:, :, None], self._pack(*self._cast(c, n, m))
        bulk = (S // L) * L
        hs = []
        if bulk > 0:
            h, states = self.chunkwise_kernel_fn(
                q=q[:, :, :bulk], k=k[:, :, :bulk], v=v[:, :, :bulk], i=i[:, :, :bulk], f=f[:, :, :bulk],
                c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=self.config.eps,
                autocast_kernel_dtype=self._kernel_dtype, chunk_size=L, **self._cell_kwargs,
            )  # fmt: skip
            hs.append(h)
            c, n, m = self._cast(*self._unpack(states))
        if bulk < S:
            h, states = self.sequence_kernel_fn(
                q=q[:, :, bulk:], k=k[:, :, bulk:], v=v[:, :, bulk:], i=i[:, :, bulk:], f=f[:, :, bulk:],
                c_initial=c, n_initial=n, m_initial=m, return_last_states=True, eps=self.config.eps,
                dtype_state=self._state_dtype, **cell_kw,
            )  # fmt: skip
            hs.append(h)
            c, n, m = self._unpack(states)
        return torch.cat(hs, dim=2), self._pack(*self._cast(c, n, m))

    def _unpack(self, states):
        return (states[0], states[1], states[2] if self.cell == "exp" else None)

    def _cast(self, c, n, m):
        """C and n in inference_state_dtype (float64 stays float64); m as (B, NH, 1) in at least fp32 (it is the
        log-scale of C and n: rounded to 16 bits it would rescale the state by percents)."""
        dt = torch.float64 if c.dtype == torch.float64 else self._state_dtype
        m = m.to(torch.promote_types(dt, torch.float32)).reshape(*c.shape[:2], 1) if m is not None else None
        return c.to(dt), n.to(dt), m

    def _pack(self, c, n, m):
        return (c, n) if self.cell == "sig" else (c, n, m)

    def extra_repr(self) -> str:
        return f"{self.config}"
