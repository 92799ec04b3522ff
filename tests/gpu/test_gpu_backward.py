"""GPU checks of the generated backward (marked gpu; skipped without a GPU): every backward variant in bf16 and fp32
at the realistic head layouts, with recomputed and reused states, and the registry entries' gradients at forward
chunk sizes 64 ... 512.

The oracle is the float64 native exact backward on the GPU (the CPU tests hold it to 1e-10 against autograd through
the float64 recurrent definition). Limits: docs/math.md §7 (bf16 2e-2); fp32 takes the larger of 1e-5 and 10x the error
of the native backward evaluated in fp32 (see tests/test_backward_kernels.py for why).
Run on an H200 (log under bench/logs/gpu_tests/):  python -m pytest -v -s -m gpu tests/gpu/test_gpu_backward.py
"""

from __future__ import annotations

import pytest
import torch
from helpers import LIMITS, UNIT_ROUNDOFF, rel_err, widened_by

from autotune import families
from autotune.launch import chunkwise as launch_fw
from autotune.launch import chunkwise_bw as launch_bw
from autotune.launch import parallel_bw as launch_pbw
from autotune.reference import random_inputs
from autotune.torch import get_mlstm_kernel
from autotune.torch.native.chunkwise import _chunkwise_kernel
from autotune.variants import VARIANTS, find

pytestmark = pytest.mark.gpu

