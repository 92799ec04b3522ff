"""Packed variable-length sequences (cu_seqlens, autotune/torch/packed.py): a packed call equals running each
sequence alone, with its own initial state, for outputs, last states and the gradients of every input and initial
state; lengths of 1 and lengths that are not multiples of the chunk included; bad offsets raise MLSTMInputError.
The float64 oracle (autotune.reference) checks the packed native kernel too."""

from __future__ import annotations

import pytest
import torch

from autotune import reference
from autotune.torch import MLSTMInputError, get_mlstm_kernel
from autotune.torch.backend_module import mLSTMBackend, mLSTMBackendConfig

NH, DHQK, DHHV, CHUNK = 2, 16, 32, 16
LENGTHS = [1, 7, 16, 23, 3]  # one token; shorter than, equal to and beyond a chunk
KERNELS = ["chunkwise--native_autograd", "chunkwise--native_custbw", "parallel--native_custbw",
           "parallel--native_stablef_custbw", "parallel--native_siging_custbw", "chunkwise--triton_auto",
           "chunkwise--triton_fused_siging", "parallel--triton_limit_headdim"]  # fmt: skip


def _cu(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


def _packed_inputs(lengths, dtype=torch.float32):
    T, N = sum(lengths), len(lengths)
    x = [torch.randn(1, NH, T, DHQK), torch.randn(1, NH, T, DHQK), torch.randn(1, NH, T, DHHV), torch.randn(1, NH, T),
         3.0 + torch.randn(1, NH, T)]  # fmt: skip
    states = [0.1 * torch.randn(N, NH, DHQK, DHHV), 0.1 * torch.randn(N, NH, DHQK), 0.1 * torch.randn(N, NH, 1)]
    return [t.to(dtype) for t in x], [t.to(dtype) for t in states]


def _leaves(tensors):
    return [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("name", KERNELS)
def test_a_packed_call_equals_each_sequence_alone(name):
    kernel = get_mlstm_kernel(name)
    sig = "siging" in name
    n_states = 2 if sig else 3
    x, states = _packed_inputs(LENGTHS)
    states = states[:n_states]
    cu = _cu(LENGTHS)
    dh = torch.randn(1, NH, sum(LENGTHS), DHHV)

    packed_in, packed_states = _leaves(x), _leaves(states)
    init = packed_states + [None] * (3 - n_states)
    h, last = kernel(*packed_in, *init, return_last_states=True, chunk_size=CHUNK, cu_seqlens=cu)
    assert h.shape == (1, NH, sum(LENGTHS), DHHV) and last[0].shape == (len(LENGTHS), NH, DHQK, DHHV)
    loss = (h * dh).sum() + sum(t.sum() for t in last)
    loss.backward()

    bounds = cu.tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        alone_in = _leaves([t[:, :, a:b] for t in x])
        alone_states = _leaves([s[j : j + 1] for s in states])
        h1, last1 = kernel(*alone_in, *alone_states, *[None] * (3 - n_states), return_last_states=True,
                           chunk_size=CHUNK)  # fmt: skip
        ((h1 * dh[:, :, a:b]).sum() + sum(t.sum() for t in last1)).backward()
        assert torch.equal(h[:, :, a:b], h1), f"sequence {j}: h"
        for n, (mine, alone) in enumerate(zip(last, last1)):
            assert torch.equal(mine[j : j + 1], alone), f"sequence {j}: last state {n}"
        for name_, t, t1 in zip("qkvif", packed_in, alone_in):
            assert torch.equal(t.grad[:, :, a:b], t1.grad), f"sequence {j}: d{name_}"
        for n, (s, s1) in enumerate(zip(packed_states, alone_states)):
            assert torch.equal(s.grad[j : j + 1], s1.grad), f"sequence {j}: gradient of initial state {n}"


def test_a_packed_native_call_matches_the_float64_oracle():
    """Each packed sequence against the recurrent float64 reference started from its own state."""
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    x, states = _packed_inputs(LENGTHS, torch.float64)
    cu = _cu(LENGTHS)
    h, (C, n, m) = kernel(*x, *states, return_last_states=True, chunk_size=CHUNK, cu_seqlens=cu)
    bounds = cu.tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        part = [t[:, :, a:b] for t in x]
        h_ref, (C_ref, n_ref, m_ref) = reference.mlstm_recurrent(
            *part, *(s[j : j + 1] for s in states), return_last_states=True
        )
        assert (h[:, :, a:b] - h_ref).abs().max() <= 1e-10 * h_ref.abs().max().clamp_min(1)
        assert (C[j : j + 1] - C_ref).abs().max() <= 1e-10 * C_ref.abs().max().clamp_min(1)


def test_the_host_copy_of_the_offsets_is_enough():
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    x, _ = _packed_inputs(LENGTHS)
    cu = _cu(LENGTHS)
    h = kernel(*x, chunk_size=CHUNK, cu_seqlens=cu)
    assert torch.equal(kernel(*x, chunk_size=CHUNK, cu_seqlens_cpu=cu), h)
    assert torch.equal(kernel(*x, chunk_size=CHUNK, cu_seqlens=cu.to(torch.int32), cu_seqlens_cpu=cu), h)


@pytest.mark.parametrize(
    "offsets,message",
    [
        ([1, 8, 50], "must start at 0"),
        ([0, 8, 49], "must end at the packed length T = 50"),
        ([0, 8, 8, 50], "strictly increasing"),
        ([0, 30, 20, 50], "strictly increasing"),
        ([0.0, 50.0], "int64 or int32"),
        ([[0, 50]], "1-D"),
        ([0], "1-D with N \\+ 1 >= 2"),
    ],
)
def test_bad_offsets_are_refused(offsets, message):
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    x, _ = _packed_inputs([50])
    with pytest.raises(MLSTMInputError, match=message):
        kernel(*x, chunk_size=CHUNK, cu_seqlens=torch.tensor(offsets))


def test_a_list_of_offsets_and_a_batch_over_one_are_refused():
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    x, states = _packed_inputs(LENGTHS)
    with pytest.raises(MLSTMInputError, match="torch.Tensor"):
        kernel(*x, chunk_size=CHUNK, cu_seqlens=[0, 54])
    wide = [torch.cat([t, t]) for t in x]
    with pytest.raises(MLSTMInputError, match="batch size 1, got B = 2"):
        kernel(*wide, chunk_size=CHUNK, cu_seqlens=_cu(LENGTHS))
    with pytest.raises(MLSTMInputError, match="5 rows"):
        kernel(*x, states[0][:2], states[1][:2], states[2][:2], chunk_size=CHUNK, cu_seqlens=_cu(LENGTHS))
    with pytest.raises(MLSTMInputError, match="cu_seqlens has 6 offsets, cu_seqlens_cpu 3"):
        kernel(*x, chunk_size=CHUNK, cu_seqlens=_cu(LENGTHS), cu_seqlens_cpu=torch.tensor([0, 10, 50]))


def test_the_backend_module_takes_packed_sequences_in_train_mode():
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel="chunkwise--native_custbw", chunk_size=CHUNK))
    x, states = _packed_inputs(LENGTHS)
    cu = _cu(LENGTHS)
    h, (C, n, m) = backend(*x, *states, cu_seqlens=cu)
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    h_k, (C_k, _, _) = kernel(*x, *states, return_last_states=True, chunk_size=CHUNK, cu_seqlens=cu)
    assert torch.equal(h, h_k) and torch.equal(C, C_k)
    with pytest.raises(MLSTMInputError, match="training modes"):
        backend(*x, cu_seqlens=cu, mode="inference")


