"""How long the chunkwise forwards' kernels take to compile for sm_90 (H100/H200), and their registers and spills,
without a GPU: each kernel is compiled ahead of time at the variant's built-in default with one chunk size changed
(autotune.compile_check's recorded launch) and its PTX assembled by Triton's ptxas with -v
(bench/tools/kernel_registers.py). Behind triton_choice.FMA_CHUNK: fp32 inputs form their within-chunk products on
the FMA path, whose unrolled code grows with the chunk's square. Seconds are this machine's; a first compile, so
Triton's cache is bypassed (TRITON_CACHE_DIR is pointed at a fresh folder). Not a test.

    python bench/tools/compile_times.py                         # fp32 and bf16, D = 64 and 128, chunks 64 and 128
    python bench/tools/compile_times.py --dtypes float32 --dims 64 --chunks 128
    python bench/tools/compile_times.py --structures two-pass --dtypes float32 --dims 64 --chunks 64 \
        --config '{"out_dhqk_tile": 32, "out_dhhv_tile": 32}'       # other knobs of the default
    python bench/tools/compile_times.py --structures two-pass --dtypes float32 --dims 64 --chunks 64 \
        --precision tf32x3                                          # the products' input_precision instead of ieee
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_times_")  # before Triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402
from kernel_registers import ptxas_report  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from autotune import compile_check, families  # noqa: E402
from autotune.launch import chunkwise  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402

STRUCTURES = {"two-pass": (chunkwise.TWOPASS, ("chunk_intra",)), "fused": (chunkwise.FUSED, ("chunk",))}


def rows(
    structure: str, dtype: torch.dtype, D: int, chunk: int, changes: dict | None = None, precision: str | None = None
):
    template, keys = STRUCTURES[structure]
    variant = find(template, cell="exp", state="input")
    config = dict(families.default_config(variant, D, D), **dict.fromkeys(keys, chunk), **(changes or {}))
    module = load_variant(variant)
    with compile_check._recording(module) as recorders:
        compile_check._launch_small(variant, dtype, D, D, config=config)
    for name, rec in recorders.items():
        for args, kwargs in rec.calls[:1]:
            kwargs = dict(kwargs)
            if precision and "DOT_PRECISION" in kwargs:
                kwargs["DOT_PRECISION"] = precision
            start = time.perf_counter()
            compiled = compile_check._compile(rec.fn, args, kwargs, GPUTarget("cuda", 90, 32))
            seconds = time.perf_counter() - start
            yield name, seconds, ptxas_report(compiled.asm["ptx"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=STRUCTURES)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--dims", nargs="+", type=int, default=[64, 128], help="DHQK = DHHV")
    p.add_argument("--chunks", nargs="+", type=int, default=[64, 128])
    p.add_argument("--config", type=json.loads, default={}, help="JSON changes to every default configuration")
    p.add_argument(
        "--precision",
        choices=("ieee", "tf32", "tf32x3"),
        help="the products' input_precision for kernels that take DOT_PRECISION (default: the dtype's)",
    )
    args = p.parse_args()
    print(f"{'structure':9} {'dtype':9} {'D':>4} {'chunk':>5} {'kernel':30} {'compile s':>9} {'regs':>5} "
          f"{'spill st':>9} {'spill ld':>9}")  # fmt: skip
    for structure in args.structures:
        for dtype in args.dtypes:
            for D in args.dims:
                for chunk in args.chunks:
                    for name, seconds, r in rows(
                        structure, getattr(torch, dtype), D, chunk, args.config, args.precision
                    ):
                        print(
                            f"{structure:9} {dtype:9} {D:4} {chunk:5} {name:30} {seconds:9.1f} "
                            f"{r['registers']!s:>5} {r['spill_stores']!s:>9} {r['spill_loads']!s:>9}",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
