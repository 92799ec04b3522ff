"""Python time of one call of the Triton step entry (get_mlstm_step_kernel("triton"), in place), with the kernel
launch replaced by a no-op: what the entry itself costs per token before the GPU sees anything. A benchmark for
tuning_db/reports/NOTES.md, not a test; run it on an idle machine (a busy one makes the numbers meaningless).

    TRITON_INTERPRET=1 python bench/tools/step_call_overhead.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors pass the device check; the launch is stubbed anyway
from autotune.checks import check_step_inputs  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.torch import get_mlstm_step_kernel  # noqa: E402
from autotune.variants import VARIANTS  # noqa: E402


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(fn, calls: int = 3000) -> float:
    for _ in range(20):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    for variant in VARIANTS:
        if variant.family == "step_fw":
            load_variant(variant).recurrent_step_kernel = _NoLaunch()
    B, NH, K, V = 1, 8, 256, 512
    q, k = torch.randn(B, NH, K, dtype=torch.bfloat16), torch.randn(B, NH, K, dtype=torch.bfloat16)
    v = torch.randn(B, NH, V, dtype=torch.bfloat16)
    i, f = torch.randn(B, NH, 1), torch.randn(B, NH, 1)
    C, n, m = torch.zeros(B, NH, K, V), torch.zeros(B, NH, K), torch.zeros(B, NH, 1)
    step = get_mlstm_step_kernel("triton")
    for rep in range(3):
        whole = per_call_us(lambda: step(q, k, v, i, f, C, n, m, inplace=True))
        checks = per_call_us(lambda: check_step_inputs(q, k, v, i, f, C, n, m))
        print(f"run {rep}: step call (launch stubbed) {whole:.1f} us, of which check_step_inputs {checks:.1f} us")


if __name__ == "__main__":
    main()
