"""Where a chunkwise forward's time goes, per kernel, for ours (dispatched from the database), FLA's
``chunk_simple_gla`` and upstream's xl_chunk, on the bench's forward rows (torch.profiler, one call after a warm-up;
the same inputs as ``mlstm-tune bench``). It answers which kernel of ours loses where FLA wins (issue 6).

A diagnosis for tuning_db/reports/NOTES.md, not a test:
    python bench/tools/forward_kernels.py --out DIR [--layout 7b|head128] [--S 2048 8192 32768]
With --ncu each forward runs once to compile, then once inside a CUDA profiler range, for Nsight Compute:
    ncu --profile-from-start off --clock-control none \
        --kernel-name regex:"chunkwise_states|chunkwise_output|chunk_fwd_kernel" ... \
        python bench/tools/forward_kernels.py --ncu --layout 7b --S 2048 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_backward import kernels_of  # noqa: E402

from autotune import bench  # noqa: E402

HEADS = {"7b": (8, 256, 512), "head128": (32, 128, 128)}
MAKERS = {
    "ours": lambda row, x: bench._ours(row, x, dispatch=True),
    "fla": bench._fla,
    "upstream": lambda row, x: bench._upstream(row, x, "chunkwise--triton_xl_chunk"),
}


def profiled_once(fn) -> None:
    """fn once to compile, then once inside a CUDA profiler range (what ncu --profile-from-start off captures)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layout", choices=sorted(HEADS), nargs="+", default=sorted(HEADS))
    ap.add_argument("--S", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--ncu", action="store_true", help="run each forward once in a profiler range, time nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for layout in args.layout:
        NH, K, V = HEADS[layout]
        for S in args.S:
            row = bench.Row("chunkwise", "fw", bench.TOKENS // S, NH, S, K, V)
            x = bench._inputs(row, "cuda", torch.bfloat16)
            for name, make in MAKERS.items():
                if args.ncu and name == "upstream":  # the profiler's kernel filter takes ours and FLA's only
                    continue
                try:
                    fn = make(row, x)
                except ImportError as err:
                    print(f"{layout} S={S} {name}: not installed ({err.name})")
                    continue
                if args.ncu:
                    profiled_once(fn)
                    print(f"{layout} S={S} {name}: ran once in the profiler range")
                    continue
                kernels = kernels_of(fn, "cuda")
                results.append({"layout": layout, "S": S, "impl": name, "kernels": kernels})
                (args.out / "forward_kernels.json").write_text(json.dumps(results, indent=1))
                total = sum(ms for _, ms in kernels)
                print(f"{layout} S={S} {name}: {total:.3f} ms in all")
                for kernel, ms in kernels[:5]:
                    print(f"    {ms:7.3f}  {kernel}")
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
