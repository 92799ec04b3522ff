"""Which forward feeds a chunkwise backward its error: a chunkwise backward's gradient errors (against the float64
oracle) behind several forwards, next to the trusted parallel forward + backward, and the forwards' own h errors.
Behind docs/hazards.md, "Measured on the H100 ..., and n for a backward".

    python bench/tools/backward_after_forward.py [--S 2048] [--dtype float16] [--device cpu] [--layout 7b]
        [--draw model] [--bw-config JSON]

--layout 7b (NH heads of 256/512) or head128 (128/128); --draw model or adversarial (the gate's draws, seeds 2
and 1 as the gate's second and first draw); --bw-config a JSON object of chunkwise backward knobs over the default
(e.g. '{"states": "reuse", "kernels": "split"}', "kernels" picks the variant). Rows: the backward as configured
behind the forward a training step runs (launch.chunkwise.training_forward: fp32 states, the weights on v, n in
fp32) and behind the two-pass forward in its 16-bit-state forms, then the backward recomputing its states behind the
training, two-pass, fused and parallel forwards; then h and s, mt crosswise, h's error by place in the chunk and the
tokens where a chunkwise h is furthest beyond the parallel one. On the CPU it runs under Triton's interpreter (about
an hour at S=2048 on two cores; fp16, since the interpreter mis-computes bf16 dots); on a GPU pass --device cuda
--dtype bfloat16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LAYOUTS = {"7b": (256, 512), "head128": (128, 128)}


def _terms(x: dict, head: int, t: int):
    """(q_t . k_j, log D_tj) for j <= t in float64: log D_tj = F_t - F_j + li_j, the lf of the tokens after j."""
    import torch

    q, k = x["q"][0, head, t].double(), x["k"][0, head, : t + 1].double()
    lf = torch.nn.functional.logsigmoid(x["f"][0, head, : t + 1].double())
    log_D = lf[1:].flip(0).cumsum(0).flip(0).tolist() + [0.0]
    log_D = torch.tensor(log_D, dtype=torch.float64, device=q.device) + x["i"][0, head, : t + 1].double()
    return k @ q, log_D


def condition(x: dict, head: int, t: int) -> float:
    """How much s_t = sum_j (q_t . k_j) D_tj cancels: sum_j |(q_t . k_j) D_tj| / |s_t|, in float64 (1 where nothing
    cancels; a rounding of relative size u in the terms moves s_t by up to this many u)."""
    import torch

    qk, log_D = _terms(x, head, t)
    terms = qk * torch.exp(log_D - log_D.max())
    return (terms.abs().sum() / terms.sum().abs()).item()


def true_s(x: dict, head: int, t: int, mt: float, scale: float) -> float:
    """s_t in float64 on the 16-bit inputs, stabilised by the given max state: sum_j scale (q_t . k_j) D_tj e^-mt."""
    import torch

    qk, log_D = _terms(x, head, t)
    return (scale * qk * torch.exp(log_D - mt)).sum().item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=2048)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="7b")
    ap.add_argument("--draw", choices=("model", "adversarial"), default="model")
    ap.add_argument("--bw-config", default="{}", help="JSON: chunkwise backward knobs over its default")
    ap.add_argument("--crosswise-only", action="store_true", help="skip the rows of whole forwards")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from autotune import families, gate, measure
    from autotune.launch import chunkwise, chunkwise_bw, parallel, parallel_bw
    from autotune.variants import find

    (K, V), dt = LAYOUTS[args.layout], getattr(torch, args.dtype)
    knobs = json.loads(args.bw_config)
    bw = find("chunkwise_bw.py.j2", cell="exp", kernels=knobs.pop("kernels", "fused"))
    cfg = dict(families.default_config(bw, K, V), **knobs)
    recompute = dict(cfg, states="recompute")
    L = cfg["chunk"]
    job = measure.Job(bw.name, cfg, 1, 2, args.S, K, V, args.dtype, args.device)
    seed = 2 if args.draw == "model" else 1
    x = gate.draw_inputs(args.draw, 1, 2, args.S, K, V, dtype=dt, device=args.device, seed=seed)
    truth = measure._oracle(job, x)
    h_job = measure.Job(find("parallel_fw.py.j2", cell="exp").name, {}, 1, 2, args.S, K, V, args.dtype, args.device)
    h_truth = measure._oracle(h_job, x)[0]
    inputs = [x[k] for k in "qkvif"]
    names = ("dq", "dk", "dv", "di", "df")

    def errors(grads) -> str:
        return " ".join(f"{n} {gate.relative_error(a, t):.3g}" for n, a, t in zip(names, grads, truth))

    def behind(variant, config, bw_config):
        saved = {"borders_at": L} if bw_config["states"] == "reuse" else {}
        fw = parallel.parallel_fw if variant.family == "parallel_fw" else chunkwise.chunkwise_fw
        h, _ = fw(*inputs, variant=variant, config=config, saved=saved)
        borders = (saved["Cb"], saved["nb"], saved["mb"]) if bw_config["states"] == "reuse" else None
        grads = chunkwise_bw.chunkwise_bw(*inputs, None, None, None, h, saved["s"], saved["mt"], x["dh"], None, None,
                                          None, None, variant=bw, config=bw_config, borders=borders)[:5]  # fmt: skip
        return h, grads

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu-interpreter"
    print(f"# {name}; {args.dtype}; B=1 NH=2 S={args.S} {K}/{V}; {args.draw} draw (seed {seed}); {bw.name} "
          f"{json.dumps(cfg, sort_keys=True)}; errors against the float64 oracle")  # fmt: skip
    trusted = measure._runner(measure.trusted_job(job))(x)
    print(f"{'trusted: parallel forward + backward':52s} {'':10s} {errors(trusted)}", flush=True)
    # the output's own rounding: the float64 forward's h rounded to the inputs' dtype, s and mt of the parallel
    # forward (fp32), behind the trusted backward and behind this chunkwise backward
    pfw, pbw = find("parallel_fw.py.j2", cell="exp"), find("parallel_bw.py.j2", cell="exp")
    par_saved = {}
    parallel.parallel_fw(*inputs, variant=pfw, config=families.default_config(pfw, K, V), saved=par_saved)
    h_rounded = h_truth.to(dt)
    stats = (par_saved["s"], par_saved["mt"])
    rounded = {
        "trusted backward behind the float64 h rounded": parallel_bw.parallel_bw(
            *inputs, None, None, None, h_rounded, *stats, x["dh"], None, None, None, None, variant=pbw,
            config=families.default_config(pbw, K, V))[:5],
        "this backward behind the float64 h rounded": chunkwise_bw.chunkwise_bw(
            *inputs, None, None, None, h_rounded, *stats, x["dh"], None, None, None, None, variant=bw,
            config=recompute, borders=None)[:5],
    }  # fmt: skip
    for label, grads in rounded.items():
        print(f"{label:52s} {'':10s} {errors(grads)}", flush=True)
    two, two32 = (find(chunkwise.TWOPASS, cell="exp", state=s) for s in ("input", "float32"))
    two_cfg = dict(families.default_config(two, K, V), chunk_inter=min(64, L), chunk_intra=L)
    fused = find(chunkwise.FUSED, cell="exp", state="input")
    pfw = find("parallel_fw.py.j2", cell="exp")
    sums = dict(two_cfg, states_n="sum")  # n summed in fp32
    on_v = dict(two_cfg, states_weighting="v", states_n="sum")  # the weights on v, n summed in fp32
    training = chunkwise.training_forward("exp", K, V, L)  # fp32 states, weights on v, n in fp32
    fused_cfg = dict(families.default_config(fused, K, V), chunk=L)
    fused32 = find(chunkwise.FUSED, cell="exp", state="float32")
    rows = {  # label: forward variant, configuration, backward configuration
        "behind the training forward (fp32 states, weights on v)": (*training, cfg),
        "behind the two-pass forward, bf16 states, n in fp32": (two, sums, cfg),
        "  the same, n on the tensor cores (dot)": (two, two_cfg, cfg),
        "  the same, fp32 states, weights on k": (two32, sums, cfg),
        "  the same, bf16 states, weights on v": (two, on_v, cfg),
        "recomputing, behind the training forward": (*training, recompute),
        "recomputing, behind the two-pass forward, bf16 states": (two, sums, recompute),
        "recomputing, behind the fused forward": (fused, fused_cfg, recompute),
        "recomputing, behind the fused forward, fp32 states": (fused32, fused_cfg, recompute),
        "recomputing, behind the parallel forward": (pfw, families.default_config(pfw, K, V), recompute),
    }
    for label, (variant, config, bw_config) in rows.items():
        if args.crosswise_only:
            break
        h, grads = behind(variant, config, bw_config)
        h_err = f"h {gate.relative_error(h, h_truth):.3g}"
        print(f"{label:52s} {h_err:10s} {errors(grads)}", flush=True)
    # which of the forward's outputs the backward is sensitive to: h, or the statistics s (signed normaliser sum)
    # and mt (max state), taken from a two-pass forward and the parallel one crosswise
    kept = {}
    forwards = {"two-pass": (two, sums), "training": training, "parallel": rows[
        "recomputing, behind the parallel forward"][:2]}  # fmt: skip
    for name, (variant, config) in forwards.items():
        saved = {}
        fw = parallel.parallel_fw if variant.family == "parallel_fw" else chunkwise.chunkwise_fw
        kept[name] = (fw(*inputs, variant=variant, config=config, saved=saved)[0], saved["s"], saved["mt"])
    grads_of = {}
    for h_from in forwards:
        for stats_from in forwards:
            h, s, mt = kept[h_from][0], *kept[stats_from][1:]
            grads_of[h_from, stats_from] = chunkwise_bw.chunkwise_bw(
                *inputs, None, None, None, h, s, mt, x["dh"], None, None, None, None, variant=bw, config=recompute,
                borders=None)[:5]  # fmt: skip
            label = f"recomputing, h of the {h_from}, s and mt of the {stats_from}"
            print(f"{label:63s} {errors(grads_of[h_from, stats_from])}", flush=True)
    # dq_t reads only token t's h, s and mt: the tokens where a chunkwise forward's outputs cost dq the most
    dq_err = {key: (g[0].double() - truth[0].double()).norm(dim=-1)[0] for key, g in grads_of.items()}
    for name in ("two-pass", "training"):
        excess = (dq_err[name, name] - dq_err["parallel", "parallel"]).flatten()
        print(f"tokens where dq behind the {name} forward is furthest beyond dq behind the parallel one "
              f"(|dq err| with h, s mt from: {name} both, {name} h only, {name} s mt only, parallel both; s, mt of "
              f"the {name} and the parallel forward):")  # fmt: skip
        for t in excess.topk(6).indices.tolist():
            head, tok = divmod(t, args.S)
            e = [dq_err[key][head, tok].item() for key in ((name, name), (name, "parallel"), ("parallel", name),
                                                          ("parallel", "parallel"))]  # fmt: skip
            s_n, mt_n = (kept[name][i][0, head, tok].item() for i in (1, 2))
            s_p, mt_p = (kept["parallel"][i][0, head, tok].item() for i in (1, 2))
            print(
                f"  head {head} token {tok} ({tok % L} in its chunk): "
                + " ".join(f"{v:.3g}" for v in e)
                + f"; s {s_n:.7g} / {s_p:.7g} (float64 {true_s(x, head, tok, mt_p, K**-0.5):.7g}), "
                f"mt {mt_n:.7g} / {mt_p:.7g}, floor e^-mt {math.exp(-mt_p):.4g}"
            )
    position = torch.arange(args.S, device=h_truth.device) % L
    for name, (h, _, _) in kept.items():
        e = ((h.double() - h_truth).norm(dim=-1) ** 2)[0]
        by_position = torch.stack([e[:, position == p].sum() for p in range(L)])
        print(f"{name}: h's squared error by position in the chunk: first 4 {by_position[:4].tolist()}, median "
              f"{by_position.median().item():.3g}, total {e.sum().item():.3g}")  # fmt: skip
    par_h = kept["parallel"][0].double()
    for name in ("two-pass", "training"):
        two_h = kept[name][0].double()
        worst = ((two_h - h_truth).norm(dim=-1) - (par_h - h_truth).norm(dim=-1)).flatten().topk(4).indices
        print(f"tokens where the {name} h is furthest from the truth beyond the parallel one's:")
        for t in worst.tolist():
            head, tok = divmod(t, args.S)
            e2, ep = ((hh[0, head, tok] - h_truth[0, head, tok]).norm().item() for hh in (two_h, par_h))
            s_t, mt_t = kept["parallel"][1][0, head, tok].item(), kept["parallel"][2][0, head, tok].item()
            size = h_truth[0, head, tok].norm().item()
            print(f"  head {head} token {tok} ({tok % L} in its chunk): |h| {size:.3g}, |err| {e2:.3g}, parallel's "
                  f"{ep:.3g}; s {s_t:.4g}, |s| e^mt {abs(s_t) * math.exp(mt_t):.3g}, condition of s "
                  f"{condition(x, head, tok):.3g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
