"""torch.compile(fullgraph=True) with Inductor on the GPU (marked gpu; skipped without one): a small mLSTM model
whose training step runs a Triton entry, and a decode loop of in-place steps, the latter also under
mode="reduce-overhead" (CUDA graphs, which then really replay: the state buffers are marked static, and no graph is
skipped). No graph break, and the same bits as eager: the operators (autotune.torch.compiled_ops) run the very
kernels the eager call runs."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from autotune.torch import get_mlstm_kernel, get_mlstm_step_kernel

pytestmark = pytest.mark.gpu


class TinyMLSTM(torch.nn.Module):
    """Projections of an input to q, k, v and the gates, one mLSTM layer, a read-out: enough for a training step."""

    def __init__(self, kernel: str, d: int = 256, NH: int = 4, DHQK: int = 64, DHHV: int = 64):
        super().__init__()
        self.NH, self.DHQK, self.DHHV = NH, DHQK, DHHV
        self.qk = torch.nn.Linear(d, 2 * NH * DHQK, dtype=torch.bfloat16)
        self.v = torch.nn.Linear(d, NH * DHHV, dtype=torch.bfloat16)
        self.gates = torch.nn.Linear(d, 2 * NH)
        self.out = torch.nn.Linear(NH * DHHV, d, dtype=torch.bfloat16)
        self.kernel = get_mlstm_kernel(kernel)

    def forward(self, x):
        B, S, _ = x.shape
        q, k = self.qk(x).view(B, S, 2, self.NH, self.DHQK).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(B, S, self.NH, self.DHHV).transpose(1, 2)
        i, f = self.gates(x.float()).view(B, S, 2, self.NH).permute(2, 0, 3, 1)
        h = self.kernel(q, k, v, i, f + 3.0, chunk_size=64)
        return self.out(h.transpose(1, 2).reshape(B, S, -1))


@pytest.mark.parametrize("kernel", ["chunkwise--triton_auto", "parallel--triton_limit_headdim"])
def test_a_training_step_compiles_without_a_graph_break_to_the_same_bits(kernel):
    torch.manual_seed(0)
    model = TinyMLSTM(kernel).cuda()
    x = torch.randn(2, 1024, 256, device="cuda", dtype=torch.bfloat16)

    def loss_of(x):  # compiled with its backward (AOT autograd); Tensor.backward() itself stays outside the graph
        return model(x).float().square().mean()

    results = []
    for fn in (loss_of, torch.compile(loss_of, fullgraph=True)):
        model.zero_grad()
        loss = fn(x)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    explained = torch._dynamo.explain(loss_of)(x)
    print(f"{torch.cuda.get_device_name()}: {kernel} training step: graph breaks {explained.graph_break_count}")
    assert explained.graph_break_count == 0
    # Inductor may fuse the projections' and the loss's arithmetic differently from eager; the kernel's own
    # outputs are checked bit for bit below, the model's to bf16 rounding
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("with_states", [False, True], ids=["plain", "states"])
@pytest.mark.parametrize("kernel", ["chunkwise--triton_auto", "parallel--triton_limit_headdim"])
def test_the_kernel_call_compiles_to_the_same_bits(kernel, with_states):
    """Outputs and every gradient bit for bit; with initial states and the last states returned (their
    cotangents too), the case whose traced graph once returned the backward's view of m in m's place."""
    fn = get_mlstm_kernel(kernel)
    torch.manual_seed(0)
    B, NH, S, D = 2, 4, 1024, 128
    bf16 = dict(device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (torch.randn(B, NH, S, D, **bf16) for _ in range(3))
    i = torch.randn(B, NH, S, device="cuda", requires_grad=True)
    f = (3.0 + torch.randn(B, NH, S, device="cuda")).requires_grad_()
    inputs = [q, k, v, i, f]
    if with_states:
        inputs += [torch.randn(B, NH, D, D, device="cuda", requires_grad=True),
                   torch.randn(B, NH, D, device="cuda").abs().requires_grad_(),
                   torch.randn(B, NH, 1, device="cuda", requires_grad=True)]  # fmt: skip
    cotangents = [torch.randn(B, NH, S, D, device="cuda", dtype=torch.bfloat16)]
    if with_states:
        cotangents += [torch.randn(B, NH, D, D, device="cuda"), torch.randn(B, NH, D, device="cuda"),
                       torch.randn(B, NH, 1, device="cuda")]  # fmt: skip

    def call(*x):
        if not with_states:
            return [fn(*x, chunk_size=64)]
        h, (C, n, m) = fn(*x[:5], c_initial=x[5], n_initial=x[6], m_initial=x[7], chunk_size=64,
                          return_last_states=True)  # fmt: skip
        return [h, C, n, m]

    results = []
    for g in (call, torch.compile(call, fullgraph=True)):
        outs = g(*inputs)
        grads = torch.autograd.grad(outs, inputs, cotangents)
        results.append([*outs, *grads])
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)


@pytest.mark.parametrize("B", [1, 16])
@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["default", "cuda-graphs"])
def test_a_decode_loop_compiles_without_a_graph_break_to_the_same_bits(B, mode):
    step = get_mlstm_step_kernel("triton")
    NH, DHQK, DHHV = 8, 256, 512
    torch.manual_seed(0)

    def token_inputs():
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        q, k, v = torch.randn(B, NH, DHQK, **bf16), torch.randn(B, NH, DHQK, **bf16), torch.randn(B, NH, DHHV, **bf16)
        return q, k, v, torch.randn(B, NH, 1, device="cuda"), 3.0 + torch.randn(B, NH, 1, device="cuda")

    xs = [token_inputs() for _ in range(8)]

    def token(x, c, n, m):
        h, _ = step(*x, c, n, m, inplace=True)
        return h

    def run(fn):
        c = torch.zeros(B, NH, DHQK, DHHV, device="cuda")
        n, m = torch.zeros(B, NH, DHQK, device="cuda"), torch.zeros(B, NH, 1, device="cuda")
        for state in (c, n, m):  # a CUDA graph may update an input in place only at a fixed address
            torch._dynamo.mark_static_address(state)
        hs = [fn(x, c, n, m).clone() for x in xs]
        return torch.stack(hs), c, n, m

    eager = run(token)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(torch.compile(token, fullgraph=True, mode=mode))
    if mode == "reduce-overhead":  # the graph was captured and replayed, not skipped (in place on inputs, say)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    explained = torch._dynamo.explain(token)(xs[0], *run(token)[1:])
    print(f"{torch.cuda.get_device_name()}: decode B={B} mode={mode}: graph breaks {explained.graph_break_count}")
    assert explained.graph_break_count == 0
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
