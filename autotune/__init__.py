"""mlstm-autotune: code-generated, per-GPU autotuned mLSTM kernels.

Subpackages and modules:
    autotune.reference  the fp64-capable oracle (recurrent, parallel, chunkwise forms of docs/math.md)
    autotune.torch      the public, mlstm_kernels-compatible API (registries, kernels, backend module)
    autotune.paths      where templates/, generated/ and tuning_db/ live (one place)
    autotune.cli        the `mlstm-tune` command
"""

__version__ = "0.1.0"