def test_a_host_list_of_offsets_works_and_compiles_without_a_graph_break():
    kernel = get_mlstm_kernel("chunkwise--native_custbw")
    x, _ = _packed_inputs(LENGTHS)
    cu = _cu(LENGTHS)
    h = kernel(*x, chunk_size=CHUNK, cu_seqlens=cu)
    assert torch.equal(kernel(*x, chunk_size=CHUNK, cu_seqlens_cpu=cu.tolist()), h)

    host = cu.tolist()  # Python ints, made outside the compiled function

    def packed(*x):
        return kernel(*x, chunk_size=CHUNK, cu_seqlens=cu, cu_seqlens_cpu=host)

    torch._dynamo.reset()
    assert torch.equal(torch.compile(packed, fullgraph=True, backend="aot_eager")(*x), h)
    assert torch._dynamo.explain(packed)(*x).graph_break_count == 0
    torch._dynamo.reset()
    with pytest.raises(MLSTMInputError, match="as a list must hold"):
        kernel(*x, chunk_size=CHUNK, cu_seqlens_cpu=[0, 5.0, 54])


WALKING = ["chunkwise--triton_auto", "chunkwise--triton_xl_chunk", "chunkwise--triton_xl_chunk_siging"]


@pytest.mark.parametrize("with_states", [False, True])
@pytest.mark.parametrize("name", WALKING)
def test_a_packed_inference_call_walks_the_documents_in_one_launch(name, with_states, monkeypatch):
    """Without gradients, a two-pass entry runs the packed documents in one forward launch (its kernels walk the
    documents, autotune/launch/packed.py), bit for bit what each document gives alone: outputs and last states."""
    from autotune.launch import chunkwise as launch_chunkwise

    kernel = get_mlstm_kernel(name)
    n_states = 2 if "siging" in name else 3
    lengths = [1, 16, 23, 3, 32, 5]  # one token, a chunk, beyond it, two chunks exactly
    x, states = _packed_inputs(lengths, torch.float16)
    init = (states[:n_states] if with_states else []) + [None] * (3 - (n_states if with_states else 0))
    cu = _cu(lengths)
    launches = []
    real = launch_chunkwise.chunkwise_fw
    monkeypatch.setattr(launch_chunkwise, "chunkwise_fw", lambda *a, **kw: launches.append(kw) or real(*a, **kw))
    with torch.no_grad():
        h, last = kernel(*x, *init, return_last_states=True, chunk_size=CHUNK, cu_seqlens=cu)
        assert len(launches) == 1 and launches[0]["cu_seqlens"] is not None
        assert last[0].shape == (len(lengths), NH, DHQK, DHHV) and len(last) == n_states
        bounds = cu.tolist()
        for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
            alone = [t[j : j + 1] if t is not None else None for t in init]
            h1, last1 = kernel(*(t[:, :, a:b] for t in x), *alone, return_last_states=True, chunk_size=CHUNK)
            assert torch.equal(h[:, :, a:b], h1), f"document {j}: h"
            for n, (mine, one) in enumerate(zip(last, last1)):
                assert torch.equal(mine[j : j + 1], one), f"document {j}: last state {n}"
    assert len(launches) == 1 + len(lengths)


