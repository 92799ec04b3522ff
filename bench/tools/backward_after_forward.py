"""Which forward feeds a chunkwise backward its error: the default chunkwise backward's gradient errors (against the
float64 oracle) behind several forwards, next to the trusted parallel forward + backward, and the tokens that carry
the extra dq error. Behind docs/hazards.md, "n for a backward".

    python bench/tools/backward_after_forward.py [--S 2048] [--dtype float16] [--device cpu]

On the CPU it runs under Triton's interpreter (about 30 minutes at the default shape on two cores; fp16, since the
interpreter mis-computes bf16 dots); on a GPU pass --device cuda --dtype bfloat16.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=2048)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from autotune import families, gate, measure
    from autotune.launch import chunkwise, chunkwise_bw, parallel
    from autotune.variants import find

    K, V, dt = 256, 512, getattr(torch, args.dtype)
    bw = find("chunkwise_bw.py.j2", cell="exp", kernels="fused")
    cfg = families.default_config(bw, K, V)
    job = measure.Job(bw.name, cfg, 1, 2, args.S, K, V, args.dtype, args.device)
    x = gate.draw_inputs("model", 1, 2, args.S, K, V, dtype=dt, device=args.device, seed=2)
    truth = measure._oracle(job, x)
    inputs = [x[k] for k in "qkvif"]
    names = ("dq", "dk", "dv", "di", "df")

    def errors(grads) -> str:
        return " ".join(f"{n} {gate.relative_error(a, t):.3g}" for n, a, t in zip(names, grads, truth))

    def behind(variant, config, **kw):
        saved = {}
        fw = parallel.parallel_fw if variant.family == "parallel_fw" else chunkwise.chunkwise_fw
        h, _ = fw(*inputs, variant=variant, config=config, saved=saved, **kw)
        return chunkwise_bw.chunkwise_bw(*inputs, None, None, None, h, saved["s"], saved["mt"], x["dh"], None, None,
                                         None, None, variant=bw, config=cfg, borders=None)[:5]  # fmt: skip

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu-interpreter"
    print(f"# {name}; {args.dtype}; B=1 NH=2 S={args.S} {K}/{V}; model draw; errors against the float64 oracle")
    trusted = measure._runner(measure.trusted_job(job))(x)
    print(f"{'trusted: parallel forward + backward':44s} {errors(trusted)}", flush=True)
    two = find(chunkwise.TWOPASS, cell="exp", state="input")
    two_cfg = dict(families.default_config(two, K, V), chunk_inter=64, chunk_intra=64)
    pfw = find("parallel_fw.py.j2", cell="exp")
    rows = {  # label: forward variant, configuration, launcher options
        "chunkwise bw behind the two-pass forward": (two, two_cfg, {}),  # a training step's: n summed in fp32
        "  the same, n on the tensor cores (dot)": (two, dict(two_cfg, states_n="dot"), {"n_in_fp32": False}),
        "chunkwise bw behind the parallel forward": (pfw, families.default_config(pfw, K, V), {}),
    }
    grads = {}
    for label, (variant, config, kw) in rows.items():
        grads[label] = behind(variant, config, **kw)
        print(f"{label:44s} {errors(grads[label])}", flush=True)
    ours = grads["  the same, n on the tensor cores (dot)"][0].double()
    extra = ((ours - truth[0]).norm(dim=-1) ** 2 - (trusted[0].double() - truth[0]).norm(dim=-1) ** 2)[0]
    top = torch.topk(extra.flatten(), 8)
    print(
        f"n on the tensor cores: share of dq's extra squared error on its 8 worst tokens: "
        f"{(top.values.sum() / extra.sum()).item():.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
