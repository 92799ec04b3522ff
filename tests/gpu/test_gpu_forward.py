"""GPU checks of every generated forward variant (marked gpu; skipped without a GPU): bf16 and fp32 at realistic
shapes, odd shapes, bf16 gates, and a tensor of more than 2^31 elements.

The oracle on the GPU is the float64 native chunkwise kernel (exact: the CPU tests hold it to 1e-10 against the
float64 recurrent definition), because a Python loop over 8192 steps per check would take minutes.
Run on an H200 (the log is committed under bench/logs/gpu_tests/):
    python -m pytest -v -s -m gpu tests/gpu
"""

from __future__ import annotations

import pytest
import torch
from helpers import LIMITS, conditioning_limits

from autotune.launch import chunkwise, parallel, recurrent
from autotune.reference import random_inputs
from autotune.torch.native.chunkwise import chunkwise_forward
from autotune.variants import VARIANTS

pytestmark = pytest.mark.gpu

SEQUENCE_VARIANTS = [v for v in VARIANTS if v.family in ("chunkwise_fw", "parallel_fw", "sequence_fw")]
STEP_VARIANTS = [v for v in VARIANTS if v.family == "step_fw"]
LAUNCH = {"chunkwise_fw": chunkwise.chunkwise_fw, "parallel_fw": parallel.parallel_fw,
          "sequence_fw": recurrent.sequence_fw}  # fmt: skip
# (B, NH, S, DHQK, DHHV): the two realistic head layouts at S = 2048 and 8192, and odd shapes
SHAPES = [
    (1, 8, 2048, 256, 512),
    (1, 8, 8192, 256, 512),
    (2, 32, 2048, 128, 128),
    (1, 32, 8192, 128, 128),
    (3, 3, 1000, 96, 192),
    (2, 5, 77, 48, 200),
    (1, 2, 1, 64, 64),
]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _id(shape):
    return "B{}-NH{}-S{}-DQK{}-DV{}".format(*shape)


def _oracle(x: dict, cell: str) -> dict:
    """float64 native chunkwise on the GPU: h and the last state."""
    x64 = {k: v.double() for k, v in x.items()}
    B, NH, S, DHQK = x64["q"].shape
    DHHV = x64["v"].shape[-1]
    kw = dict(dtype=torch.float64, device=x64["q"].device)
    C0 = x64.get("c_initial", torch.zeros(B, NH, DHQK, DHHV, **kw))
    n0 = x64.get("n_initial", torch.zeros(B, NH, DHQK, **kw))
    m0 = x64.get("m_initial", torch.zeros(B, NH, 1, **kw)).reshape(B, NH, 1)
    h, (C, n, m), _ = chunkwise_forward(*(x64[k] for k in "qkvif"), C0, n0, m0, chunk_size=64, cell=cell)
    return {"h": h, "C": C, "n": n} | ({"m": m} if cell == "exp" else {})


def _inputs(shape, dtype, cell, gate_dtype=torch.float32):
    x = random_inputs(*shape, dtype=dtype, gate_dtype=gate_dtype, with_states=True, device="cuda")
    if cell == "sig":
        x.pop("m_initial")
    return x


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=[_id(s) for s in SHAPES])
@pytest.mark.parametrize("variant", SEQUENCE_VARIANTS, ids=[v.name for v in SEQUENCE_VARIANTS])
def test_variant_on_gpu(variant, shape, dtype, check, monkeypatch):
    if variant.family == "parallel_fw" and shape[2] * shape[1] * shape[0] > 2 * 8192 * 32:
        pytest.skip("quadratic form: the realistic shapes are covered up to 8192 tokens per head")
    monkeypatch.setenv("MLSTM_AUTOTUNE_POISON", "1")
    cell = variant.params["cell"]
    x = _inputs(shape, dtype, cell)
    states = (x.get("c_initial"), x.get("n_initial"), x.get("m_initial"))
    h, last = LAUNCH[variant.family](*(x[k] for k in "qkvif"), *states, variant=variant, return_last_states=True)
    torch.cuda.synchronize()
    out = {"h": h, "C": last[0], "n": last[1]} | ({"m": last[2]} if cell == "exp" else {})
    ref = _oracle(x, cell)
    limits = LIMITS[dtype] if dtype == torch.bfloat16 else conditioning_limits(dtype, lambda x64: _oracle(x64, cell),
                                                                                 x, draws=1)  # fmt: skip
    check(target=f"{variant.name} default config", baseline="native chunkwise fp64 (GPU)", dims=shape, dtype=dtype,
          pairs={k: (out[k], ref[k]) for k in ref}, limit=limits)  # fmt: skip


