"""Which knob makes a chunkwise backward fail the gate: errors of dq, dk, dv, di, df against the float64 oracle,
next to the trusted parallel backward's, on the gate's draws (autotune.measure.gate_draws), for the default
configuration and one change at a time (knob, dtype, sequence length, head dims).

    python bench/tools/probe_backward_gate.py --out DIR [--budget-s N] [--only "LABEL;LABEL;..."]

Prints one table row per point (the GPU's name first) and writes DIR/probe_backward_gate.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from autotune import families, gate, measure  # noqa: E402
from autotune.variants import find  # noqa: E402

BASE = dict(kernels="fused", K=256, V=512, S=2048, dtype="bfloat16")
POINTS = [  # (label, changes of BASE, config overrides)
    ("default 256/512 bf16 S2048", {}, {}),
    ("fp32", {"dtype": "float32"}, {}),
    ("fp16", {"dtype": "float16"}, {}),
    ("S 512", {"S": 512}, {}),
    ("S 1024", {"S": 1024}, {}),
    ("256/256", {"V": 256}, {}),
    ("128/512", {"K": 128}, {}),
    ("128/128", {"K": 128, "V": 128}, {}),
    ("states reuse", {}, {"states": "reuse"}),
    ("dhqk_tile 32", {}, {"dhqk_tile": 32}),
    ("dhhv_tile 32", {}, {"dhhv_tile": 32}),
    ("dhhv_tile 128", {}, {"dhhv_tile": 128}),
    ("dv_dhhv_tile 64", {}, {"dv_dhhv_tile": 64}),
    ("states tiles 32/64", {}, {"states_dhqk_tile": 32, "states_dhhv_tile": 64}),
    ("num_warps 8", {}, {"num_warps": 8}),
    ("states_weighting k", {}, {"states_weighting": "k"}),
    ("chunk 32", {}, {"chunk": 32}),
    ("chunk 128", {}, {"chunk": 128}),
    ("state_buffers float32", {}, {"state_buffers": "float32"}),
    ("split kernels", {"kernels": "split"}, {}),
    ("split, state_buffers float32", {"kernels": "split"}, {"state_buffers": "float32"}),
    ("128/128 states reuse", {"K": 128, "V": 128}, {"states": "reuse"}),
    ("128/128 reuse, state_buffers float32", {"K": 128, "V": 128}, {"states": "reuse", "state_buffers": "float32"}),
]


def point(label: str, changes: dict, overrides: dict) -> dict:
    p = dict(BASE, **changes)
    variant = find("chunkwise_bw.py.j2", cell="exp", kernels=p["kernels"])
    config = dict(families.default_config(variant, p["K"], p["V"]), **overrides)
    job = measure.Job(variant.name, config, 1, 2, p["S"], p["K"], p["V"], p["dtype"], "cuda")
    row = {"label": label, **p, "config": config}
    try:
        families.checked(variant.template, config)
        verdict = gate.judge(measure._named(job, measure._runner(job)), measure.gate_draws(job),
                             getattr(torch, p["dtype"]), runs=2)  # fmt: skip
        row.update(errors=verdict.error_by_output, trusted=verdict.reference_error_by_output,
                   distinct=verdict.distinct_outputs, passed=verdict.passed)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a point that cannot run is a row, not the end
        row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--only", help="labels separated by semicolons: run these points only, in this order")
    args = ap.parse_args()
    points = POINTS
    if args.only:
        by_label = {p[0]: p for p in POINTS}
        points = [by_label[label.strip()] for label in args.only.split(";")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name()}; gate errors (ours/trusted) of the chunkwise backward", flush=True)
    rows, start = [], time.time()
    for label, changes, overrides in points:
        if time.time() - start > args.budget_s:
            print(f"budget spent: {label} and after not run")
            break
        r = point(label, changes, overrides)
        rows.append(r)
        (out / "probe_backward_gate.json").write_text(json.dumps(rows, indent=1, default=str))
        if "error" in r:
            print(f"{label:24s} {r['error']}", flush=True)
            continue
        cells = " ".join(f"{k} {e:.2g}/{r['trusted'][k]:.2g}" for k, e in r["errors"].items())
        print(f"{label:24s} {'pass' if r['passed'] else 'FAIL'} distinct {r['distinct']} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