def test_a_packed_inference_call_matches_the_float64_oracle():
    """The walking kernels in fp32 against the float64 recurrence of each document from its own state."""
    kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")
    lengths = [7, 1, 40, 16]
    x, states = _packed_inputs(lengths, torch.float64)
    cu = _cu(lengths)
    with torch.no_grad():
        h, (C, n, m) = kernel(*(t.float() for t in x), *(s.float() for s in states), return_last_states=True,
                              chunk_size=CHUNK, cu_seqlens=cu)  # fmt: skip
    bounds = cu.tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        h_ref, (C_ref, n_ref, m_ref) = reference.mlstm_recurrent(*(t[:, :, a:b] for t in x),
                                                                 *(s[j : j + 1] for s in states),
                                                                 return_last_states=True)  # fmt: skip
        assert (h[:, :, a:b].double() - h_ref).norm() <= 1e-5 * h_ref.norm(), f"document {j}: h"
        assert (C[j : j + 1].double() - C_ref).norm() <= 1e-5 * C_ref.norm(), f"document {j}: C"
        assert (m[j : j + 1].double() - m_ref).abs().max() <= 1e-5 * m_ref.abs().max().clamp_min(1), f"document {j}: m"


def test_entries_that_cannot_walk_the_documents_run_each_alone(monkeypatch):
    """The fused-only entry runs one launch per document, with or without gradients."""
    from autotune.launch import chunkwise as launch_chunkwise

    x, _ = _packed_inputs(LENGTHS)
    cu = _cu(LENGTHS)
    launches = []
    real = launch_chunkwise.chunkwise_fw
    monkeypatch.setattr(launch_chunkwise, "chunkwise_fw", lambda *a, **kw: launches.append(kw) or real(*a, **kw))
    with torch.no_grad():
        get_mlstm_kernel("chunkwise--triton_fused")(*x, chunk_size=CHUNK, cu_seqlens=cu)
    assert len(launches) == len(LENGTHS) and all(kw.get("cu_seqlens") is None for kw in launches)
    launches.clear()
    get_mlstm_kernel("chunkwise--triton_fused")(*_leaves(x), chunk_size=CHUNK, cu_seqlens=cu)
    assert len(launches) == len(LENGTHS) and all(kw.get("cu_seqlens") is None for kw in launches)


