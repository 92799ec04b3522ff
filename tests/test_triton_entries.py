"""The registry entries served by generated kernels, through the public API (interpreter on the CPU): outputs and
last states against the oracle, exact gradients (native backward for now), pieces with states handed along."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_LIMIT_FP64, SHAPES, conditioning_limits

from autotune.checks import MLSTMInputError
from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch import get_available_mlstm_kernels, get_mlstm_kernel, registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = [n for n in get_available_mlstm_kernels() if "--triton" in n]
SHAPE = SHAPES[3]  # B1-NH2-S65-DQK32-DV32


def _inputs(name, dtype, with_states=True, S=None):
    dims = list(SHAPE.dims())
    if S is not None:
        dims[2] = S
    x = random_inputs(*dims, dtype=dtype, with_states=with_states, max_outlier=8.0 if dtype == torch.float16 else 20.0)
    if registry.kernel_cell(name) == "sig":
        x.pop("m_initial", None)
    return {k: v.to(DEVICE) for k, v in x.items()}


def _oracle(x, cell):
    h, states = mlstm_recurrent(**{k: v.double().cpu() for k, v in x.items()}, cell=cell, return_last_states=True)
    return dict(zip(["h", "C", "n", "m"], (h, *states)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", TRITON)
def test_entry_forward(name, dtype, check):
    cell = registry.kernel_cell(name)
    x = _inputs(name, dtype)
    h, states = get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=16)
    assert h.dtype == dtype and len(states) == (3 if cell == "exp" else 2)
    ref = _oracle(x, cell)
    out = dict(zip(["h", "C", "n", "m"], (h, *states)))
    check(target=name, baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(), dtype=dtype,
          pairs={k: (out[k], ref[k]) for k in ref},
          limit=conditioning_limits(dtype, lambda x64: _oracle(x64, cell), x))  # fmt: skip


@pytest.mark.parametrize("name", TRITON)
def test_entry_gradients_fp32(name, check):
    """fp32 inputs: Triton forward, exact backward; gradients of a random linear loss on h and the last states."""
    cell = registry.kernel_cell(name)
    x = _inputs(name, torch.float32)
    xk = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    h, states = get_mlstm_kernel(name)(**xk, return_last_states=True, chunk_size=16)
    weights = [torch.randn_like(h)] + [torch.randn_like(s) for s in states]
    loss = (h * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))
    grads = torch.autograd.grad(loss, list(xk.values()))

    def oracle_grads(x64):
        x64 = {k: v.double().cpu().requires_grad_(True) for k, v in x64.items()}
        ref = _oracle(x64, cell)
        refs = [ref["h"], ref["C"], ref["n"]] + ([ref["m"]] if cell == "exp" else [])
        loss = sum((r * w.double().cpu()).sum() for r, w in zip(refs, weights))
        return {f"d{k}": g for k, g in zip(x64, torch.autograd.grad(loss, list(x64.values())))}

    ref = oracle_grads(x)
    check(target=f"{name} backward", baseline="autograd through reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float32, pairs={f"d{k}": (g, ref[f"d{k}"]) for k, g in zip(xk, grads)},
          limit=conditioning_limits(torch.float32, oracle_grads, x))  # fmt: skip


@pytest.mark.parametrize("name", [n for n in TRITON if n.startswith("chunkwise")][:2])
def test_entry_fp64_falls_back_to_exact_native(name, check):
    x = _inputs(name, torch.float64)
    h, states = get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=16)
    ref = _oracle(x, "exp")
    check(target=f"{name} (fp64 -> native)", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float64, pairs={k: (o, ref[k]) for k, o in zip(["h", "C", "n", "m"], (h, *states))},
          limit=GRAD_LIMIT_FP64)  # fmt: skip


@pytest.mark.parametrize("name", TRITON)
def test_entry_pieces_equal_one_call(name, check):
    x = _inputs(name, torch.float32, S=70)
    init = {k: x.pop(k) for k in list(x) if k.endswith("initial")}
    fn = get_mlstm_kernel(name)
    h_one, states_one = fn(**x, **init, return_last_states=True, chunk_size=16)
    hs, states, start = [], tuple(init.values()), 0
    for size in (33, 1, 36):
        piece = {k: v[:, :, start : start + size] for k, v in x.items()}
        h, states = fn(**piece, **dict(zip(["c_initial", "n_initial", "m_initial"], states)), return_last_states=True,
                       chunk_size=16)  # fmt: skip
        hs.append(h)
        start += size
    check(target=f"{name} over pieces 33+1+36", baseline=f"{name} in one call", dims=(1, 2, 70, 32, 32),
          dtype=torch.float32, pairs=dict(zip(["h", "C", "n", "m"], zip((torch.cat(hs, 2), *states),
                                                                         (h_one, *states_one)))),
          limit=1e-5)  # fmt: skip


@pytest.mark.parametrize("chunk_size", [0, 8, 48, 100])
def test_entry_rejects_chunk_sizes_triton_cannot_tile(chunk_size):
    x = _inputs("chunkwise--triton_xl_chunk", torch.float32)
    with pytest.raises(MLSTMInputError, match="chunk_size"):
        get_mlstm_kernel("chunkwise--triton_xl_chunk")(**x, chunk_size=chunk_size)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_entry_without_gpu_or_interpreter_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _inputs("chunkwise--triton_fused", torch.float32)
    with pytest.raises(MLSTMInputError, match="CUDA"):
        get_mlstm_kernel("chunkwise--triton_fused")(**x)
