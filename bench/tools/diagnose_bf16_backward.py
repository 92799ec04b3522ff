"""Diagnostic (not a test): backward errors at the 7B head layout in bf16 against the fp64 native backward, for
forward output chunks (chunk_intra, LO below) of 64 / 128 and backward chunks (chunk, L below) of 64 / 128,
recomputed or reused states, two input draws.
Usage (GPU): python bench/tools/diagnose_bf16_backward.py"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "gpu"), str(ROOT)]
from helpers import rel_err  # noqa: E402
from test_gpu_backward import NAMES, _inputs, _native_grads, _weights  # noqa: E402

from autotune import families  # noqa: E402
from autotune.launch import chunkwise as launch_fw  # noqa: E402
from autotune.launch import chunkwise_bw as launch_bw  # noqa: E402
from autotune.variants import find  # noqa: E402

shape = (1, 8, 2048, 256, 512)
for seed in (0, 1):
    torch.manual_seed(seed)
    x = _inputs(shape, torch.bfloat16, "exp")
    w = _weights(x, "exp")
    ref = _native_grads(x, w, "exp", torch.float64)
    for LO, L, states, kernels in (
        (64, 64, "recompute", "fused"),
        (64, 64, "reuse", "fused"),
        (128, 64, "recompute", "fused"),
        (128, 128, "recompute", "fused"),
        (64, 64, "recompute", "split"),
    ):
        fwv = find(launch_fw.TWOPASS, cell="exp", state="float32")
        saved, args = {}, [x.get(n) for n in NAMES]
        h, last = launch_fw.chunkwise_fw(
            *args,
            variant=fwv,
            config=dict(families.default_config(fwv, 256, 512), chunk_inter=64, chunk_intra=LO),
            return_last_states=True,
            saved=saved,
        )
        bv = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
        cfg = dict(families.default_config(bv, 256, 512), chunk=L, states=states)
        g = launch_bw.chunkwise_bw(
            *args,
            h,
            saved["s"],
            saved["mt"],
            w["h"].bfloat16(),
            w["C"],
            w["n"],
            w["m"],
            last,
            variant=bv,
            config=cfg,
            borders=(saved["Cb"], saved["nb"], saved["mb"]),
        )
        errs = {n: rel_err(t, ref[f"d{n}"]) for n, t in zip(NAMES, g)}
        print(seed, LO, L, states, kernels, " ".join(f"{n[:2]}={e:.1e}" for n, e in errs.items()), flush=True)