@pytest.mark.parametrize("gate_dtype", [torch.bfloat16, torch.float16], ids=["bf16-gates", "fp16-gates"])
@pytest.mark.parametrize("variant", SEQUENCE_VARIANTS, ids=[v.name for v in SEQUENCE_VARIANTS])
def test_low_precision_gates(variant, gate_dtype, check):
    """bf16/fp16 gate pre-activations (upstream's kernels abort inside Triton's compiler on bf16 gates)."""
    shape = (2, 4, 1000, 128, 128)
    cell = variant.params["cell"]
    x = _inputs(shape, torch.bfloat16, cell, gate_dtype=gate_dtype)
    states = (x.get("c_initial"), x.get("n_initial"), x.get("m_initial"))
    h, _ = LAUNCH[variant.family](*(x[k] for k in "qkvif"), *states, variant=variant)
    check(target=f"{variant.name} with {gate_dtype} gates", baseline="native chunkwise fp64 (GPU)", dims=shape,
          dtype=torch.bfloat16, pairs={"h": (h, _oracle(x, cell)["h"])}, limit=LIMITS[torch.bfloat16])  # fmt: skip


# the built-in default (4 key tiles, the last program reloads n), and the H200 database's point at B = 1 and 16 (one
# 256-wide key tile, the updated n stored from registers; 16 value tiles arriving per head)
STEP_CONFIGS = {"default": None,
                "one-key-tile": {"dhqk_tile": 256, "dhhv_tile": 32, "num_warps": 2, "k_tiles": "loop"}}  # fmt: skip


@pytest.mark.parametrize("config", STEP_CONFIGS.values(), ids=STEP_CONFIGS.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=[v.name for v in STEP_VARIANTS])
def test_step_on_gpu(variant, dtype, config, check):
    """The in-place step kernel, 64 tokens at the 7B head layout with B = 16, against the oracle."""
    shape = (16, 8, 64, 256, 512)
    cell = variant.params["cell"]
    x = _inputs(shape, dtype, cell)
    B, NH = shape[:2]
    C, n = x["c_initial"].float().clone(), x["n_initial"].float().clone()
    m = x["m_initial"].float().reshape(B, NH).clone() if cell == "exp" else None
    hs = [recurrent.step_fw(*(x[k][:, :, t] for k in "qkvif"), C, n, m, variant=variant, config=config,
                            out=(C, n, m)) for t in range(shape[2])]  # fmt: skip
    out = {"h": torch.stack(hs, 2), "C": C, "n": n} | ({"m": m.reshape(B, NH, 1)} if cell == "exp" else {})
    ref = _oracle(x, cell)
    check(target=f"{variant.name} {config or 'default'} in place x{shape[2]}", baseline="native chunkwise fp64 (GPU)",
          dims=shape, dtype=dtype, pairs={k: (out[k], ref[k]) for k in ref},
          limit=LIMITS[dtype] if dtype == torch.bfloat16 else 1e-4)  # fmt: skip


BIG = (1, 8, 524_288, 256, 512)  # v has 2^31 elements (upstream dies here with an illegal memory access)
BIG_VARIANTS = [
    v
    for v in VARIANTS
    if v.family in ("chunkwise_fw", "sequence_fw")
    and v.params["cell"] == "exp"
    and v.params.get("state", "float32") == "float32"
]