def test_a_packed_training_step_walks_the_documents_in_one_forward_and_one_backward(monkeypatch):
    """With gradients, a two-pass entry runs the training forward and the chunkwise backward once for all documents
    (their kernels walk the documents), and its gradients of every input and initial state match each document
    alone (fp32 under the interpreter; bit for bit under the same configuration:
    test_the_chunkwise_backward_walks_the_documents_bit_for_bit)."""
    from autotune.launch import chunkwise as launch_chunkwise
    from autotune.launch import chunkwise_bw as launch_chunkwise_bw

    x, states = _packed_inputs(LENGTHS)
    cu = _cu(LENGTHS)
    fw, bw = [], []
    real_fw, real_bw = launch_chunkwise.chunkwise_fw, launch_chunkwise_bw.chunkwise_bw
    monkeypatch.setattr(launch_chunkwise, "chunkwise_fw", lambda *a, **kw: fw.append(kw) or real_fw(*a, **kw))
    monkeypatch.setattr(launch_chunkwise_bw, "chunkwise_bw", lambda *a, **kw: bw.append(kw) or real_bw(*a, **kw))
    kernel = get_mlstm_kernel("chunkwise--triton_auto")
    packed_in, packed_states = _leaves(x), _leaves(states)
    h, last = kernel(*packed_in, *packed_states, return_last_states=True, chunk_size=CHUNK, cu_seqlens=cu)
    dh = torch.randn_like(h)
    ((h * dh).sum() + sum((t * t).sum() for t in last)).backward()
    assert len(fw) == 1 and fw[0]["cu_seqlens"] is not None and fw[0]["saved"] is not None
    assert len(bw) == 1 and bw[0]["cu_seqlens"] is not None
    monkeypatch.undo()
    bounds = cu.tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        alone_in = _leaves([t[:, :, a:b] for t in x])
        alone_states = _leaves([s[j : j + 1] for s in states])
        h1, last1 = kernel(*alone_in, *alone_states, return_last_states=True, chunk_size=CHUNK)
        ((h1 * dh[:, :, a:b]).sum() + sum((t * t).sum() for t in last1)).backward()
        torch.testing.assert_close(h[:, :, a:b], h1, rtol=1e-5, atol=1e-5)
        for got, want in zip(packed_in, alone_in):
            torch.testing.assert_close(got.grad[:, :, a:b], want.grad, rtol=1e-4, atol=1e-4)
        for got, want in zip(packed_states, alone_states):
            torch.testing.assert_close(got.grad[j : j + 1], want.grad, rtol=1e-4, atol=1e-4)


