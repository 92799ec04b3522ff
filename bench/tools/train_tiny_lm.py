"""A short training run of a tiny mLSTM language model on synthetic data, with a native and a generated kernel from
the same initialisation and the same batches: the loss curves must track each other (issue 4's training check).

Task: the first half of each sequence walks a fixed sparse Markov chain (4 successors per token, so its best loss
is ln 4); the second half copies the first, which needs the matrix memory (best loss 0).
bf16 autocast, AdamW. Prints a table and writes JSON to --out. Usage (GPU):
    python bench/tools/train_tiny_lm.py --steps 300 --out train.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from autotune.torch import get_mlstm_kernel


class MLSTMLayer(nn.Module):
    def __init__(self, d: int, heads: int, kernel: str):
        super().__init__()
        self.heads, self.dh, self.kernel = heads, d // heads, get_mlstm_kernel(kernel)
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.gates = nn.Linear(d, 2 * heads)
        nn.init.constant_(self.gates.bias[heads:], 3.0)  # forget gates start near 1
        self.out = nn.Linear(d, d)

    def forward(self, x):
        B, S, d = x.shape
        y = self.norm(x)
        q, k, v = self.qkv(y).view(B, S, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        i, f = self.gates(y).float().view(B, S, 2, self.heads).permute(2, 0, 3, 1)
        h = self.kernel(q, k, v, i.contiguous(), f.contiguous(), chunk_size=64)
        return x + self.out(h.transpose(1, 2).reshape(B, S, d).to(x.dtype))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, layers: int, kernel: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(MLSTMLayer(d, heads, kernel) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def batches(steps: int, B: int, S: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, 4), generator=g)
    for _ in range(steps):
        first = torch.empty(B, S // 2, dtype=torch.long)
        first[:, 0] = torch.randint(0, vocab, (B,), generator=g)
        for t in range(1, S // 2):
            first[:, t] = successors[first[:, t - 1], torch.randint(0, 4, (B,), generator=g)]
        yield torch.cat([first, first], dim=1)


def train(kernel: str, args) -> list[float]:
    torch.manual_seed(args.seed)
    model = TinyLM(args.vocab, args.d, args.heads, args.layers, kernel).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses = []
    for tokens in batches(args.steps, args.batch, args.seq, args.vocab, args.seed):
        tokens = tokens.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default="chunkwise--native_custbw,chunkwise--triton_xl_chunk,chunkwise--triton_auto")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    curves, seconds = {}, {}
    for kernel in args.kernels.split(","):
        start = time.perf_counter()
        curves[kernel] = train(kernel, args)
        seconds[kernel] = time.perf_counter() - start
    names = list(curves)
    base = curves[names[0]]
    print(f"{'step':>5} " + " ".join(f"{n.split('--')[-1]:>16}" for n in names))
    for s in list(range(0, args.steps, max(1, args.steps // 15))) + [args.steps - 1]:
        print(f"{s:>5} " + " ".join(f"{curves[n][s]:>16.4f}" for n in names))
    summary = {}
    for n in names[1:]:
        diff = [abs(a - b) for a, b in zip(curves[n], base)]
        tail = slice(-50, None)
        summary[n] = {"max_abs_diff": max(diff), "mean_abs_diff_last50": sum(diff[tail]) / len(diff[tail]),
                      "final": curves[n][-1], "final_baseline": base[-1]}  # fmt: skip
        print(f"{n} vs {names[0]}: max |diff| {max(diff):.4f}, mean |diff| over the last 50 steps "
              f"{summary[n]['mean_abs_diff_last50']:.4f}, final {curves[n][-1]:.4f} vs {base[-1]:.4f}")  # fmt: skip
    print("seconds per run: " + ", ".join(f"{n}: {t:.1f}" for n, t in seconds.items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "curves": curves, "seconds": seconds, "summary": summary}, fh)


if __name__ == "__main__":
    main()
