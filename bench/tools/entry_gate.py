"""The gate's verdict on the PyTorch chunkwise entries at the shapes of tests/gpu/test_gpu_jax.py (B=1, NH=2, the
gate's 4,080 tokens, heads of 64 and 128, bf16 and fp32), beside the same kernels with one choice changed (and
triton_auto's default two-pass forward with its chunk states in each form): which choice moves a failing output
back within the trusted kernel's error. Each line: the output's pooled error over
the gate's adversarial draws as a multiple of the trusted kernel's (the gate passes at <= 1.5, or under the dtype's
floor), and the multiple on each draw alone.

    python bench/tools/entry_gate.py [--only fw|bw] [--dtypes bfloat16 float32] [--heads 64 128]
        [--forward-parts entries fused fused32 twopass]

On the CPU it runs under Triton's interpreter (float32, the gate's short CPU length).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@contextmanager
def segment_sums(on: bool | None):
    """The output kernels' decay matrix from segment sums (True), prefix-sum differences (False), or as the
    launcher chooses (None)."""
    from autotune.launch import chunkwise

    original = chunkwise.segment_sums
    if on is not None:
        chunkwise.segment_sums = lambda q, saved: on
    try:
        yield
    finally:
        chunkwise.segment_sums = original


def ratios(verdict, draws, got_by_draw) -> str:
    from autotune import gate

    parts = []
    for name, err in verdict.error_by_output.items():
        ref = verdict.reference_error_by_output[name]
        each = [
            gate.relative_error(g[name], d.truth[name])
            / max(gate.relative_error(d.reference[name], d.truth[name]), 1e-30)
            for g, d in zip(got_by_draw, draws)
            if d.pool
        ]
        parts.append(f"{name} x{err / ref:.2f} ({err:.2g}; draws " + " ".join(f"{r:.2f}" for r in each) + ")")
    return "  ".join(parts)


def judge(label: str, run, draws, dtype) -> None:
    from autotune import gate

    verdict = gate.judge(run, draws, dtype)
    got = [run(d.x) for d in draws]
    print(f"  {'pass' if verdict.passed else 'FAIL'}  {label:52s} {ratios(verdict, draws, got)}", flush=True)


FORWARD_PARTS = ("entries", "fused", "fused32", "twopass")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["fw", "bw"], default=None)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--heads", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--forward-parts", nargs="+", choices=FORWARD_PARTS, default=list(FORWARD_PARTS),
                    help="which forward lines to run: the entries, the fused forward's changes, its fp32 state, "
                         "the two-pass forward's state forms")  # fmt: skip
    args = ap.parse_args()
    device = "cuda" if os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"
    parts = set(args.forward_parts)
    import torch

    from autotune import families, measure
    from autotune.torch import get_mlstm_kernel
    from autotune.variants import find

    print(f"# {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (interpreter)'}; torch {torch.__version__}")
    fused = find("chunkwise_fused_fw.py.j2", cell="exp", state="input")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for D in args.heads:
            if args.only in (None, "fw"):
                job = measure.Job(
                    fused.name, families.default_config(fused, D, D), 1, 2, 4096, D, D, dtype_name, device
                )
                draws = measure.gate_draws(job)
                print(f"forward, {dtype_name}, D={D}, S={draws[0].x['q'].shape[2]}", flush=True)
                for name in ("chunkwise--triton_fused", "chunkwise--triton_xl_chunk") if "entries" in parts else ():
                    entry = get_mlstm_kernel(name)
                    judge(f"entry {name}", lambda x, e=entry: {"h": e(*(x[k] for k in "qkvif"))}, draws, dtype)
                for sums in (False, True) if "fused" in parts else ():
                    with segment_sums(sums):
                        run = measure._named(job, measure._runner(job))
                        judge(f"fused default, segment sums {sums}", run, draws, dtype)
                for change in ({"dhhv_tile": D}, {"num_warps": 8}, {"chunk": 32}) if "fused" in parts else ():
                    j = replace(job, config=dict(job.config, **change))
                    judge(f"fused, {change}", measure._named(j, measure._runner(j)), draws, dtype)
                if "fused32" in parts:
                    fused32 = find("chunkwise_fused_fw.py.j2", cell="exp", state="float32")
                    j = replace(job, variant=fused32.name, config=families.default_config(fused32, D, D))
                    judge("fused, fp32 state", measure._named(j, measure._runner(j)), draws, dtype)
                # triton_auto's default where no entry is tuned: the two-pass forward, 16-bit states every 64 tokens
                for state, change in (("input", {}), ("input", {"chunk_intra": 128}), ("input", {"states_n": "sum"}),
                                      ("float32", {}), ("float32", {"states_n": "sum"}), ("planes", {}),
                                      ("planes", {"states_n": "sum"})) if "twopass" in parts else ():  # fmt: skip
                    if state == "planes" and dtype == torch.float32:
                        continue  # planes split an fp32 state for 16-bit inputs (rule planes_need_16_bit_inputs)
                    two = find("chunkwise_twopass_fw.py.j2", cell="exp", state=state)
                    j = replace(job, variant=two.name, config=dict(families.default_config(two, D, D), **change))
                    judge(f"two-pass, {state} states, {change or 'default'}", measure._named(j, measure._runner(j)),
                          draws, dtype)  # fmt: skip
            if args.only in (None, "bw"):
                bw = find("chunkwise_bw.py.j2", cell="exp", kernels="fused")
                job = measure.Job(bw.name, families.default_config(bw, D, D), 1, 2, 4096, D, D, dtype_name, device)
                draws = measure.gate_draws(job)
                print(f"training step, {dtype_name}, D={D}", flush=True)
                entry = get_mlstm_kernel("chunkwise--triton_fused")

                def step(x, e=entry):
                    leaves = [x[k].detach().requires_grad_() for k in "qkvif"]
                    h = e(*leaves)
                    return dict(zip(measure.GRADIENTS, torch.autograd.grad(h, leaves, x["dh"]), strict=True))

                judge("entry chunkwise--triton_fused", step, draws, dtype)
                for change in ({}, {"kernels": "split"}, {"dhhv_tile": D}, {"states": "reuse"}):
                    kernels = change.get("kernels", "fused")
                    variant = find("chunkwise_bw.py.j2", cell="exp", kernels=kernels)
                    config = dict(families.default_config(variant, D, D), **{k: v for k, v in change.items()
                                                                               if k != "kernels"})  # fmt: skip
                    j = replace(job, variant=variant.name, config=config)
                    judge(f"backward {kernels}, {change or 'default'}", measure._named(j, measure._runner(j)), draws,
                          dtype)  # fmt: skip


if __name__ == "__main__":
    main()