def test_packed_initial_states_need_a_row_per_document():
    x, states = _packed_inputs(LENGTHS)
    with torch.no_grad(), pytest.raises(MLSTMInputError, match="c_initial"):
        get_mlstm_kernel("chunkwise--triton_auto")(*x, *(s[:2] for s in states), chunk_size=CHUNK,
                                                   cu_seqlens=_cu(LENGTHS))  # fmt: skip


@pytest.mark.parametrize(
    "cell, kernels, states, dstate_gates, with_states, with_last",
    [
        ("exp", "fused", "reuse", "inline", True, True),
        ("exp", "split", "recompute", "pre", True, False),
        ("exp", "fused", "recompute", "pre", False, True),
        ("exp", "split", "reuse", "inline", False, False),
        ("sig", "fused", "reuse", "pre", True, True),
        ("sig", "split", "recompute", "inline", False, False),
    ],
)
def test_the_chunkwise_backward_walks_the_documents_bit_for_bit(cell, kernels, states, dstate_gates, with_states,
                                                                 with_last):  # fmt: skip
    """The training forward and the chunkwise backward with cu_seqlens (one launch per kernel for all documents)
    give every document's gradients, of its inputs, initial state and last state's cotangent, bit for bit as the
    same launchers on that document alone."""
    from autotune import families
    from autotune.launch import chunkwise, chunkwise_bw
    from autotune.variants import find

    lengths = [1, 16, 23, 3, 40, 5]
    x, init = _packed_inputs(lengths, torch.float16)
    x[3], x[4] = 3.0 * x[3], x[4] - 2.0  # gates that move the max state
    N, T = len(lengths), sum(lengths)
    init = init[:2] + ([init[2].float()] if cell == "exp" else [None]) if with_states else [None] * 3
    init = [t.float() if t is not None else None for t in init]
    fw_variant, fw_config = chunkwise.training_forward(cell, DHQK, DHHV, CHUNK)
    bw_variant = find("chunkwise_bw.py.j2", cell=cell, kernels=kernels)
    bw_config = dict(families.default_config(bw_variant, DHQK, DHHV), chunk=CHUNK, states=states,
                     dstate_gates=dstate_gates)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    dh = torch.randn(1, NH, T, DHHV, generator=gen).to(torch.float16)
    dlast = [torch.randn(N, NH, DHQK, DHHV, generator=gen), torch.randn(N, NH, DHQK, generator=gen),
             torch.randn(N, NH, 1, generator=gen) if cell == "exp" else None]  # fmt: skip

    def step(q, k, v, i, f, C0, n0, m0, dh, dC, dn, dm, cu=None):
        saved = {}
        h, last = chunkwise.chunkwise_fw(q, k, v, i, f, C0, n0, m0, variant=fw_variant, config=fw_config,
                                         return_last_states=True, saved=saved, cu_seqlens=cu)  # fmt: skip
        last = (last[0], last[1], last[2] if cell == "exp" else None)
        borders = (saved["Cb"], saved["nb"], saved["mb"]) if states == "reuse" else None
        cot = (dC, dn, dm) if with_last else (None, None, None)
        return chunkwise_bw.chunkwise_bw(q, k, v, i, f, C0, n0, m0, h, saved["s"], saved["mt"], dh, *cot,
                                         last if with_last else None, variant=bw_variant, config=bw_config,
                                         borders=borders, cu_seqlens=cu)  # fmt: skip

    packed = step(*x, *init, dh, *dlast, cu=_cu(lengths))
    bounds = _cu(lengths).tolist()
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        row = [[t[j : j + 1] if t is not None else None for t in ts] for ts in (init, dlast)]
        alone = step(*[t[:, :, a:b] for t in x], *row[0], dh[:, :, a:b], *row[1])
        for name, got, want in zip(("dq", "dk", "dv", "di", "df"), packed[:5], alone[:5]):
            assert torch.equal(got[:, :, a:b], want), (name, j)
        for name, got, want in zip(("dC0", "dn0", "dm0"), packed[5:], alone[5:]):
            assert (got is None) == (want is None), name
            if got is not None:
                assert torch.equal(got[j : j + 1], want), (name, j)
