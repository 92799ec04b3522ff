"""Native JAX mLSTM kernels: exact, any shape, run on any JAX backend. Registered under the upstream names."""

from .chunkwise import mlstm_chunkwise__native_autograd, mlstm_chunkwise__native_custbw, mlstm_siging_chunkwise__native
from .parallel import (
    mlstm_parallel__native_autograd,
    mlstm_parallel__native_custbw,
    mlstm_parallel__native_stablef_autograd,
    mlstm_parallel__native_stablef_custbw,
    mlstm_siging_parallel__native_autograd,
    mlstm_siging_parallel__native_custbw,
)
from .recurrent import mlstm_recurrent_sequence__native, mlstm_recurrent_step__native

__all__ = [
    "mlstm_chunkwise__native_autograd",
    "mlstm_chunkwise__native_custbw",
    "mlstm_siging_chunkwise__native",
    "mlstm_parallel__native_autograd",
    "mlstm_parallel__native_custbw",
    "mlstm_parallel__native_stablef_autograd",
    "mlstm_parallel__native_stablef_custbw",
    "mlstm_siging_parallel__native_autograd",
    "mlstm_siging_parallel__native_custbw",
    "mlstm_recurrent_step__native",
    "mlstm_recurrent_sequence__native",
]
