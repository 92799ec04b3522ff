"""torch.compile(fullgraph=True) on every kernel: no graph break (torch._dynamo.explain), and the same bits as the
eager call, outputs and gradients. The backend is "aot_eager" (Dynamo and AOTAutograd trace the whole graph, as
Inductor's front end does; on this CPU Inductor's C++ compile costs a minute per graph). The Triton entries run
under the interpreter here and go through their custom operators (autotune.torch.compiled_ops); the GPU test
(tests/gpu/test_gpu_compile.py) compiles them with Inductor and CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from autotune.torch import (
    get_available_mlstm_kernels,
    get_available_mlstm_sequence_kernels,
    get_mlstm_kernel,
    get_mlstm_sequence_kernel,
    get_mlstm_step_kernel,
)
from autotune.torch.backend_module import mLSTMBackend, mLSTMBackendConfig

B, NH, S, DHQK, DHHV = 1, 2, 40, 16, 32
SEQUENCE_KERNELS = [n for n in get_available_mlstm_kernels() if "native" in n or "triton" in n]


def _inputs(S: int = S):
    q, k = torch.randn(B, NH, S, DHQK), torch.randn(B, NH, S, DHQK)
    return [q, k, torch.randn(B, NH, S, DHHV), torch.randn(B, NH, S), 3.0 + torch.randn(B, NH, S)]


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _no_graph_break(fn, *args) -> None:
    explained = torch._dynamo.explain(fn)(*args)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", SEQUENCE_KERNELS)
def test_a_sequence_kernel_compiles_without_a_graph_break_to_the_same_bits(name):
    kernel = get_mlstm_kernel(name)
    length = 64 if "triton" in name else S  # the Triton entries: whole chunks of 16 (any S works; fewer compiles)

    def step(q, k, v, i, f):
        h, (c, n, *m) = kernel(q, k, v, i, f, chunk_size=16, return_last_states=True)
        return h, c, n

    base = _inputs(length)
    results = []
    for fn in (step, _compiled(step)):
        x = [t.clone().requires_grad_() for t in base]
        h, c, n = fn(*x)
        (h.square().sum() + c.sum() + n.square().sum()).backward()
        results.append([h, c, n, *(t.grad for t in x)])
    for eager, compiled in zip(*results):
        assert torch.equal(eager, compiled)
    _no_graph_break(step, *(t.clone().requires_grad_() for t in base))


@pytest.mark.parametrize("name", ["native", "triton"])
@pytest.mark.parametrize("inplace", [False, True], ids=["new-states", "inplace"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_a_decode_loop_compiles_without_a_graph_break_to_the_same_bits(name, inplace, cell):
    """Three steps of the step kernel in a loop, the states carried in place (a decoder's cache) or returned; the
    sig cell carries no m."""
    step = get_mlstm_step_kernel(name)
    x = [t[:, :, 0] for t in _inputs(1)[:3]] + [t[:, :, :1] for t in _inputs(1)[3:]]

    def decode(c, n, m):
        hs = []
        for _ in range(3):
            h, (c1, n1, *m1) = step(*x, c, n, m, inplace=inplace, cell=cell)
            if not inplace:
                c, n, m = c1, n1, (m1[0] if cell == "exp" else m)
            hs.append(h)
        return torch.stack(hs), c, n, m

    def states():
        m = torch.zeros(B, NH, 1) if cell == "exp" else None
        return torch.zeros(B, NH, DHQK, DHHV), torch.zeros(B, NH, DHQK), m

    eager, compiled = decode(*states()), _compiled(decode)(*states())
    for a, b in zip(eager, compiled):
        assert (a is None and b is None) or torch.equal(a, b)
    _no_graph_break(decode, *states())


@pytest.mark.parametrize("name", get_available_mlstm_sequence_kernels())
def test_the_recurrent_sequence_kernel_compiles_without_a_graph_break(name):
    kernel = get_mlstm_sequence_kernel(name)

    def run(q, k, v, i, f):
        return kernel(q, k, v, i, f, return_last_states=True)

    x = _inputs()
    eager, compiled = run(*x), _compiled(run)(*x)
    assert torch.equal(eager[0], compiled[0])
    for a, b in zip(eager[1], compiled[1]):
        assert torch.equal(a, b)
    _no_graph_break(run, *x)


@pytest.mark.parametrize("kernel", ["chunkwise--native_custbw", "chunkwise--triton_auto"])
def test_the_backend_module_compiles_in_train_mode(kernel):
    backend = mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel=kernel, chunk_size=16, autocast_kernel_dtype="float32"))
    base = _inputs(64)

    def loss(*x):
        h, (c, n, m) = backend(*x)
        return h.square().mean() + c.mean()

    grads = []
    for fn in (loss, _compiled(loss)):
        x = [t.clone().requires_grad_() for t in base]
        fn(*x).backward()
        grads.append([t.grad for t in x])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    _no_graph_break(loss, *(t.clone().requires_grad_() for t in base))


def test_the_compiled_path_runs_the_custom_operators():
    """Under torch.compile a Triton entry is one call of mlstm_autotune::sequence_fw in the graph, with
    sequence_bw in the backward graph: the dispatcher's Python never enters the trace."""
    kernel = get_mlstm_kernel("chunkwise--triton_auto")
    graphs = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(g, _):
            graphs.append(str(g.code))
            return make_boxed_func(g)

        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)

    x = [t.requires_grad_() for t in _inputs(64)]
    torch.compile(lambda *a: kernel(*a, chunk_size=16), fullgraph=True, backend=backend)(*x).sum().backward()
    assert len(graphs) == 2
    assert "mlstm_autotune.sequence_fw" in graphs[0] and "mlstm_autotune.sequence_bw" in graphs[1]


