"""The chunkwise backward with its per-chunk state buffers in fp32 against 16-bit (state_buffers="input"), fp16
inputs, under Triton's interpreter: the relative difference of every gradient (the figure in
tuning_db/reports/NOTES.md). Accuracy against the oracle is tested in tests/test_backward_kernels.py; not a test.

    TRITON_INTERPRET=1 python bench/tools/state_buffers_fp16.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("TRITON_INTERPRET", "1")
import test_backward_kernels as T  # noqa: E402

from autotune import families  # noqa: E402
from autotune.launch import chunkwise as launch_fw  # noqa: E402
from autotune.launch import chunkwise_bw as launch_bw  # noqa: E402
from autotune.variants import find  # noqa: E402


def main() -> None:
    shape = T.SHAPES[3]
    x = T._inputs(shape, "exp", True, dtype=torch.float16)
    weights = T._weights(shape, "exp", True)
    fw_variant = find(launch_fw.TWOPASS, cell="exp", state="float32")
    fw_config = dict(families.default_config(fw_variant, 1, 1), chunk_inter=16, chunk_intra=32, states_dhqk_tile=32,
                     states_dhhv_tile=32, out_dhqk_tile=32, out_dhhv_tile=32)  # fmt: skip
    for kernels in ("fused", "split"):
        variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
        grads = {}
        for buffers in families.CHUNKWISE_BW.knob("state_buffers").choices:
            config = dict(T._bw_config(variant, shape.DHQK, shape.DHHV, 32), state_buffers=buffers)
            grads[buffers] = T._run(x, weights, cell="exp", forward=launch_fw.TWOPASS, fw_config=fw_config,
                                    bw_variant=variant, bw_config=config)  # fmt: skip
        diffs = {k: ((grads["float32"][k].float() - grads["input"][k].float()).norm()
                     / grads["float32"][k].float().norm()).item() for k in grads["float32"]}  # fmt: skip
        print(f"{kernels} {shape.id}: " + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()))


if __name__ == "__main__":
    main()
