"""What bounds the step kernel's time on this GPU (issue 6's step targets: <= 10 us at B=1, >= 85% of the copy
bandwidth for B >= 16). Everything is timed as the bench's graph column is: ``triton.testing.do_bench`` over the
replay of a CUDA graph, which empties the L2 between calls. Per batch size (NH=8, DHQK=256, DHHV=512, fp32 state):

- ``empty 1`` / ``empty 1024``: a kernel that does nothing, on 1 and on 1024 programs: the floor of the timing
  itself (graph launch, events, program launch);
- ``copy``: the state (C, n, m) copied into another buffer, and ``in place``: read and written back; the step's
  bytes moved by torch at this size, the bandwidth a step could reach;
- ``ours``: the step dispatched from the database, as the bench runs it; ``ours x20``: 20 steps in one graph, per
  step (the launch shared, the L2 not emptied between them);
- ``upstream``: mlstm_kernels' step kernel, when installed.

A diagnosis for tuning_db/reports/NOTES.md, not a test:  python bench/tools/step_floor.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from autotune import bench  # noqa: E402
from autotune.measure import graphed  # noqa: E402

NH, DHQK, DHHV = 8, 256, 512


@triton.jit
def _empty_kernel(x_ptr):
    pass


def us(fn) -> float:
    """Median microseconds of one replay of ``fn`` captured in a CUDA graph."""
    return 1e3 * triton.testing.do_bench(graphed(fn), warmup=25, rep=200, return_mode="median")


def repeated(fn, times: int):
    def many():
        for _ in range(times):
            fn()

    return many


def measure(B: int) -> dict:
    row = bench.Row("step", "fw", B, NH, 1, DHQK, DHHV)
    x = bench._inputs(row, "cuda", torch.bfloat16)
    out = {"B": B, "bytes": bench.step_bytes({"B": B, "NH": NH, "DHQK": DHQK, "DHHV": DHHV})}
    dummy = torch.empty(1, device="cuda")
    out["empty_1_us"] = us(lambda: _empty_kernel[(1,)](dummy))
    out["empty_1024_us"] = us(lambda: _empty_kernel[(1024,)](dummy))
    copies = bench.StateCopies(row, x)
    out["copy_us"], out["in_place_us"] = us(copies.copy), us(copies.in_place)
    ours = bench._ours(row, x, dispatch=True)
    out["ours_us"] = us(ours)
    out["ours_x20_per_step_us"] = us(repeated(ours, 20)) / 20
    try:
        out["upstream_us"] = us(bench._upstream(row, x, "chunkwise--triton_xl_chunk"))
    except ImportError as err:
        out["upstream_us"] = None
        out["note"] = f"upstream not installed ({err.name})"
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128, 512])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for B in args.batches:
        table.append(measure(B))
        (args.out / "step_floor.json").write_text(json.dumps(table, indent=1))
    cols = ("empty_1_us", "empty_1024_us", "copy_us", "in_place_us", "ours_us", "ours_x20_per_step_us", "upstream_us")
    print(f"{'B':>4} {'MB':>6} " + " ".join(f"{c.removesuffix('_us'):>17}" for c in cols)
          + "  copy GB/s  ours GB/s  ours/copy")  # fmt: skip
    for r in table:
        cells = " ".join(f"{r[c]:17.1f}" if r.get(c) is not None else f"{'-':>17}" for c in cols)
        copy_gbs, ours_gbs = (r["bytes"] / (r[c] * 1e-6) / 1e9 for c in ("copy_us", "ours_us"))
        print(f"{r['B']:>4} {r['bytes'] / 1e6:6.1f} {cells}  {copy_gbs:9.0f}  {ours_gbs:9.0f}"
              f"  {r['copy_us'] / r['ours_us']:9.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
