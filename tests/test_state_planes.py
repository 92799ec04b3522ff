"""States stored as planes (two tiles of the inputs' dtype, hi = C rounded and lo = what that rounding left out) give
the products of fp32 states split in registers, from memory: the two-pass forward's state "planes" and the chunkwise
backward's state_buffers "planes" must return what their fp32 forms return, bit for bit, wherever the planes only
replace that split (h, dq, dk, dv; on a GPU within `same`), and store exactly the split of the fp32 states. Their
error against the float64 oracle is checked with the other variants (tests/test_triton_kernels.py,
tests/test_backward_kernels.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import SHAPES, chunkwise_bw_config

from autotune import families
from autotune.launch import chunkwise as launch_fw
from autotune.launch import chunkwise_bw as launch_bw
from autotune.reference import random_inputs
from autotune.variants import find

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter mis-computes bf16 dots
NAMES = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")
# B=2, S=63 (a partial last chunk), DHQK=96 and DHHV=48 in tiles of 32 (a partial last value tile)
SHAPE = SHAPES[2]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit under the interpreter; on a GPU, where the compiler may order the two products' sums differently,
    within 2^-10 of each other relatively (the planes then still change nothing at the 16-bit level)."""
    if DEVICE == "cpu":
        return torch.equal(a, b)
    return bool(torch.isfinite(a).all()) and ((a.float() - b.float()).norm() <= 2**-10 * b.float().norm()).item()


# the gradients that also read <C, dC> through hi + lo in fp32 (C's bits past lo left out): fp16 keeps 22 bits of
# the state that way, bf16 16
CLOSE = 1e-5 if DTYPE == torch.float16 else 1e-4


