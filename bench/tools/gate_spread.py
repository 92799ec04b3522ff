"""How much the gate's verdict on a training step depends on the draw: the gate's comparison (each gradient's error
against the float64 oracle, divided by the trusted kernel's error on the same inputs) for chunkwise backwards behind
the forward a training step runs, on several adversarial draws (seeds), each judged alone (the gate pools seeds 1,
3, 4 and 5: autotune.gate.GPU_DRAWS).

    python bench/tools/gate_spread.py [--S 4080] [--seeds 1 2 3 4 5 6] [--device cuda] [--dtype bfloat16]

Candidates: the H200 database's head-128 entry of the longer shapes (fused kernels, states reused, weights on v,
value tiles of 128) and its 7B entry (split kernels, states reused, weights on k, 3 stages, per-chunk weights
first), and that 7B entry with one knob changed, both entries behind a training forward that stores its states as
planes with their state buffers as planes too, and the fused kernels at 7B; the backward's default at both layouts;
and three known faults the gate must keep failing ("fault:" labels): 16-bit state buffers in the backward, and
behind a training forward that forms its decay matrix from differences of prefix sums or n on the tensor cores.
--raw-condition draws as the gate did before autotune.gate.well_conditioned (tokens whose normaliser cancels by
hundreds kept). On the CPU it runs under Triton's interpreter (fp16, small S).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPLIT_7B = {"kernels": "split", "states": "reuse", "dstate_gates": "pre", "num_stages": 3, "dhhv_tile": 64}
CANDIDATES = {  # label: layout (DHQK, DHHV), chunkwise backward knobs over the default (and "kernels")
    "head 128, fused, reuse, weights on v": ((128, 128), {"kernels": "fused", "states": "reuse",
                                                          "states_weighting": "v", "dhhv_tile": 128}),
    "7B, split, reuse, weights on k": ((256, 512), dict(SPLIT_7B, states_weighting="k")),
    "7B, the same, 1 stage": ((256, 512), dict(SPLIT_7B, states_weighting="k", num_stages=1)),
    "7B, the same, dv value tiles of 64": ((256, 512), dict(SPLIT_7B, states_weighting="k", dv_dhhv_tile=64)),
    "7B, the same, states recomputed": ((256, 512), dict(SPLIT_7B, states="recompute")),
    "7B, fused, reuse": ((256, 512), {"kernels": "fused", "states": "reuse"}),
    "7B, split, reuse, weights on k, fp32 state buffers": ((256, 512), dict(SPLIT_7B, states_weighting="k",
                                                                            state_buffers="float32")),
    "head 128, fused, reuse, fp32 state buffers": ((128, 128), {"kernels": "fused", "states": "reuse",
                                                                "dhhv_tile": 128, "state_buffers": "float32"}),
    "head 128, fused, default knobs": ((128, 128), {"kernels": "fused"}),
    "7B, split, reuse, weights on k, forward and state buffers as planes": ((256, 512), dict(
        SPLIT_7B, states_weighting="k", state_buffers="planes")),
    "head 128, fused, reuse, weights on v, forward and state buffers as planes": ((128, 128), {
        "kernels": "fused", "states": "reuse", "states_weighting": "v", "dhhv_tile": 128, "state_buffers": "planes"}),
    "7B, split, default knobs": ((256, 512), {"kernels": "split"}),
    "fault: 7B, split, reuse, weights on k, 16-bit state buffers": ((256, 512), dict(SPLIT_7B, states_weighting="k",
                                                                                  state_buffers="input")),
    "fault: 7B, split, default knobs, forward decay from prefix differences": ((256, 512), {"kernels": "split"}),
    "fault: 7B, split, default knobs, forward n on the tensor cores": ((256, 512), {"kernels": "split"}),
}  # fmt: skip


def faulty_forward(label: str):
    """The training forward's fault a "fault: ... forward" candidate runs behind, or the planes forward of a
    "... forward ... as planes" candidate (a context), or none."""
    from contextlib import nullcontext
    from unittest import mock

    from autotune.launch import chunkwise

    if "prefix differences" in label:
        return mock.patch.object(chunkwise, "segment_sums", lambda q, saved: q.dtype == chunkwise.torch.float32)
    if "forward and state buffers as planes" in label:  # not a fault: the training forward stores planes
        return mock.patch.object(chunkwise, "TRAINING_STATES", "planes")
    if "tensor cores" in label:
        return mock.patch.dict(chunkwise.TRAINING_PRECISION, states_n="dot", states_weighting="k")  # n on the tensor
        # cores needs the weights on k
    return nullcontext()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=4080)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--only", default="", help="the candidates whose label contains one of these (';' between)")
    ap.add_argument(
        "--bw-segment-sums",
        action="store_true",
        help="the chunkwise backward's decay matrices from "
        "segment sums for 16-bit inputs too (launch.chunkwise_bw.segment_sums)",
    )
    ap.add_argument("--raw-condition", action="store_true", help="draws without gate.well_conditioned")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from autotune import families, gate, measure
    from autotune.launch import chunkwise_bw
    from autotune.variants import find

    if args.bw_segment_sums:
        chunkwise_bw.segment_sums = lambda q: True
    if args.raw_condition:
        gate.well_conditioned = lambda x, cell="exp": x

    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu-interpreter"
    print(f"# {where}; {args.dtype}; B=1 NH=2 S={args.S}; adversarial draws; per gradient: the trusted kernel's "
          f"error, then the candidate's as a multiple of it (the gate passes at <= {gate.FACTOR}); draws "
          f"{'without' if args.raw_condition else 'with'} gate.well_conditioned")  # fmt: skip
    names = measure.GRADIENTS
    for label, ((K, V), knobs) in CANDIDATES.items():
        if not any(part in label for part in args.only.split(";")):
            continue
        knobs = dict(knobs)
        bw = find("chunkwise_bw.py.j2", cell="exp", kernels=knobs.pop("kernels"))
        job = measure.Job(bw.name, dict(families.default_config(bw, K, V), **knobs), 1, 2, args.S, K, V, args.dtype,
                          args.device)  # fmt: skip
        trusted = measure._runner(measure.trusted_job(job))
        with faulty_forward(label):  # the runner fixes its forward's configuration when made
            run = measure._runner(job)
        ratios = {n: [] for n in names}
        pool = {seed for kind, seed in gate.GPU_DRAWS if kind == "adversarial"}
        pooled = {n: ([], []) for n in names}  # the gate's pooled draws: (candidate, truth), (trusted, truth) pairs
        for seed in args.seeds:
            x = gate.draw_inputs("adversarial", 1, 2, args.S, K, V, dtype=getattr(torch, args.dtype),
                                 device=args.device, seed=seed)  # fmt: skip
            truth, ref = measure._oracle(job, x), trusted(x)
            with faulty_forward(label):
                got = run(x)
            row = []
            for n, t, r, g in zip(names, truth, ref, got):
                ref_err, err = gate.relative_error(r, t), gate.relative_error(g, t)
                ratios[n].append(err / ref_err)
                if seed in pool:
                    pooled[n][0].append((g, t))
                    pooled[n][1].append((r, t))
                row.append(f"{n} {ref_err:.3g} x{err / ref_err:.2f}")
            print(f"{label}, seed {seed}: " + "  ".join(row), flush=True)
        print(f"{label}: ratio range over seeds " + "  ".join(
            f"{n} {min(r):.2f}-{max(r):.2f}" for n, r in ratios.items()), flush=True)  # fmt: skip
        if all(pooled[n][0] for n in names):
            print(f"{label}: the gate's pool (seeds {sorted(pool & set(args.seeds))}) " + "  ".join(
                f"{n} x{gate._pooled_error(c) / gate._pooled_error(r):.2f}" for n, (c, r) in pooled.items()) + "\n",
                flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