BACKWARD = [v for v in VARIANTS if v.family in ("chunkwise_bw", "parallel_bw")]
NAMES = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")
SHAPES = [(1, 8, 2048, 256, 512), (2, 32, 2048, 128, 128), (2, 3, 1000, 96, 192)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _id(shape):
    return "B{}-NH{}-S{}-DQK{}-DV{}".format(*shape)


def _inputs(shape, dtype, cell):
    x = random_inputs(*shape, dtype=dtype, gate_dtype=torch.float32, with_states=True, device="cuda")
    if cell == "sig":
        x.pop("m_initial")
    return x


def _weights(x, cell):
    B, NH, S, DHQK = x["q"].shape
    DHHV = x["v"].shape[-1]
    kw = dict(device="cuda", dtype=torch.float32)
    w = {"h": torch.randn(B, NH, S, DHHV, **kw), "C": torch.randn(B, NH, DHQK, DHHV, **kw),
         "n": torch.randn(B, NH, DHQK, **kw)}  # fmt: skip
    if cell == "exp":
        w["m"] = torch.randn(B, NH, 1, **kw)
    return w


def _native_grads(x, weights, cell, dtype):
    """Exact native chunkwise backward in ``dtype`` (float64: the oracle)."""
    xd = {k: v.detach().to(dtype).requires_grad_(True) for k, v in x.items()}
    h, states = _chunkwise_kernel(*(xd.get(n) for n in NAMES), True, 1e-6, 64, cell=cell, normalize=True,
                                  custom_backward=True)  # fmt: skip
    outs = dict(zip(("h", "C", "n", "m"), (h, *states)))
    loss = sum((outs[k].double() * w.double()).sum() for k, w in weights.items())
    return {f"d{k}": g for k, g in zip(xd, torch.autograd.grad(loss, list(xd.values())))}


def _limits(dtype, x, weights, cell, ref):
    """The limit of docs/math.md, widened like helpers.conditioning_limits: 10x the change in the fp64 gradients when
    every input is perturbed by the dtype's unit roundoff (two draws, on the GPU); for fp32 also 10x the native fp32
    error. Why: bench/tools/diagnose_bf16_backward.py shows bf16 errors that agree across all kernel configurations to
    two digits for one input draw and change 4x between draws, i.e. set by the inputs' conditioning."""
    limits = dict.fromkeys(ref, LIMITS[dtype])
    gen = torch.Generator(device="cuda").manual_seed(1234)
    for _ in range(2):
        perturbed = {k: v.double() * (1 + UNIT_ROUNDOFF[dtype] * torch.randn(v.shape, generator=gen, device="cuda",
                     dtype=torch.float64)) for k, v in x.items()}  # fmt: skip
        moved = _native_grads(perturbed, weights, cell, torch.float64)
        limits = widened_by(limits, moved, ref)
    if dtype == torch.float32:
        native = _native_grads(x, weights, cell, torch.float32)
        limits = widened_by(limits, native, ref)
    return limits


# (L, states, dtype): chunks of 64 recomputed in both dtypes; reused states and chunks of 128 in bf16 (in fp32 the
# fused kernel at L=128 needs 288 KiB of shared memory, more than an H200 has: a configuration the tuner prunes)
CASES = [(64, "recompute", torch.bfloat16), (64, "recompute", torch.float32), (64, "reuse", torch.bfloat16),
         (128, "recompute", torch.bfloat16)]  # fmt: skip


# the parallel backward has no chunk states to reuse: those pairs are not generated (rather than skipped)
PAIRS = [(v, c) for v in BACKWARD for c in CASES if not (v.family == "parallel_bw" and c[1] == "reuse")]


@pytest.mark.parametrize("shape", SHAPES, ids=[_id(s) for s in SHAPES])
@pytest.mark.parametrize("variant,L,states,dtype", [(v, *c) for v, c in PAIRS],
                         ids=[f"{v.name}-L{c[0]}-{c[1]}-{str(c[2])[6:]}" for v, c in PAIRS])  # fmt: skip
def test_backward_variant(variant, shape, dtype, L, states, check):
    _check_backward(variant, shape, dtype, L, states, check)


# configurations of the kinds the tuner picks on the H200 (tuning_db/reports/NOTES.md), with the split dv kernel's
# own tile (dv_dhhv_tile) and the reverse recurrence's weights computed first (dstate_gates "pre"), checked where
# programs run concurrently
TUNED_STYLE = [("split", {"dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 128, "dstate_gates": "pre"}),
               ("split", {"dhhv_tile": 128, "num_stages": 2, "dv_dhhv_tile": 32}),
               ("fused", {"dhhv_tile": 128, "dstate_gates": "pre", "states_warps": 8})]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=[_id(s) for s in SHAPES])
@pytest.mark.parametrize("kernels,changes", TUNED_STYLE, ids=[f"{k}-{sorted(c.items())}" for k, c in TUNED_STYLE])
def test_tuned_style_backward(kernels, changes, shape, check):
    """bf16, chunks of 64, the forward's states reused, as a tuned training step runs."""
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
    _check_backward(variant, shape, torch.bfloat16, 64, "reuse", check, changes)


def _check_backward(variant, shape, dtype, L, states, check, changes=None):
    cell = variant.params["cell"]
    x = _inputs(shape, dtype, cell)
    weights = _weights(x, cell)
    fw_variant = find(launch_fw.TWOPASS, cell=cell, state="float32")
    fw_config = dict(families.default_config(fw_variant, shape[3], shape[4]), chunk_inter=64, chunk_intra=L)
    saved = {"borders_at": L} if states == "reuse" else {}
    args = [x.get(n) for n in NAMES]
    h, last = launch_fw.chunkwise_fw(*args, variant=fw_variant, config=fw_config, return_last_states=True,
                                     saved=saved)  # fmt: skip
    if variant.family == "parallel_bw":  # query/key tiles of L
        config = dict(families.default_config(variant, shape[3], shape[4]), token_tile=L)
        launcher = launch_pbw.parallel_bw
    else:
        config, launcher = dict(families.default_config(variant, shape[3], shape[4]), chunk=L, states=states,
                                **(changes or {})), launch_bw.chunkwise_bw  # fmt: skip
    dlast = (weights["C"], weights["n"], weights.get("m", torch.zeros(shape[0], shape[1], 1, device="cuda")))
    grads = launcher(*args, h, saved["s"], saved["mt"], weights["h"].to(dtype), *dlast, last,
                                   variant=variant, config=config,
                                   borders=(saved["Cb"], saved["nb"], saved["mb"]))  # fmt: skip
    got = {f"d{n}": g for n, g in zip(NAMES, grads) if n in x}
    ref = _native_grads(x, weights, cell, torch.float64)
    limits = _limits(dtype, x, weights, cell, ref)
    target = f"{variant.name} L{L} {states}" + (f" {changes}" if changes else "")
    check(target=target, baseline="native exact backward (fp64, GPU)", dims=shape,
          dtype=dtype, pairs={k: (got[k], ref[k]) for k in ref}, limit=limits)  # fmt: skip


ENTRIES = ["chunkwise--triton_xl_chunk", "chunkwise--triton_fused", "chunkwise--triton_auto",
           "parallel--triton_limit_headdim", "chunkwise--triton_xl_chunk_siging"]  # fmt: skip


ENTRY_CASES = [(n, d, 64) for n in ENTRIES for d in ("bf16", "fp32")] + [
    ("chunkwise--triton_xl_chunk", "bf16", c) for c in (128, 256, 512)]  # fmt: skip


@pytest.mark.parametrize("name,dtype,chunk_size", ENTRY_CASES, ids=["-".join(map(str, c)) for c in ENTRY_CASES])
def test_entry_gradients(name, dtype, chunk_size, check):
    """The registry entries under autograd (dispatched forward and backward), for a plain linear loss; the forward's
    chunk size 64 ... 512 (the backward keeps its own)."""
    cell = "sig" if name.endswith("siging") else "exp"
    dtype = DTYPES[dtype]
    shape = SHAPES[0]
    x = _inputs(shape, dtype, cell)
    weights = _weights(x, cell)
    xk = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    h, states = get_mlstm_kernel(name)(**xk, return_last_states=True, chunk_size=chunk_size)
    outs = dict(zip(("h", "C", "n", "m"), (h, *states)))
    loss = sum((outs[k].float() * w).sum() for k, w in weights.items())
    got = dict(zip((f"d{k}" for k in xk), torch.autograd.grad(loss, list(xk.values()))))
    ref = _native_grads(x, weights, cell, torch.float64)
    limits = _limits(dtype, x, weights, cell, ref)
    check(target=f"{name} chunk_size={chunk_size}", baseline="native exact backward (fp64, GPU)", dims=shape,
          dtype=dtype, pairs={k: (got[k], ref[k]) for k in ref}, limit=limits)  # fmt: skip


def test_entry_under_torch_compile():
    """A training step through a Triton entry compiles with torch.compile (graph breaks allowed) and gives the
    eager gradients."""
    x = _inputs((1, 4, 512, 64, 64), torch.bfloat16, "exp")
    kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")

    def step(q, k, v, i, f):
        return kernel(q, k, v, i, f, chunk_size=64).float().square().mean()

    def grads(fn):
        xk = [x[n].clone().requires_grad_(True) for n in "qkvif"]
        fn(*xk).backward()
        return [t.grad for t in xk]

    eager, compiled = grads(step), grads(torch.compile(step))
    for e, c in zip(eager, compiled):
        assert rel_err(c, e) < 1e-3
