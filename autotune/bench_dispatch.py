"""Benchmark (not a test): the dispatcher's cost per kernel call once a key has been answered.

    python -m autotune.bench_dispatch [--calls N]

Measures, on a warm memo, (a) Dispatcher.choose for a known request and (b) the whole per-call choice the Triton
entries make (building the request from the tensor, GPU identity, memo hit, variant lookup), each as the median
over 7 repetitions of N calls. No kernel runs, so this works on any machine; the budget is 5 us per call.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial

import torch

from . import __version__
from .dispatch import Request, dispatcher
from .torch import triton_choice, triton_kernels  # noqa: F401  (triton_kernels registers the entries)


def _per_call_us(fn, calls: int) -> float:
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.bench_dispatch")
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.empty(8, 8, 8192, 256, dtype=torch.bfloat16, device=device)
    default = partial(triton_choice.chunkwise_default, "chunkwise_twopass_fw.py.j2", "exp", False, 64, 256, 512,
                      torch.bfloat16)  # fmt: skip
    structures = ("chunkwise_twopass_fw", "chunkwise_fused_fw")
    request = Request("chunkwise:exp", "fw", "bfloat16", 256, 512, 8192, 64, structures)
    gpu, capability = triton_choice.gpu_identity(q.device)
    dispatcher().choose(request, gpu, capability, default)  # the first lookup may read files; not timed

    rows = [
        ("Dispatcher.choose (memo hit)", _per_call_us(lambda: dispatcher().choose(request, gpu, capability, default),
                                                      args.calls)),
        ("per-call choice of a Triton entry", _per_call_us(
            lambda: triton_choice.pick("chunkwise:exp", structures, q, 512, 8192, 64, default), args.calls)),
    ]  # fmt: skip
    print(f"mlstm-autotune {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, device {gpu}")  # fmt: skip
    print(f"{'what':40s} {'us per call (median of 7 x ' + str(args.calls) + ')':>40s}")
    for what, us in rows:
        print(f"{what:40s} {us:40.3f}")
    worst = max(us for _, us in rows)
    print(f"budget 5 us per call: {'met' if worst <= 5 else 'MISSED'} (worst {worst:.3f} us)")
    return 0 if worst <= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
