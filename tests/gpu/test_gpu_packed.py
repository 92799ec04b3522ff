"""Packed sequences (cu_seqlens) through the Triton entries on the GPU (marked gpu; skipped without one): in bf16 the
packed call gives each document's outputs, last states and gradients bit for bit as running it alone under the same
configurations, and the
packed training step as a whole passes the gate (autotune.gate: the same bits on repeated calls, each gradient
within 1.5x the trusted kernel's error, judged on the packed inputs with the documents' own oracle)."""

from __future__ import annotations

import pytest
import torch

from autotune import gate
from autotune.torch import get_mlstm_kernel
from autotune.torch.native.chunkwise import chunkwise_backward, chunkwise_forward

pytestmark = pytest.mark.gpu

LENGTHS = [1, 63, 64, 65, 700, 131, 1024, 2]
NH, DHQK, DHHV = 4, 128, 128


def _cu():
    return torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int64)


def _draw(kind: str):
    x = gate.draw_inputs(kind, 1, NH, sum(LENGTHS), DHQK, DHHV, dtype=torch.bfloat16, device="cuda", seed=3)
    return x


def _fwbw(name: str, x: dict, bounds=None):
    kernel = get_mlstm_kernel(name)
    leaves = [x[k].detach().clone().requires_grad_() for k in "qkvif"]
    extra = {} if bounds is None else {"cu_seqlens": bounds.cuda(), "cu_seqlens_cpu": bounds}
    h = kernel(*leaves, chunk_size=64, **extra)
    grads = torch.autograd.grad(h, leaves, x["dh"])
    return h, grads


ENTRIES = ["chunkwise--triton_auto", "chunkwise--triton_fused", "parallel--triton_limit_headdim"]


@pytest.fixture
def built_in_defaults(monkeypatch):
    """Every Triton entry takes its built-in default (MLSTM_AUTOTUNE_DISPATCH=0), memoised choices forgotten before
    and after."""
    from autotune.dispatch import dispatcher

    monkeypatch.setenv("MLSTM_AUTOTUNE_DISPATCH", "0")
    dispatcher().memo.clear()
    yield
    monkeypatch.undo()
    dispatcher().memo.clear()


@pytest.mark.parametrize("name", ENTRIES)
def test_a_packed_call_equals_each_document_alone(name, built_in_defaults):
    """Bit for bit under the same configurations: the built-in defaults (the dispatcher keys a packed call by its
    documents' mean length, a document alone by its own length, and a database may answer those differently)."""
    x = _draw("model")
    cu = _cu()
    h, grads = _fwbw(name, x, cu)
    bounds = cu.tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        alone = {k: t[:, :, a:b] for k, t in x.items()}
        h1, grads1 = _fwbw(name, alone)
        assert torch.equal(h[:, :, a:b], h1), f"document {j}: h"
        for n, g, g1 in zip("qkvif", grads, grads1):
            assert torch.equal(g[:, :, a:b], g1), f"document {j}: d{n}"
    print(f"{torch.cuda.get_device_name()}: {name} packed {len(LENGTHS)} documents = each alone, bit for bit")


def _oracle(x: dict, cu: torch.Tensor) -> dict:
    """dq, dk, dv, di, df of the packed documents in float64, each from a zero state."""
    out = {n: [] for n in ("dq", "dk", "dv", "di", "df")}
    bounds = cu.tolist()
    for a, b in zip(bounds, bounds[1:]):
        part = [x[k][:, :, a:b].double() for k in "qkvif"]
        z = dict(dtype=torch.float64, device="cuda")
        zeros = (torch.zeros(1, NH, DHQK, DHHV, **z), torch.zeros(1, NH, DHQK, **z), torch.zeros(1, NH, 1, **z))
        _, _, borders = chunkwise_forward(*part, *zeros, chunk_size=64, cell="exp")
        grads = chunkwise_backward(*part, *borders, x["dh"][:, :, a:b].double(), *zeros, chunk_size=64, cell="exp")
        for n, g in zip(out, grads[:5]):
            out[n].append(g)
    return {n: torch.cat(gs, dim=2) for n, gs in out.items()}


@pytest.mark.parametrize("kind", gate.DRAWS)
def test_a_packed_training_step_passes_the_gate(kind):
    """The packed chunkwise--triton_auto training step against the trusted parallel kernel run packed the same way."""
    x = _draw(kind)
    cu = _cu()

    def kernel_of(name):
        def run(inputs):
            _, grads = _fwbw(name, inputs, cu)
            return dict(zip(("dq", "dk", "dv", "di", "df"), grads))

        return run

    draw = gate.prepare(x, lambda inputs: _oracle(inputs, cu), kernel_of("parallel--triton_limit_headdim"))
    verdict = gate.judge(kernel_of("chunkwise--triton_auto"), [draw], torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}: packed training step ({kind}) distinct {verdict.distinct_outputs} "
          f"errors {verdict.error_by_output} trusted {verdict.reference_error_by_output}")  # fmt: skip
    assert verdict.passed, verdict.summary()


@pytest.mark.parametrize("kind", gate.DRAWS)
def test_a_packed_forward_walking_the_documents_passes_the_gate(kind):
    """Without gradients chunkwise--triton_auto runs the packed documents in one launch of its two-pass kernels
    (autotune/launch/packed.py): h and the last states against the trusted parallel kernel, run per document."""
    x = _draw(kind)
    cu = _cu()

    def forward(name):
        def run(inputs):
            with torch.no_grad():
                h, (C, n, m) = get_mlstm_kernel(name)(*(inputs[k] for k in "qkvif"), chunk_size=64,
                                                      return_last_states=True, cu_seqlens=cu.cuda(),
                                                      cu_seqlens_cpu=cu)  # fmt: skip
            return {"h": h, "C": C, "n": n}

        return run

    def oracle(inputs):
        out = {"h": [], "C": [], "n": []}
        bounds = cu.tolist()
        for a, b in zip(bounds, bounds[1:]):
            part = [inputs[k][:, :, a:b].double() for k in "qkvif"]
            z = dict(dtype=torch.float64, device="cuda")
            zeros = (torch.zeros(1, NH, DHQK, DHHV, **z), torch.zeros(1, NH, DHQK, **z), torch.zeros(1, NH, 1, **z))
            h, (C, n, _), _ = chunkwise_forward(*part, *zeros, chunk_size=64, cell="exp")
            out["h"].append(h)
            out["C"].append(C)
            out["n"].append(n)
        return {"h": torch.cat(out["h"], dim=2), "C": torch.cat(out["C"]), "n": torch.cat(out["n"])}

    draw = gate.prepare(x, oracle, forward("parallel--triton_limit_headdim"))
    verdict = gate.judge(forward("chunkwise--triton_auto"), [draw], torch.bfloat16)
    errors, trusted = verdict.error_by_output, verdict.reference_error_by_output
    print(f"{torch.cuda.get_device_name()}: packed forward walking the documents ({kind}) distinct "
          f"{verdict.distinct_outputs} errors {errors} trusted {trusted}")  # fmt: skip
    assert verdict.passed, verdict.summary()