@pytest.mark.parametrize("variant", BIG_VARIANTS, ids=[v.name for v in BIG_VARIANTS])
def test_more_than_2_31_elements(variant, check):
    """B=1, NH=8, DHQK=256, DHHV=512, S=524,288 in bf16: heads 0 and 7 of the full run equal those heads run alone.
    Inputs are drawn on the GPU (as fp64 on the CPU they would take 34 GB)."""
    B, NH, S, DHQK, DHHV = BIG
    assert NH * S * DHHV >= 2**31
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = {"q": torch.randn(B, NH, S, DHQK, device="cuda", dtype=torch.bfloat16, generator=gen),
         "k": torch.randn(B, NH, S, DHQK, device="cuda", dtype=torch.bfloat16, generator=gen),
         "v": torch.randn(B, NH, S, DHHV, device="cuda", dtype=torch.bfloat16, generator=gen),
         "i": (3 * torch.randn(B, NH, S, device="cuda", generator=gen)).to(torch.bfloat16),
         "f": (14 * torch.rand(B, NH, S, device="cuda", generator=gen) - 6).to(torch.bfloat16)}  # fmt: skip
    h, last = LAUNCH[variant.family](*(x[k] for k in "qkvif"), variant=variant, return_last_states=True)
    torch.cuda.synchronize()
    assert bool(torch.isfinite(h).all())
    for head in (0, 7):
        alone = {k: v[:, head : head + 1].contiguous() for k, v in x.items()}
        h1, last1 = LAUNCH[variant.family](*(alone[k] for k in "qkvif"), variant=variant, return_last_states=True)
        check(target=f"{variant.name} head {head} of NH=8", baseline=f"{variant.name} head {head} run alone",
              dims=BIG, dtype=torch.bfloat16, pairs={"h": (h[:, head : head + 1], h1),
                                                     "C": (last[0][:, head : head + 1], last1[0])},
              limit=1e-6)  # fmt: skip
        del alone, h1, last1


@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=[v.name for v in STEP_VARIANTS])
def test_inplace_step_replays_from_a_cuda_graph(variant, check):
    """Capture one in-place step in a CUDA graph and replay it token by token (new inputs copied into the captured
    buffers): it must allocate nothing during capture and give the eager results."""
    B, NH, S, DHQK, DHHV = 4, 8, 16, 256, 512
    cell = variant.params["cell"]
    x = _inputs((B, NH, S, DHQK, DHHV), torch.bfloat16, cell)

    def fresh():
        m = x["m_initial"].float().reshape(B, NH).clone() if cell == "exp" else None
        return x["c_initial"].float().clone(), x["n_initial"].float().clone(), m

    C, n, m = fresh()
    eager = [recurrent.step_fw(*(x[k][:, :, t] for k in "qkvif"), C, n, m, variant=variant, out=(C, n, m))
             for t in range(S)]  # fmt: skip
    Cg, ng, mg = fresh()
    static = [x[k][:, :, 0].clone() for k in "qkvif"]
    warm = fresh()  # compiles the in-place kernel and allocates the arrival counters before the capture
    recurrent.step_fw(*static, *warm, variant=variant, out=warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h_static = recurrent.step_fw(*static, Cg, ng, mg, variant=variant, out=(Cg, ng, mg))
    replayed = []
    for t in range(S):
        for buf, k in zip(static, "qkvif"):
            buf.copy_(x[k][:, :, t])
        graph.replay()
        replayed.append(h_static.clone())
    torch.cuda.synchronize()
    pairs = {"h": (torch.stack(replayed, 2), torch.stack(eager, 2)), "C": (Cg, C), "n": (ng, n)}
    if cell == "exp":
        pairs["m"] = (mg, m)
    check(target=f"{variant.name} in place, CUDA graph replay x{S}", baseline="the same kernel, eager",
          dims=(B, NH, S, DHQK, DHHV), dtype=torch.bfloat16, pairs=pairs, limit=1e-6)  # fmt: skip
