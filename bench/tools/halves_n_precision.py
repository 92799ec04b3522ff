"""The halves output kernel ("out_values": "halves", chunks of 128 as two halves of 64) at 4 and 8 warps, with the
states kernel's n reduced in fp32 ("states_n": "sum", v or k^T weighted) and formed on the tensor cores ("dot"):
relative errors of h and n against the fp64 oracle, bf16, on the GPU forward tests' shapes and input draws of this
process (no NaN poisoning of the outputs). A diagnosis for tuning_db/reports/NOTES.md, not a test.

    python bench/tools/halves_n_precision.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "gpu"), str(ROOT / "tests"), str(ROOT)]
import test_gpu_forward as t  # noqa: E402
from helpers import rel_err  # noqa: E402

from autotune.launch import chunkwise  # noqa: E402


def main() -> int:
    for variant in t.HALVES_VARIANTS:
        cell = variant.params["cell"]
        for shape in t.SHAPES[:5]:
            x = t._inputs(shape, torch.bfloat16, cell)
            ref = t._oracle(x, cell)
            states = (x.get("c_initial"), x.get("n_initial"), x.get("m_initial"))
            row = []
            for warps in (4, 8):
                for weighting, n in (("v", "sum"), ("kT", "sum"), ("kT", "dot")):
                    cfg = dict(chunkwise.default_config(variant, shape[3], shape[4]), out_values="halves", LO=64,
                               num_warps_out=warps, states_weighting=weighting, states_n=n)  # fmt: skip
                    h, last = chunkwise.chunkwise_fw(*(x[k] for k in "qkvif"), *states, variant=variant, config=cfg,
                                                     return_last_states=True)  # fmt: skip
                    errors = f"h {rel_err(h, ref['h']):.4f} n {rel_err(last[1], ref['n']):.1e}"
                    row.append(f"{warps}w {weighting}/{n}: {errors}")
            print(cell, shape, " | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
