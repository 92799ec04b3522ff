"""The chunkwise forwards with fp32 inputs, each form through the gate and then timed (autotune.measure.evaluate_here,
as the tuner judges a candidate): the built-in default (products on the FMA path, input_precision "ieee"), narrower
tiles, and the same kernels with tf32x3 products (three tf32 products on the tensor cores). Behind the spills that
ptxas reports for the fp32 defaults (bench/logs/2026-12-07_cpu_fp32_output_kernel_registers_sm90.log); the bf16
default beside them. 65,536 tokens (B=8, S=8192), chunks of 64, heads of 64 (NH=16), 128 (NH=32) and the 7B layout.

    python bench/tools/fp32_forward.py [--layouts d64 head128 7b] [--structures two-pass fused]

The trusted kernel the gate compares with (the parallel forward) keeps "ieee" products in every form. On the CPU
(TRITON_INTERPRET=1) it runs fp32 only, at the gate's short CPU length, and its times mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYOUTS = {"d64": (16, 64, 64), "head128": (32, 128, 128), "7b": (8, 256, 512)}  # NH, DHQK, DHHV
TEMPLATES = {"two-pass": "chunkwise_twopass_fw.py.j2", "fused": "chunkwise_fused_fw.py.j2"}
NARROW = {
    "two-pass": ("output tiles 32 x 32", {"out_dhqk_tile": 32, "out_dhhv_tile": 32}),
    "fused": ("value tiles 32", {"dhhv_tile": 32}),
}


@contextmanager
def chunkwise_precision(precision: str | None):
    """The chunkwise forwards' products in ``precision`` (None: as the launcher chooses for the dtype)."""
    from autotune.launch import chunkwise

    original = chunkwise.dot_precision
    if precision is not None:
        chunkwise.dot_precision = lambda dtype: precision
    try:
        yield
    finally:
        chunkwise.dot_precision = original


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    ap.add_argument("--structures", nargs="+", choices=TEMPLATES, default=list(TEMPLATES))
    args = ap.parse_args()
    import torch
    import triton

    from autotune import measure
    from autotune.torch.triton_choice import chunkwise_default

    device = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"
    B, S = (1, 64) if device == "cpu" else (8, 8192)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU (interpreter)"
    print(f"# {gpu}; torch {torch.__version__} triton {triton.__version__}; B={B}, S={S}, chunks of 64; the gate's "
          f"verdict, then the median of triton.testing.do_bench in ms (autotune.measure.evaluate_here)")  # fmt: skip
    print(f"{'layout':8} {'structure':9} {'dtype':9} {'form':34} {'gate':5} {'error':>9} {'ms':>8}  reason")
    for layout in args.layouts:
        NH, K, V = LAYOUTS[layout]
        for structure in args.structures:
            # the built-in defaults as an untuned call gets them (triton_choice.chunkwise_default), chunks of 64
            bf16 = chunkwise_default(TEMPLATES[structure], "exp", True, 64, K, V, torch.bfloat16)
            name, default = chunkwise_default(TEMPLATES[structure], "exp", True, 64, K, V, torch.float32)
            narrow_label, narrow = NARROW[structure]
            forms = [("bfloat16", "default", *bf16, None), ("float32", "default (ieee)", name, default, None),
                     ("float32", narrow_label, name, dict(default, **narrow), None),
                     ("float32", "default, tf32x3", name, default, "tf32x3"),
                     ("float32", f"{narrow_label}, tf32x3", name, dict(default, **narrow), "tf32x3")]  # fmt: skip
            for dtype, label, variant_name, config, precision in forms:
                if device == "cpu" and dtype == "bfloat16":
                    continue  # the interpreter mis-computes tl.dot on bf16
                job = measure.Job(variant_name, config, B, NH, S, K, V, dtype, device)
                measure.gate_draws(job)  # the trusted kernel's outputs, before any change of precision
                with chunkwise_precision(precision):
                    out = measure.evaluate_here(job)
                ms = f"{out.p50_ms:8.3f}" if out.ok else f"{'-':>8}"
                err = f"{out.error:9.2e}" if out.error is not None else f"{'-':>9}"
                print(f"{layout:8} {structure:9} {dtype:9} {label:34} {'pass' if out.ok else 'FAIL':5} {err} {ms}  "
                      f"{(out.reason or '')[:160]}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