def test_the_custom_operators_fakes_have_the_real_outputs_strides():
    """Inductor asserts every output of an external call against its fake's sizes and strides. q, k, v laid out as
    a model's projections give them (permuted views of (B, S, NH, D)): the forward's and the backward's fake outputs
    have the real ones' strides (an empty_like fake of the backward kept the permuted strides of q on the H100)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import autotune.torch.compiled_ops  # noqa: F401 - registers the operators

    ops = torch.ops.mlstm_autotune
    none = torch.empty(0)
    q, k = (torch.randn(B, 64, NH, DHQK).transpose(1, 2) for _ in range(2))
    v = torch.randn(B, 64, NH, DHHV).transpose(1, 2)
    i, f = torch.randn(B, 64, NH).transpose(1, 2), (3.0 + torch.randn(B, 64, NH)).transpose(1, 2)
    name = "chunkwise--triton_auto"

    def both(op, *args):
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        return real, fake

    fw_args = (name, q, k, v, i, f, none, none, none, 16, 1e-6, True, False, True)
    real, fake = both(ops.sequence_fw, *fw_args)
    for r, g in zip(real, fake, strict=True):
        assert (r.shape, r.stride(), r.dtype) == (g.shape, g.stride(), g.dtype)
    h, C_S, n_S, m_S, s, mt, Cb, nb, mb, marker = real
    dh = torch.randn_like(h)
    bw_args = (name, q, k, v, i, f, none, none, none, h, s, mt, Cb, nb, mb, marker, C_S, n_S, m_S, dh, none, none,
               none, 1e-6, True, False)  # fmt: skip
    real, fake = both(ops.sequence_bw, *bw_args)
    for r, g in zip(real, fake, strict=True):
        assert (r.shape, r.stride(), r.dtype) == (g.shape, g.stride(), g.dtype)


def test_a_compiled_step_checks_its_inputs_without_the_memo(monkeypatch):
    """Under torch.compile the step's input checks run in full when the graph is traced; the memo of checked
    signatures (autotune.checks._STEP_PASSED) is not read: its keys may hold JAX's numpy dtypes, which the Dynamo of
    torch 2.11 cannot hash (the bench's compiled step failed so on an H100, after a JAX step had run)."""
    from autotune import checks

    class Untouchable(dict):
        def get(self, *args):
            raise AssertionError("the memo was read under torch.compile")

        def __setitem__(self, *args):
            raise AssertionError("the memo was written under torch.compile")

    monkeypatch.setattr(checks, "_STEP_PASSED", Untouchable())
    step = get_mlstm_step_kernel("triton")
    q, k = torch.randn(B, NH, DHQK), torch.randn(B, NH, DHQK)
    v, i, f = torch.randn(B, NH, DHHV), torch.randn(B, NH, 1), 3.0 + torch.randn(B, NH, 1)
    c, n, m = torch.zeros(B, NH, DHQK, DHHV), torch.zeros(B, NH, DHQK), torch.zeros(B, NH, 1)
    h = _compiled(lambda: step(q, k, v, i, f, c, n, m, inplace=True)[0])()
    assert h.shape == (B, NH, DHHV) and torch.isfinite(h).all()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="k must have shape"):  # the full checks ran while tracing (Dynamo wraps)
        _compiled(lambda: step(q[..., :-1], k, v, i, f, c, n, m, inplace=True)[0])()
