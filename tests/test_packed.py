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
