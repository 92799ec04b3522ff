"""What a training step costs in two source trees on one GPU: forward+backward of ``chunkwise--triton_auto`` at the
7B and head-128 layouts (65,536 tokens each, bf16; ``--layout 7b-long``: the 7B layout's tokens as one sequence,
B=1), timed and split by GPU kernel under torch.profiler, each tree in its own process. The databases are the same
for every tree: ``--db FILE`` (default the packaged H200 database) is given to each as its user database, its GPU
name rewritten to this GPU's; ``--packaged`` adds a run of the first tree with only its packaged databases (no user
database).

    python bench/tools/time_step_trees.py --tree .probe/old_tree --tree . [--packaged] [--db FILE]   (on a GPU)
    python bench/tools/time_step_trees.py --tree . --layout 7b --layout 7b-long     (batched against one sequence)

It answers "what did a change to the kernels cost the step" with both sides measured in the same call. Prints a
table per layout: the step's median time per tree, then the kernels that take the most time in any tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = {  # (B, NH, S, DHQK, DHHV)
    "7b": (32, 8, 2048, 256, 512),
    "head128": (32, 32, 2048, 128, 128),
    "7b-long": (1, 8, 65536, 256, 512),  # one long sequence: the tokens of "7b", B=1 (asked for by --layout)
}
DEFAULT_LAYOUTS = ("7b", "head128")

CHILD = r"""
import json, sys, torch, triton.testing
from torch.profiler import ProfilerActivity, profile
from autotune.torch import get_mlstm_kernel
B, NH, S, K, V = json.loads(sys.argv[1])
g = torch.Generator(device="cuda").manual_seed(0)
def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype).requires_grad_(True)
x = dict(q=rnd(B, NH, S, K), k=rnd(B, NH, S, K), v=rnd(B, NH, S, V), i=rnd(B, NH, S, scale=2.0, dtype=torch.float32),
         f=(torch.randn(B, NH, S, generator=g, device="cuda") * 2.0 + 3.0).requires_grad_(True))
kernel = get_mlstm_kernel("chunkwise--triton_auto")
w = torch.randn(B, NH, S, V, generator=g, device="cuda").to(torch.bfloat16)
def step():
    for t in x.values():
        t.grad = None
    torch.autograd.backward(kernel(**x, chunk_size=64), w)
step()
ms = triton.testing.do_bench(step, warmup=5, rep=200, return_mode="median")
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
kernels = {}
for e in prof.key_averages():
    us = getattr(e, "self_device_time_total", 0.0)
    if us > 0:
        kernels[e.key[:70]] = us / 1e3
print("RESULT " + json.dumps({"ms": ms, "kernels": kernels}))
"""


def run_tree(tree: Path, layout: tuple, user_db: Path | None) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{tree.resolve()}:{os.environ.get('PYTHONPATH', '')}")
    env["MLSTM_AUTOTUNE_DB"] = str(user_db) if user_db else tempfile.mkdtemp()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(layout)], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", required=True, help="a source tree (autotune/ at its top); repeat")
    ap.add_argument("--db", default=str(Path(__file__).resolve().parents[2] / "tuning_db" / "NVIDIA_H200.json"))
    ap.add_argument("--packaged", action="store_true", help="also the first tree with its packaged databases only")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), action="append")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from autotune.db import file_name

    gpu = torch.cuda.get_device_name()
    user = Path(tempfile.mkdtemp())
    data = json.loads(Path(args.db).read_text())
    data["gpu"] = gpu
    (user / file_name(gpu)).write_text(json.dumps(data))
    runs = [(f"{tree} with {Path(args.db).name}", Path(tree), user) for tree in args.tree]
    if args.packaged:
        runs.append((f"{args.tree[0]} with its packaged databases", Path(args.tree[0]), None))
    print(f"# {gpu}; torch {torch.__version__}; forward+backward of chunkwise--triton_auto, bf16, median of do_bench")
    results = {}
    for name in args.layout or DEFAULT_LAYOUTS:
        layout = LAYOUTS[name]
        print(f"\n## {name}: B, NH, S, DHQK, DHHV = {layout}")
        rows = {label: run_tree(tree, layout, db) for label, tree, db in runs}
        results[name] = rows
        for label, row in rows.items():
            print(f"{label:60s} " + (f"{row['ms']:8.2f} ms" if "ms" in row else f"failed: {row['error']}"))
        ok = [r for r in rows.values() if "kernels" in r]
        top = sorted({k for r in ok for k in r["kernels"]}, key=lambda k: -max(r["kernels"].get(k, 0) for r in ok))
        for kernel in top[:10]:
            print(f"  {kernel:70s} " + " ".join(f"{r['kernels'].get(kernel, 0):7.2f}" for r in ok))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
