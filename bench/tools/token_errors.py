"""Where a forward's error lies in the gate's draws: for each draw, each form's relative error of h against the
float64 oracle beside the trusted kernel's, and the tokens that carry most of it, each with its share of the
draw's squared error, |h_t| against the draw's root-mean-square |h|, the condition of its normaliser
(sum |terms| / |s_t|, autotune.gate._normaliser) and |s_t| / floor_t (the denominator is s_t above 1).

    python bench/tools/token_errors.py [--dtype float32] [--heads 128] [--seeds 1 3] [--S 4096] [--top 5]

Forms: the fused forward's default (16-bit state in its product), its fp32 state, the two-pass forward's default
(chunks of 64) and the same with chunk_intra = 128 (upstream's xl_chunk). On the CPU it runs under Triton's
interpreter (slow at 4,096 tokens: minutes a form).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    device = "cuda" if os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"
    import torch

    from autotune import families, gate, measure
    from autotune.variants import find

    D, dtype = args.heads, getattr(torch, args.dtype)
    S = measure.gate_length(args.S) if device == "cuda" else args.S
    print(f"# {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (interpreter)'}; torch {torch.__version__}; "
          f"{args.dtype}, D={D}, S={S}")  # fmt: skip

    def job_of(template, state, **change):
        variant = find(template, cell="exp", state=state)
        config = dict(families.default_config(variant, D, D), **change)
        return measure.Job(variant.name, config, 1, 2, S, D, D, args.dtype, device)

    forms = {
        "fused, 16-bit state product": job_of("chunkwise_fused_fw.py.j2", "input"),
        "fused, fp32 state": job_of("chunkwise_fused_fw.py.j2", "float32"),
        "two-pass, chunks 64/64": job_of("chunkwise_twopass_fw.py.j2", "input", chunk_inter=64, chunk_intra=64),
        "two-pass, chunks 64/128": job_of("chunkwise_twopass_fw.py.j2", "input", chunk_inter=64, chunk_intra=128),
    }
    first = next(iter(forms.values()))
    trusted_job = measure.trusted_job(first)
    runs = {"trusted (parallel)": measure._named(trusted_job, measure._runner(trusted_job))}
    runs.update({name: measure._named(job, measure._runner(job)) for name, job in forms.items()})
    for seed in args.seeds:
        x = gate.draw_inputs("adversarial", 1, 2, S, D, D, dtype=dtype, device=device, seed=seed)
        truth = measure._oracle(replace(first, device=device), x)[0]
        s, abs_sum, floor, _ = gate._normaliser(x)
        condition = abs_sum / s.abs().clamp_min(1e-300)
        ratio = s.abs() / floor
        rms = truth.pow(2).mean().sqrt()
        print(f"seed {seed} (spikes at tokens {S // 3} and {S // 2})")
        for name, run in runs.items():
            h = run(x)["h"].double()
            sq = (h - truth).pow(2).sum(-1)  # (B, NH, S)
            share = sq / sq.sum()
            top = torch.topk(share.flatten(), args.top)
            tokens = []
            for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                head, t = divmod(index, S)
                tokens.append(f"h{head} t{t} {value:.0%} |h| {truth[0, head, t].norm() / rms / D**0.5:.1f}x "
                              f"cond {condition[0, head, t]:.3g} ratio {ratio[0, head, t]:.3g}")  # fmt: skip
            print(f"  {name:30s} rel {gate.relative_error(h, truth):.3g}  " + "; ".join(tokens), flush=True)


if __name__ == "__main__":
    main()
