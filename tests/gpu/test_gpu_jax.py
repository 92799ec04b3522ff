"""The JAX Triton entries on the GPU through the correctness gate (marked gpu; skipped without a GPU or without
jax-triton): bf16 and fp32, forward under ``jax.jit`` and the training step's gradients under ``jax.jit(jax.grad)``,
and the step kernel. The candidate takes the gate's PyTorch inputs through DLPack, so it is judged on the very
draws, float64 truth and trusted kernel (autotune.measure.gate_draws) the PyTorch kernels are judged on: the same
bits on repeated calls, and each output within 1.5x the trusted kernel's error.
Run on the lent GPU (the log is committed under bench/logs/gpu_tests/):
    XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -v -s -m gpu tests/gpu/test_gpu_jax.py
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX would take 75% of the GPU from PyTorch
jax = pytest.importorskip("jax", reason="needs the jax extra")
import jax.numpy as jnp  # noqa: E402

from autotune import families, gate, measure  # noqa: E402
from autotune.variants import find  # noqa: E402

pytestmark = pytest.mark.gpu


def _jax_gpu() -> bool:
    try:
        from autotune.jax.triton_exec import jax_triton

        jax_triton()
        return jax.devices()[0].platform == "gpu"
    except Exception:  # no GPU backend in JAX, or no jax-triton
        return False


needs_jax_gpu = pytest.mark.skipif(not _jax_gpu(), reason="needs JAX with a GPU backend and jax-triton")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
HEADS = [(64, 64), (128, 128)]
ENTRIES = {  # JAX entry -> the generated family the gate judges it as (its trusted kernel and output names)
    "chunkwise--triton_fused": "chunkwise_fused_fw.py.j2",
    "chunkwise--triton_xl_chunk": "chunkwise_twopass_fw.py.j2",
    "chunkwise--triton_auto": "chunkwise_twopass_fw.py.j2",
    "parallel--triton_limit_headdim": "parallel_fw.py.j2",
}


def to_jax(t: torch.Tensor):
    torch.cuda.synchronize()
    return jax.dlpack.from_dlpack(t.contiguous())


def to_torch(a) -> torch.Tensor:
    a.block_until_ready()
    return torch.from_dlpack(a).clone()


def job_of(template: str, dtype: torch.dtype, DHQK: int, DHHV: int) -> measure.Job:
    structure = {"chunkwise_bw.py.j2": {"kernels": "fused"}}.get(template, {})
    if template.startswith("chunkwise_") and template != "chunkwise_bw.py.j2":
        structure = {"state": "input"}  # the forward entries' default structure
    variant = find(template, cell="exp", **structure)
    return measure.Job(variant.name, families.default_config(variant, DHQK, DHHV), 1, 2, 4096, DHQK, DHHV,
                       str(dtype).removeprefix("torch."), "cuda")  # fmt: skip


def log(name: str, verdict) -> None:
    print(f"{torch.cuda.get_device_name()} (jax {jax.__version__}): {name} distinct {verdict.distinct_outputs} "
          f"errors {verdict.error_by_output} trusted {verdict.reference_error_by_output}")  # fmt: skip


@needs_jax_gpu
@pytest.mark.parametrize("heads", HEADS, ids=[f"D{k}" for k, _ in HEADS])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", list(ENTRIES))
def test_forward_passes_the_gate(name, dtype, heads):
    from autotune.jax import get_mlstm_kernel

    kernel = jax.jit(get_mlstm_kernel(name))

    def candidate(x):
        return {"h": to_torch(kernel(*(to_jax(x[k]) for k in "qkvif")))}

    job = job_of(ENTRIES[name], dtype, *heads)
    verdict = gate.judge(candidate, measure.gate_draws(job), dtype)
    log(f"{name} forward {dtype}", verdict)
    assert verdict.passed, verdict.summary()


@needs_jax_gpu
@pytest.mark.parametrize("heads", HEADS, ids=[f"D{k}" for k, _ in HEADS])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", [n for n in ENTRIES if n != "chunkwise--triton_auto"])
def test_gradients_pass_the_gate(name, dtype, heads):
    """jax.jit(jax.grad) of <h, dh> through the entry: the generated backward the dispatcher picks, judged as a
    training step (dq, dk, dv, di, df) against the trusted parallel backward."""
    from autotune.jax import get_mlstm_kernel

    kernel = get_mlstm_kernel(name)

    @jax.jit
    def grads(q, k, v, i, f, dh):
        def loss(q, k, v, i, f):
            return jnp.sum(kernel(q, k, v, i, f).astype(jnp.float32) * dh.astype(jnp.float32))

        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, i, f)

    def candidate(x):
        out = grads(*(to_jax(x[k]) for k in ("q", "k", "v", "i", "f", "dh")))
        return dict(zip(("dq", "dk", "dv", "di", "df"), (to_torch(g) for g in out)))

    job = job_of("chunkwise_bw.py.j2", dtype, *heads)
    verdict = gate.judge(candidate, measure.gate_draws(job), dtype)
    log(f"{name} gradients {dtype}", verdict)
    assert verdict.passed, verdict.summary()


@needs_jax_gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_step_passes_the_gate(dtype):
    from autotune.jax import get_mlstm_step_kernel

    step = jax.jit(get_mlstm_step_kernel("triton"))

    def candidate(x):
        args = [to_jax(x[k][:, :, 0]) for k in "qkv"] + [to_jax(x[k][:, :, :1]) for k in "if"]
        h, _ = step(*args, None, None, None)
        return {"h": to_torch(h)[:, :, None]}

    job = job_of("recurrent_step.py.j2", dtype, 128, 128)
    verdict = gate.judge(candidate, measure.gate_draws(job), dtype)
    log(f"step {dtype}", verdict)
    assert verdict.passed, verdict.summary()


@needs_jax_gpu
@pytest.mark.parametrize("name", list(ENTRIES))
def test_same_bits_as_the_pytorch_entry(name):
    """The JAX entry replays the PyTorch entry's launches: on the same GPU and inputs, the same h (both compile the
    same kernel source; jax-triton specialises its arguments alike)."""
    from autotune.jax import get_mlstm_kernel as jax_kernel
    from autotune.torch import get_mlstm_kernel as torch_kernel

    x = gate.draw_inputs("model", 2, 4, 1000, 128, 128, dtype=torch.bfloat16, device="cuda")
    h_torch = torch_kernel(name)(*(x[k] for k in "qkvif"))
    h_jax = to_torch(jax.jit(jax_kernel(name))(*(to_jax(x[k]) for k in "qkvif")))
    same = torch.equal(h_torch, h_jax)
    print(f"{torch.cuda.get_device_name()}: {name} JAX and PyTorch h bitwise equal: {same}; max difference "
          f"{(h_torch.float() - h_jax.float()).abs().max().item():.3g}")  # fmt: skip
    assert same
