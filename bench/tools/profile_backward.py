"""Where a training step's time goes: forward+backward of ``chunkwise--triton_auto`` under torch.profiler, per GPU
kernel, next to upstream's xl_chunk; then the step timed with a few backward configurations forced through
MLSTM_AUTOTUNE_FORCE (chunk L, recomputed or reused states, state tiles, the split kernels, the parallel backward).
A diagnosis for tuning_db/reports/NOTES.md, not a test.

    python bench/tools/profile_backward.py --out DIR [--layout 7b|head128] [--budget-s N] [--sweep split]  (on a GPU)
    TRITON_INTERPRET=1 python bench/tools/profile_backward.py --smoke --out DIR           (tiny shapes, CPU)

Writes DIR/profile_backward.json (rows written as they come) and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from autotune.dispatch import dispatcher  # noqa: E402
from autotune.torch import get_mlstm_kernel  # noqa: E402

LAYOUTS = {"7b": (32, 8, 2048, 256, 512), "head128": (32, 32, 2048, 128, 128)}  # 65,536 tokens each
FUSED, SPLIT = "chunkwise_bw__cell-exp_kernels-fused", "chunkwise_bw__cell-exp_kernels-split"
BASE = {"chunk": 64, "dhqk_tile": 64, "dhhv_tile": 64, "states_dhqk_tile": 64, "states_dhhv_tile": 128, "num_warps": 4,
        "states_warps": 4, "num_stages": 1, "states": "recompute", "state_buffers": "input",
        "states_weighting": "v"}  # fmt: skip
# (label, variant, config changes from BASE, the built-in default since 2026-11-30); None = the dispatcher's answer.
# The labels keep the knobs' names of the time the figures in tuning_db/reports were recorded (L: chunk, BK / BV:
# dhqk_tile / dhhv_tile, BKS / BVS: states_dhqk_tile / states_dhhv_tile, BVD: dv_dhhv_tile), so rows stay comparable
CONFIGS = [
    ("default", None, None),
    ("fused L64 (BASE)", FUSED, {}),
    ("fused L64 reuse", FUSED, {"states": "reuse"}),
    ("fused L64 fp32 state buffers", FUSED, {"state_buffers": "float32"}),
    ("fused L64 k weighted", FUSED, {"states_weighting": "k"}),
    ("fused L64 state tiles 64/64", FUSED, {"states_dhhv_tile": 64}),
    ("fused L64 2 stages", FUSED, {"num_stages": 2}),
    ("fused L128", FUSED, {"chunk": 128}),
    ("fused L128 2 stages", FUSED, {"chunk": 128, "num_stages": 2}),
    ("fused L32", FUSED, {"chunk": 32}),
    ("fused L64 value tiles 128", FUSED, {"dhhv_tile": 128}),
    ("fused L64 key tiles 32", FUSED, {"dhqk_tile": 32}),
    ("split L64", SPLIT, {}),
    ("split L64 value tiles 128", SPLIT, {"dhhv_tile": 128}),
]
# the configurations also split by kernel
PER_KERNEL = ("fused L64 reuse", "fused L128", "split L64")
# --sweep split: the split kernels (one dq/dk program per key tile, one dv program per value tile) against the fused
# kernel, both reusing the forward's states, from the H200 database's training winner (2026-11-30); without
# "dv_dhhv_tile" the dv kernel takes dhhv_tile
WINNER = dict(BASE, states="reuse", dhhv_tile=128, states_weighting="k")
SPLIT_CONFIGS = [  # most wanted first: the sweep stops at its time budget
    ("default", None, None),
    ("fused winner (reuse, BV 128, k weighted)", FUSED, {}),
    (
        "split BK 64 BV 64 3 stages, dv BVD 128, dstate pre",
        SPLIT,  # the 7B training entry of the 2026-11-30f tuning run
        {"dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 128, "dstate_gates": "pre"},
    ),
    # one key tile at head 128 (no dP recomputed per key tile), 8 warps: the dq/dk kernel spills 524 (BV 64) and
    # 476 (BV 32) bytes per thread there by ptxas, against 2924 for the fused winner (kernel_registers.py); value
    # tiles of 32 are suspect on the H200 in bf16 (NOTES.md), so BV 64 first
    (
        "split BK 128 BV 64 8 warps, dv BVD 128",
        SPLIT,
        {"dhqk_tile": 128, "dhhv_tile": 64, "num_warps": 8, "dv_dhhv_tile": 128},
    ),
    (
        "split BK 128 BV 32 8 warps, dv BVD 128",
        SPLIT,
        {"dhqk_tile": 128, "dhhv_tile": 32, "num_warps": 8, "dv_dhhv_tile": 128},
    ),
    (
        "split BK 128 BV 32 8 warps 2 stages, dv BVD 128, dstate pre",
        SPLIT,
        {
            "dhqk_tile": 128,
            "dhhv_tile": 32,
            "num_warps": 8,
            "num_stages": 2,
            "dv_dhhv_tile": 128,
            "dstate_gates": "pre",
        },
    ),
    # the fused kernel with the fewest spills by ptxas at head 128: 144 bytes per thread (57 KB of shared memory)
    ("fused BK 32 BV 64 8 warps", FUSED, {"dhqk_tile": 32, "dhhv_tile": 64, "num_warps": 8}),
    ("split BK 64 BV 128 2 stages", SPLIT, {"num_stages": 2}),  # the 7B training entry of the 2026-11-30e tuning run
    ("split BK 64 BV 64 3 stages", SPLIT, {"dhhv_tile": 64, "num_stages": 3}),
    ("split BK 64 BV 64 3 stages, dv BVD 128", SPLIT, {"dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 128}),
    ("fused winner, dstate pre", FUSED, {"dstate_gates": "pre"}),
    ("split BK 64 BV 64 3 stages, dv BVD 32", SPLIT, {"dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 32}),
    ("split BK 64 BV 128 3 stages, dv BVD 128", SPLIT, {"num_stages": 3, "dv_dhhv_tile": 128}),
    ("split BK 64 BV 64 2 stages, dv BVD 128", SPLIT, {"dhhv_tile": 64, "num_stages": 2, "dv_dhhv_tile": 128}),
    (
        "split BK 64 BV 64 3 stages, dv BVD 128, dstate pre, state 8 warps",
        SPLIT,
        {"dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 128, "dstate_gates": "pre", "states_warps": 8},
    ),
]
SPLIT_PER_KERNEL = (
    "fused winner (reuse, BV 128, k weighted)",
    "split BK 64 BV 64 3 stages",
    "split BK 64 BV 64 3 stages, dv BVD 128",
    "split BK 64 BV 64 3 stages, dv BVD 128, dstate pre",
    "fused winner, dstate pre",
    "split BK 128 BV 64 8 warps, dv BVD 128",
)


def inputs(layout, device):
    B, NH, S, K, V = layout
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device) * scale

    dt = torch.bfloat16 if device == "cuda" else torch.float32
    x = dict(q=rnd(B, NH, S, K).to(dt), k=rnd(B, NH, S, K).to(dt), v=rnd(B, NH, S, V).to(dt),
             i=rnd(B, NH, S, scale=2.0), f=rnd(B, NH, S, scale=2.0) + 3.0)  # fmt: skip
    return {n: t.requires_grad_(True) for n, t in x.items()}


def step_fn(kernel, x, chunk_size):
    w = None

    def step():
        nonlocal w
        h = kernel(**x, chunk_size=chunk_size)
        if w is None:
            w = torch.randn_like(h)
        torch.autograd.backward(h, w)

    return step


def timed(fn, device) -> float:
    fn()
    if device == "cpu":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=100, return_mode="median")


def kernels_of(fn, device) -> list[tuple[str, float]]:
    """(kernel name, ms summed over one call) for the kernels of one call, largest first."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    fn()
    with profile(activities=[activity]) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    out = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) if device == "cuda" else e.self_cpu_time_total
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us > 0:
            out.append((e.key[:90], us / 1e3))
    return sorted(out, key=lambda kv: -kv[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--layout", choices=sorted(LAYOUTS))
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument(
        "--sweep",
        choices=("configs", "split"),
        default="configs",
        help="configs: the backward configurations above; split: the split kernels against the fused",
    )
    args = ap.parse_args()
    base, configs, per_kernel = (
        (BASE, CONFIGS, PER_KERNEL) if args.sweep == "configs" else (WINNER, SPLIT_CONFIGS, SPLIT_PER_KERNEL)
    )
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    layouts = {"tiny": (1, 2, 128, 32, 32)} if args.smoke else LAYOUTS
    if args.layout and not args.smoke:
        layouts = {args.layout: LAYOUTS[args.layout]}
    chunk = 32 if args.smoke else 64
    rows = []

    def record(**row):
        rows.append(row)
        (out / "profile_backward.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(row)[:400], flush=True)

    ours = get_mlstm_kernel("chunkwise--triton_auto")
    for lname, layout in layouts.items():
        x = inputs(layout, device)
        os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
        dispatcher().reset()
        record(layout=lname, what="ours kernels", kernels=kernels_of(step_fn(ours, x, chunk), device)[:14])
        try:
            from mlstm_kernels.torch import get_mlstm_kernel as upstream_kernel  # optional

            up = step_fn(upstream_kernel("chunkwise--triton_xl_chunk"), x, 128)
            record(layout=lname, what="upstream xl_chunk kernels", kernels=kernels_of(up, device)[:14],
                   ms=timed(up, device))  # fmt: skip
        except Exception as err:  # noqa: BLE001 - the comparison is optional
            record(layout=lname, what="upstream xl_chunk", error=f"{type(err).__name__}: {str(err)[:200]}")
        for label, variant, change in configs:
            if time.monotonic() - start > args.budget_s:
                record(layout=lname, what=label, error="budget spent")
                continue
            if variant is None:
                os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
            else:
                config = dict(base, **change)
                if args.smoke:
                    config.update(chunk=min(config["chunk"], 32), dhqk_tile=16, dhhv_tile=16, states_dhqk_tile=16,
                                  states_dhhv_tile=16)  # fmt: skip
                    if change.get("states") == "reuse":
                        config["chunk"] = chunk
                force = {"chunkwise:exp/fwbw": {"variant": variant, "config": config}}
                os.environ["MLSTM_AUTOTUNE_FORCE"] = json.dumps(force)
            dispatcher().reset()
            try:
                ms = timed(step_fn(ours, x, chunk), device)
                record(layout=lname, what=label, ms=ms)
                if label in per_kernel:
                    record(
                        layout=lname, what=label + " kernels", kernels=kernels_of(step_fn(ours, x, chunk), device)[:14]
                    )
            except Exception as err:  # noqa: BLE001 - a configuration that fails is recorded
                record(layout=lname, what=label, error=f"{type(err).__name__}: {str(err)[:200]}")
        os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    print("\nlayout   fw+bw ms  configuration")
    for r in rows:
        if "ms" in r:
            print(f"{r['layout']:8s} {r['ms']:8.3f}  {r['what']}")
    for r in rows:
        if "kernels" in r:
            print(f"\n{r['layout']} {r['what']} (ms per call):")
            for name, ms in r["kernels"][:8]:
                print(f"  {ms:8.3f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
