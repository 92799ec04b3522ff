"""The parallel and two-pass forwards' arithmetic in PyTorch, fp32 with their kernels' bf16 rounding points, next
to the Triton kernels on the same inputs: whether a kernel's h error is what its rounding points explain.

    python bench/tools/emulated_rounding.py [--device cpu] [--layout head128|head64|7b] [--S 4080] [--seeds 1 2 3]

Rounding points emulated (bf16 inputs; the kernels' defaults of a training step): the parallel form rounds each
P_tj = (q_t . k_j) D_tj / sqrt(DHQK) to bf16 before P v; the two-pass form rounds the same P of its chunk, forms n
in fp32, and either weights k and rounds the weighted keys before k^T v and stores C in bf16 (the default), or
weights v, rounds the weighted values and keeps C in fp32. Everything else is fp32 (TF32 off); the truth is the
float64 parallel form. On the CPU only the emulations run (seeds of the CPU generator); with --device cuda the Triton
parallel forward and the two-pass forward of a training step run beside them on the gate's adversarial draw, and
the tokens where a kernel is furthest beyond its emulation are listed with their place in the chunk and the
condition of their normaliser (sum_j |P_tj| / |s_t|).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

L = 64  # the chunk of the two-pass form (chunk_inter = chunk_intra)


def bf(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def _log_decay(lf: torch.Tensor, li: torch.Tensor) -> torch.Tensor:
    """[NH, S] -> [NH, S, S] in float64: F_t - F_j + li_j for j <= t, -inf above the diagonal."""
    cum = torch.cumsum(lf.double(), -1)
    S = lf.shape[-1]
    causal = torch.ones(S, S, dtype=torch.bool, device=lf.device).tril()
    return (cum[..., :, None] - cum[..., None, :] + li.double()[..., None, :]).masked_fill(~causal, float("-inf"))


def truth(q, k, v, lf, li, scale):
    """h in float64, the condition of each token's normaliser, and the size of dq_t per unit of ds_t (scale |n_t|,
    n_t stabilised) and h's denominator: a backward reads h only through ds_t = -(dh_t . h_t) / den_t."""
    log_D = _log_decay(lf, li)
    D = torch.exp(log_D - log_D.amax(-1, keepdim=True))
    P = (q.double() @ k.double().transpose(-1, -2)) * scale * D
    s = P.sum(-1)
    den = torch.maximum(s.abs(), torch.exp(-log_D.amax(-1))) + 1e-6
    return (P @ v.double()) / den[..., None], P.abs().sum(-1) / s.abs(), scale * (D @ k.double()).norm(dim=-1), den


def dq_from_h(h, h64, dh, dq_per_ds, den) -> float:
    """The norm of the dq error that h's error causes through ds (the rest of a backward's error aside)."""
    return (((dh.double() * (h.double() - h64)).sum(-1) / den * dq_per_ds) ** 2).sum().sqrt().item()


def parallel_form(q, k, v, lf, li, scale):
    log_D = _log_decay(lf, li).float()
    m = log_D.amax(-1)
    P = (q.float() @ k.float().transpose(-1, -2)) * scale * torch.exp(log_D - m[..., None])
    den = torch.maximum(P.sum(-1).abs(), torch.exp(-m)) + 1e-6
    return bf((bf(P) @ v.float()) / den[..., None])


def twopass_form(q, k, v, lf, li, scale, *, weights_on_v: bool):
    NH, S, K = q.shape
    dev = q.device
    C = torch.zeros(NH, K, v.shape[-1], device=dev)
    n = torch.zeros(NH, K, device=dev)
    m = torch.full((NH,), float("-inf"), device=dev)
    hs = []
    for c0 in range(0, S, L):
        part = slice(c0, min(c0 + L, S))
        qc, kc, vc = q[:, part].float(), k[:, part].float(), v[:, part].float()
        lfc, lic = lf[:, part].float(), li[:, part].float()
        T = qc.shape[1]
        cum = torch.cumsum(lfc, -1)
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
        log_D = (cum[..., :, None] - cum[..., None, :] + lic[..., None, :]).masked_fill(~causal, float("-inf"))
        log_D0 = cum + m[:, None]
        mt = torch.maximum(log_D.amax(-1), log_D0)
        D, D0 = torch.exp(log_D - mt[..., None]), torch.exp(log_D0 - mt)
        P = (qc @ kc.transpose(-1, -2)) * scale * D
        s = P.sum(-1) + D0 * scale * (qc @ n[..., None])[..., 0]
        num = bf(P) @ vc + (D0 * scale)[..., None] * (qc @ (C if weights_on_v else bf(C)))
        hs.append(bf(num / (torch.maximum(s.abs(), torch.exp(-mt)) + 1e-6)[..., None]))
        g = (cum[:, -1:] - cum) + lic  # each token's log weight at the chunk's end
        g_max = g.amax(-1)
        w = torch.exp(g - g_max[:, None])
        if weights_on_v:
            C_chunk = kc.transpose(-1, -2) @ bf(vc * w[..., None])
        else:
            C_chunk = bf(kc * w[..., None]).transpose(-1, -2) @ vc
        m_new = torch.maximum(cum[:, -1] + m, g_max)
        decay, weight = torch.exp(cum[:, -1] + m - m_new), torch.exp(g_max - m_new)
        C = decay[:, None, None] * C + weight[:, None, None] * C_chunk
        n = decay[:, None] * n + weight[:, None] * (kc * w[..., None]).sum(-2)
        m = m_new
    return torch.cat(hs, 1)


