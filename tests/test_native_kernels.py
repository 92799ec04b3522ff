"""Every native kernel against the float64 recurrent oracle: outputs and last states (fp64 and fp32), and exact
gradients for a random linear loss on h and on the last states (fp64, <= 1e-8), docs/math.md §6-§7."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_LIMIT_FP64, LIMITS, SHAPES, conditioning_limits

from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch import get_available_mlstm_kernels, get_mlstm_kernel, get_mlstm_sequence_kernel, registry

SEQUENCE_KERNELS = [n for n in get_available_mlstm_kernels() if "--native" in n]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}


def _oracle(x: dict, cell: str, need_grad: bool = False, dtype: torch.dtype = torch.float64):
    """The recurrent definition on the same input values, computed in ``dtype`` (float64: the oracle)."""
    xd = {k: v.detach().to(torch.promote_types(dtype, torch.float32)).requires_grad_(need_grad) for k, v in x.items()}
    h, states = mlstm_recurrent(**xd, cell=cell, return_last_states=True)
    return xd, h, states


def _flat(h, states):
    return (h, *states)


def _names(cell: str) -> list[str]:
    return ["C", "n", "m"] if cell == "exp" else ["C", "n"]


def _run(name: str, x: dict, chunk_size: int):
    if name.startswith("sequence:"):
        fn = get_mlstm_sequence_kernel(name.split(":", 1)[1])
        return fn(**x, return_last_states=True)
    return get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=chunk_size)


def _cell(name: str) -> str:
    return "exp" if name.startswith("sequence:") else registry.kernel_cell(name)


ALL = SEQUENCE_KERNELS + ["sequence:native_sequence__native"]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
@pytest.mark.parametrize("name", ALL)
def test_forward_matches_oracle(name, shape, with_states, dtype, check):
    cell = _cell(name)
    x = random_inputs(*shape.dims(), dtype=dtype, with_states=with_states)
    h, states = _run(name, x, chunk_size=16)
    _, h_ref, states_ref = _oracle(x, cell)
    assert h.dtype == dtype and h.shape == h_ref.shape
    assert all(s.dtype == torch.promote_types(dtype, torch.float32) for s in states)
    names = ["h", *_names(cell)]
    pairs = dict(zip(names, zip((h, *states), (h_ref, *states_ref))))
    limit = LIMITS[dtype]
    if dtype != torch.float64:
        limit = conditioning_limits(dtype, lambda x64: dict(zip(names, _flat(*_oracle(x64, cell)[1:]))), x)
    check(target=name, baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(), dtype=dtype, pairs=pairs,
          limit=limit)  # fmt: skip


def _linear_loss(h, states, weights):
    return (h * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))


# chunk size matters only to chunkwise kernels: they run with two, the others with one
GRAD_CASES = [(n, L) for n in ALL for L in ((16, 64) if n.startswith("chunkwise") else (16,))]


@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
@pytest.mark.parametrize("name,chunk_size", GRAD_CASES, ids=[f"{n}-L{L}" for n, L in GRAD_CASES])
def test_gradients_match_oracle(name, chunk_size, shape, with_states, check):
    cell = _cell(name)
    x = random_inputs(*shape.dims(), dtype=torch.float64, with_states=with_states)
    if cell == "sig":
        x.pop("m_initial", None)
    x64, h_ref, states_ref = _oracle(x, cell, need_grad=True)
    xk = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    h, states = _run(name, xk, chunk_size)
    weights = [torch.randn_like(h_ref)] + [torch.randn_like(s) for s in states_ref]
    grads = torch.autograd.grad(_linear_loss(h, states, weights), list(xk.values()))
    grads_ref = torch.autograd.grad(_linear_loss(h_ref, states_ref, weights), list(x64.values()))
    pairs = {f"d{k}": (g, g_ref) for k, g, g_ref in zip(xk, grads, grads_ref)}
    check(target=f"{name}(chunk_size={chunk_size}) backward", baseline="autograd through reference.mlstm_recurrent"
          "(fp64)", dims=shape.dims(), dtype=torch.float64, pairs=pairs, limit=GRAD_LIMIT_FP64)  # fmt: skip


CUSTBW = [n for n in SEQUENCE_KERNELS if n.endswith("custbw")]


@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("name", CUSTBW + ["parallel--native_siging_custbw:nonorm"])
def test_gradcheck_custom_backward(name, with_states):
    """torch.autograd.gradcheck of each hand-written backward on tiny fp64 shapes, last states included."""
    name, _, variant = name.partition(":")
    cell = registry.kernel_cell(name)
    fn = get_mlstm_kernel(name)
    x = random_inputs(1, 2, 7, 3, 2, dtype=torch.float64, with_states=with_states,
                      generator=torch.Generator().manual_seed(11))  # fmt: skip
    if cell == "sig":
        x.pop("m_initial", None)
    keys = list(x)
    extra = {"normalize": False} if variant == "nonorm" else {}

    def func(*tensors):
        h, states = fn(**dict(zip(keys, tensors)), return_last_states=True, chunk_size=3, **extra)
        return (h, *states)

    inputs = tuple(x[k].requires_grad_(True) for k in keys)
    assert torch.autograd.gradcheck(func, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_fp32_gradients(name, check):
    """fp32 inputs: gradients within the fp32 limit of the fp64 oracle (gates included)."""
    shape = SHAPES[3]
    cell = _cell(name)
    x = random_inputs(*shape.dims(), dtype=torch.float32, with_states=True)
    if cell == "sig":
        x.pop("m_initial")
    x64, h_ref, states_ref = _oracle(x, cell, need_grad=True)
    xk = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    h, states = _run(name, xk, chunk_size=16)
    weights = [torch.randn_like(h_ref)] + [torch.randn_like(s) for s in states_ref]
    grads = torch.autograd.grad(_linear_loss(h, states, [w.float() for w in weights]), list(xk.values()))
    grads_ref = torch.autograd.grad(_linear_loss(h_ref, states_ref, weights), list(x64.values()))
    assert all(g.dtype == x[k].dtype for k, g in zip(xk, grads))
    pairs = {f"d{k}": (g, g_ref) for k, g, g_ref in zip(xk, grads, grads_ref)}

    def oracle_grads(x64):
        xg, hg, sg = _oracle(x64, cell, need_grad=True)
        return {f"d{k}": g for k, g in zip(xg, torch.autograd.grad(_linear_loss(hg, sg, weights), list(xg.values())))}

    limit = conditioning_limits(torch.float32, oracle_grads, x)
    check(target=f"{name} backward", baseline="autograd through reference.mlstm_recurrent(fp64)", dims=shape.dims(),
          dtype=torch.float32, pairs=pairs, limit=limit)  # fmt: skip