def _split(C: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., NC, K, V) fp32 -> (..., NC, 2, K, V) of dtype: hi, then lo, as _store_planes stores them."""
    hi = C.to(dtype)
    return torch.stack([hi, (C - hi.float()).to(dtype)], dim=-3)


def _forward(x: dict, state: str, out_values: str, chunk: int = 32):
    variant = find(launch_fw.TWOPASS, cell="exp", state=state)
    config = dict(families.default_config(variant, SHAPE.DHQK, SHAPE.DHHV), chunk_inter=16, chunk_intra=chunk,
                  states_dhqk_tile=32, states_dhhv_tile=32, out_dhqk_tile=32, out_dhhv_tile=32, out_values=out_values,
                  **launch_fw.TRAINING_PRECISION)  # fmt: skip
    saved = {"borders_at": chunk}
    h, last = launch_fw.chunkwise_fw(*(x[n] for n in NAMES), variant=variant, config=config, return_last_states=True,
                                     saved=saved)  # fmt: skip
    return h, last, saved


def _draw():
    x = random_inputs(*SHAPE.dims(), dtype=DTYPE, with_states=True)
    return {n: t.to(DEVICE) for n, t in x.items()}


@pytest.mark.parametrize("out_values", ["tiles", "loop"])
def test_planes_forward_is_the_fp32_forward(out_values):
    """The planes forward stores the split of the fp32 forward's states and returns its h and last state bit for
    bit, with either output kernel."""
    x = _draw()
    h32, last32, saved32 = _forward(x, "float32", out_values)
    h, last, saved = _forward(x, "planes", out_values)
    assert saved["Cb"].dtype == DTYPE and saved["Cb"].shape == (*saved32["Cb"].shape[:3], 2, SHAPE.DHQK, SHAPE.DHHV)
    assert torch.equal(saved["Cb"], _split(saved32["Cb"], DTYPE))  # the same recurrence, stored differently
    for name in ("nb", "mb", "s", "mt"):
        assert torch.equal(saved[name], saved32[name]), name
    assert same(h, h32)
    for a, b in zip(last, last32):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernels", ["fused", "split"])
def test_planes_backward_is_the_fp32_backward(kernels):
    """A backward reusing the planes forward's states with its own state-gradient buffers as planes returns the dq,
    dk and dv of the fp32 forward and buffers bit for bit; the gate gradients and the initial state's gradients,
    which also read <C, dC> through hi + lo in fp32, within CLOSE of them relatively."""
    x = _draw()
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
    dh = torch.randn(*SHAPE.dims()[:3], SHAPE.DHHV).to(DTYPE).to(DEVICE)
    B, NH = SHAPE.B, SHAPE.NH
    dlast = (torch.randn(B, NH, SHAPE.DHQK, SHAPE.DHHV, device=DEVICE), torch.randn(B, NH, SHAPE.DHQK, device=DEVICE),
             torch.randn(B, NH, 1, device=DEVICE))  # fmt: skip
    grads = {}
    for form in ("float32", "planes"):
        h, last, saved = _forward(x, form, "loop")
        config = dict(chunkwise_bw_config(variant, SHAPE.DHQK, SHAPE.DHHV, 32, "reuse"), state_buffers=form)
        grads[form] = launch_bw.chunkwise_bw(
            *(x[n] for n in NAMES), h, saved["s"], saved["mt"], dh, *dlast, last, variant=variant, config=config,
            borders=(saved["Cb"], saved["nb"], saved["mb"]),
        )  # fmt: skip
    for name, a, b in zip(("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"), grads["planes"], grads["float32"]):
        if name in ("dq", "dk", "dv"):
            assert same(a, b), name
        else:
            assert torch.isfinite(a).all(), name
            assert ((a - b).norm() / b.norm()).item() <= CLOSE, name


def test_planes_buffers_recompute_the_states_as_planes(monkeypatch):
    """state_buffers "planes" with recomputed states: the backward stores both the states before the chunks (by the
    two-pass forward's planes variant) and the gradients after them as planes, and its kernels read them as such;
    dq, dk, dv as with fp32 buffers, bit for bit."""
    x = _draw()
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels="split")
    h, last, saved = _forward(x, "float32", "loop")
    dh = torch.randn(*SHAPE.dims()[:3], SHAPE.DHHV).to(DTYPE).to(DEVICE)
    allocated, real_empty = [], launch_bw.empty

    def spy(*shape, **kwargs):
        allocated.append((shape, kwargs.get("dtype")))
        return real_empty(*shape, **kwargs)

    monkeypatch.setattr(launch_bw, "empty", spy)
    out = {}
    for form in ("float32", "planes"):
        config = dict(chunkwise_bw_config(variant, SHAPE.DHQK, SHAPE.DHHV, 32, "recompute"), state_buffers=form)
        allocated.clear()
        out[form] = launch_bw.chunkwise_bw(*(x[n] for n in NAMES), h, saved["s"], saved["mt"], dh, None, None, None,
                                           None, variant=variant, config=config)  # fmt: skip
    NC = -(-SHAPE.S // 32)
    state_buffers = [a for a in allocated if len(a[0]) >= 5 and a[0][-2:] == (SHAPE.DHQK, SHAPE.DHHV)]
    assert state_buffers == [((SHAPE.B, SHAPE.NH, NC, 2, SHAPE.DHQK, SHAPE.DHHV), DTYPE)] * 2  # Cb, dCa
    for a, b in zip(out["planes"][:3], out["float32"][:3]):
        assert same(a, b)


def test_training_step_through_the_registry_with_planes(monkeypatch):
    """``chunkwise--triton_auto`` in a training step whose (forced) split backward reuses the forward's states: with
    the training forward storing planes (launch.chunkwise.TRAINING_STATES), the backward gets them as planes, and with
    its state buffers as planes too; h, dq, dk, dv equal the fp32 form's bit for bit, the gate and initial-state
    gradients within CLOSE of them."""
    import json

    from autotune.dispatch import dispatcher
    from autotune.torch import get_mlstm_kernel

    variant = find(launch_bw.TEMPLATE, cell="exp", kernels="split")
    x = _draw()
    dh = torch.randn(*SHAPE.dims()[:3], SHAPE.DHHV).to(DTYPE).to(DEVICE)
    seen, real = [], launch_bw.chunkwise_bw

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["borders"][0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(launch_bw, "chunkwise_bw", spy)
    out = {}
    for training_states, buffers in (("float32", "float32"), ("planes", "float32"), ("planes", "planes")):
        config = dict(chunkwise_bw_config(variant, SHAPE.DHQK, SHAPE.DHHV, 32, "reuse"), state_buffers=buffers)
        monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps({"chunkwise:exp/fwbw": {"variant": variant.name,
                                                                                      "config": config}}))  # fmt: skip
        monkeypatch.setattr(launch_fw, "TRAINING_STATES", training_states)
        dispatcher().reset()
        xk = {n: t.clone().requires_grad_(True) for n, t in x.items()}
        h = get_mlstm_kernel("chunkwise--triton_auto")(**xk, chunk_size=32)
        grads = torch.autograd.grad(h, list(xk.values()), dh)
        out[(training_states, buffers)] = {"h": h.detach(), **{f"d{n}": g for n, g in zip(xk, grads)}}
    dispatcher().reset()
    NC = -(-SHAPE.S // 32)
    assert seen == [(SHAPE.B, SHAPE.NH, NC, SHAPE.DHQK, SHAPE.DHHV)] + [(SHAPE.B, SHAPE.NH, NC, 2, SHAPE.DHQK,
                                                                           SHAPE.DHHV)] * 2  # fmt: skip
    base = out[("float32", "float32")]
    for form in (("planes", "float32"), ("planes", "planes")):
        for name, t in out[form].items():
            if name in ("h", "dq", "dk", "dv"):
                assert same(t, base[name]), (form, name)
            else:
                assert ((t - base[name]).norm() / base[name].norm()).item() <= CLOSE, (form, name)