def kernels(x: dict, K: int, V: int) -> dict:
    """The Triton parallel forward and the two-pass forward as a training step runs it (``saved`` given), and the
    two-pass one with fp32 states and the weights on v, h of head-major [NH, S, V]."""
    from autotune import families
    from autotune.launch import chunkwise, parallel
    from autotune.variants import find

    args = [x[n] for n in "qkvif"]
    pfw = find("parallel_fw.py.j2", cell="exp")
    two, two32 = (find(chunkwise.TWOPASS, cell="exp", state=s) for s in ("input", "float32"))
    config = dict(families.default_config(two, K, V), chunk_inter=L, chunk_intra=L)
    on_v = dict(config, states_weighting="v", states_n="sum")
    return {
        "parallel": parallel.parallel_fw(*args, variant=pfw, config=families.default_config(pfw, K, V), saved={})[0],
        "two-pass bf16 C": chunkwise.chunkwise_fw(*args, variant=two, config=config, saved={})[0],
        "two-pass fp32 C, v": chunkwise.chunkwise_fw(*args, variant=two32, config=on_v, saved={})[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layout", choices=("7b", "head128", "head64"), default="head128")
    ap.add_argument("--S", type=int, default=4080)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    from autotune import gate

    K, V = {"7b": (256, 512), "head128": (128, 128), "head64": (64, 64)}[args.layout]
    scale = K**-0.5
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (emulations only)"
    print(f"# {where}; bf16 inputs, {K}/{V}, B=1 NH=2 S={args.S}, adversarial draw; per form: h's relative error, "
          f"and the norm of the dq error it causes through ds_t = -(dh_t . h_t) / den_t")  # fmt: skip
    for seed in args.seeds:
        x = gate.draw_inputs("adversarial", 1, 2, args.S, K, V, dtype=torch.bfloat16, device=args.device, seed=seed)
        q, k, v = (x[n][0] for n in "qkv")
        lf, li = F.logsigmoid(x["f"][0].float()), x["i"][0].float()
        h64, cond, dq_per_ds, den = truth(q, k, v, lf, li, scale)
        dh = x["dh"][0]
        emulated = {
            "parallel": parallel_form(q, k, v, lf, li, scale),
            "two-pass bf16 C": twopass_form(q, k, v, lf, li, scale, weights_on_v=False),
            "two-pass fp32 C, v": twopass_form(q, k, v, lf, li, scale, weights_on_v=True),
        }
        ran = {n: h[0] for n, h in kernels(x, K, V).items()} if args.device == "cuda" else {}

        def err(h, h64=h64, dh=dh, dq_per_ds=dq_per_ds, den=den):  # h's relative error, the dq error it causes
            return f"{((h.double() - h64).norm() / h64.norm()).item():.3g} {dq_from_h(h, h64, dh, dq_per_ds, den):.3g}"

        print(f"seed {seed} (max condition {cond.max().item():.3g}): " + "; ".join(
            f"{n}: emulated {err(h)}" + (f", kernel {err(ran[n])}" if n in ran else "")
            for n, h in emulated.items()))  # fmt: skip
        for name, h in ran.items():
            ours, emul = (h.double() - h64).flatten(0, 1).norm(dim=-1), (emulated[name].double() - h64).flatten(0, 1)
            emul = emul.norm(dim=-1)
            worst = (ours - emul).topk(4).indices.tolist()
            print(f"  {name}, tokens furthest beyond the emulation: " + "; ".join(
                f"head {t // args.S} token {t % args.S} ({t % args.S % L} in its chunk), condition "
                f"{cond.flatten()[t].item():.3g}, |err| {ours[t].item():.3g} against {emul[t].item():.3g}"
                for t in worst))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
