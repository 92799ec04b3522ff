"""One training step (forward + backward of ``chunkwise--triton_auto``, database configurations) inside a CUDA
profiler range, for Nsight Compute: the step runs once outside the range (compiles every kernel), then once inside.

    ncu --profile-from-start off --clock-control none --kernel-name regex:chunkwise ... \
        python bench/tools/ncu_step.py --layout 7b|head128

A diagnosis for tuning_db/reports/NOTES.md, not a test (bench/tools/gpu_runs.sh ncu-bw runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward_kernels import profiled_once  # noqa: E402
from profile_backward import LAYOUTS, inputs, step_fn  # noqa: E402

from autotune.torch import get_mlstm_kernel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    args = ap.parse_args()
    x = inputs(LAYOUTS[args.layout], "cuda")
    profiled_once(step_fn(get_mlstm_kernel("chunkwise--triton_auto"), x, 64))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
