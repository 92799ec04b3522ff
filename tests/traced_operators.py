"""Trace the Triton entries' operators (autotune.torch.compiled_ops) as torch.compile does (AOTAutograd, forward and
backward graphs) on fake tensors, without a GPU. Run with TRITON_INTERPRET unset (tests/test_traced_operators.py
does): the kernels are then Triton's JIT functions, which torch.library.wrap_triton puts into the graph. A stand-in
driver names an sm_90 target (PyTorch reads each kernel's TTIR for the tensors it writes) and the dispatcher is told
the GPU is an H100, so the choices are those of the H100's database; the fake tensors are on the CPU device (a CPU
build of torch cannot make views of fake CUDA tensors under autograd).

Prints JSON, one object per case: the kernel launches in the traced graphs, the launches the eager operator makes
for the same inputs (recorded on meta tensors, autotune/launch/trace.py), the operator calls left in the graphs,
and which inputs the compiled call mutated."""

from __future__ import annotations

import json

import torch
import triton
from torch._functorch.aot_autograd import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner

from autotune.launch.trace import Launch, meta_like, record
from autotune.launch.writes import written_params
from autotune.torch import compiled_ops, triton_choice

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
B, NH, S, DHQK, DHHV = 2, 2, 128, 64, 64


class _Hopper:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _launch(kernel, grid, values: dict, options: dict | None, **more) -> dict:
    constants = {n: repr(v) for n, v in sorted(values.items()) if not isinstance(v, (torch.Tensor, torch.fx.Node))}
    grid = list(grid) + [1] * (3 - len(grid))
    return {"kernel": kernel.fn.__name__, "grid": grid, "constants": constants, "options": options, **more}


def graph_launches(gm) -> list[dict]:
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            options = None
            if isinstance(kernel, Autotuner):  # warp and stage counts travel as a one-configuration autotuner
                (config,) = kernel.configs
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                kernel = kernel.fn
            values = {**kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]), **node.kwargs["kwargs"]}
            (grid,) = node.kwargs["grid"]
            written = sorted(node.kwargs.get("tensors_to_clone", []))  # what PyTorch read the kernel writes
            out.append(_launch(kernel, grid, values, options, writes=written))
    return out


def operator_calls(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "mlstm_autotune" in str(n.target)]


def recorded_launches(fn, args) -> list[dict]:
    metas = [meta_like(a.shape, a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
    token = triton_choice.TRACE_TARGET.set(H100)
    try:
        trace = record(fn, metas)
    finally:
        triton_choice.TRACE_TARGET.reset(token)
    out = []
    for e in trace.events:
        if isinstance(e, Launch):
            values = {a.name: a.value for a in e.args if a.kind != "buffer"}
            constexprs = {a.name: a.value for a in e.args if a.kind == "constexpr"}
            pointers = {a.name for a in e.args if a.kind == "buffer"}
            writes = sorted(pointers & written_params(e.kernel.fn, constexprs))  # the ones the kernel stores through
            out.append(_launch(e.kernel, e.grid, values, dict(e.options) or None, writes=writes))
    return out


def _on_tensors(fn, args):
    """The tensors among ``args``, and fn as a function of those alone (AOTAutograd and make_fx take tensors only:
    the other arguments are constants of the graph)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]

    def on_tensors(*ts):
        it = iter(ts)
        return fn(*(next(it) if isinstance(a, torch.Tensor) else a for a in args))

    return tensors, on_tensors


def traced(fn, args, backward: bool) -> dict:
    """fn compiled by AOTAutograd on fake ``args``, run once (and its backward): the graphs' launches and operator
    calls, and the positions of the inputs it mutated."""
    graphs = {}

    def keep(tag):
        def compiler(gm, example_inputs):
            graphs[tag] = gm
            return gm

        return compiler

    tensors, on_tensors = _on_tensors(fn, args)
    versions = [a._version if isinstance(a, torch.Tensor) else None for a in args]
    out = aot_function(on_tensors, fw_compiler=keep("forward"), bw_compiler=keep("backward"))(*tensors)
    if backward:
        out[0].float().sum().backward()
    mutated = [j for j, (a, v) in enumerate(zip(args, versions)) if v is not None and a._version != v]
    return {"launches": {tag: graph_launches(gm) for tag, gm in graphs.items()},
            "operators": {tag: operator_calls(gm) for tag, gm in graphs.items()}, "mutated": mutated}  # fmt: skip


def symbolic(fn, args) -> str:
    """ "ok" when fn traces on tensors of symbolic sizes (torch.compile's dynamic shapes: what it makes of a batch size
    that changed between calls), else the error."""
    from torch.fx.experimental.proxy_tensor import make_fx

    tensors, on_tensors = _on_tensors(fn, args)
    try:
        make_fx(on_tensors, tracing_mode="symbolic")(*tensors)
        return "ok"
    except Exception as err:  # noqa: BLE001 - the test reads the error
        return f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"


def symbolic_cases() -> dict:
    """Each operator traced with symbolic sizes, on real CPU tensors (make_fx makes them fake and symbolic)."""
    bf16 = dict(dtype=torch.bfloat16)
    q, k, v = (
        torch.randn(B, NH, S, DHQK, **bf16),
        torch.randn(B, NH, S, DHQK, **bf16),
        torch.randn(B, NH, S, DHHV, **bf16),
    )
    i, f = torch.randn(B, NH, S), torch.randn(B, NH, S)
    C0, n0, m0 = torch.randn(B, NH, DHQK, DHHV), torch.randn(B, NH, DHQK), torch.randn(B, NH, 1)
    out = {}
    for name in ("chunkwise--triton_auto", "parallel--triton_limit_headdim"):
        states = (C0, n0, m0) if name.startswith("chunkwise") else (q.new_empty(0),) * 3
        out[name] = symbolic(lambda *x, name=name: compiled_ops.sequence_fw(name, *x, 64, 1e-6, True, False, False),
                             [q, k, v, i, f, *states])  # fmt: skip
    step_args = [q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], C0, n0, m0, 1e-6, True, "exp",
                 torch.float32]  # fmt: skip
    for op, fn in (("step", compiled_ops.step), ("step_", compiled_ops.step_)):
        out[op] = symbolic(lambda *x, fn=fn: fn(*x), [a.clone() if isinstance(a, torch.Tensor) else a
                                                      for a in step_args])  # fmt: skip
    out["scan"] = symbolic(lambda *x: compiled_ops.scan(*x), [q, k, v, i, f, C0, n0, m0, 1e-6, True, "exp", True,
                                                              torch.float32])  # fmt: skip
    return out


def main() -> None:
    triton.runtime.driver.set_active(_Hopper())
    triton_choice.gpu_identity = lambda device: H100
    results = {"traceable": compiled_ops.TRACEABLE}
    mode = FakeTensorMode()
    with mode:

        def rand(*shape, dtype=torch.float32, grad=False):
            return torch.randn(*shape, dtype=dtype).requires_grad_(grad)

        bf16 = torch.bfloat16
        q, k = rand(B, NH, S, DHQK, dtype=bf16, grad=True), rand(B, NH, S, DHQK, dtype=bf16, grad=True)
        v = rand(B, NH, S, DHHV, dtype=bf16, grad=True)
        i, f = rand(B, NH, S, grad=True), rand(B, NH, S, grad=True)
        C0, n0, m0 = rand(B, NH, DHQK, DHHV, grad=True), rand(B, NH, DHQK, grad=True), rand(B, NH, 1, grad=True)
        for name in ("chunkwise--triton_auto", "parallel--triton_limit_headdim"):
            with_states = name.startswith("chunkwise")
            states = (C0, n0, m0) if with_states else (q.new_empty(0),) * 3
            args = [q, k, v, i, f, *states]

            def forward(*x, name=name, with_last=with_states):
                return compiled_ops.sequence_fw(name, *x, 64, 1e-6, True, with_last, True)

            case = traced(forward, args, backward=True)
            fw_out = compiled_ops._sequence_fw(name, *args, 64, 1e-6, True, with_states, True)
            plain = [t.detach() for t in args]
            saved = [*plain, fw_out[0], *fw_out[4:10], *fw_out[1:4]]
            cotangents = [torch.ones_like(fw_out[0]), *(torch.ones_like(t) for t in fw_out[1:4])]
            case["eager"] = {
                "forward": recorded_launches(
                    lambda *x, name=name, w=with_states: compiled_ops._sequence_fw(name, *x, 64, 1e-6, True, w, True),
                    plain),
                "backward": recorded_launches(
                    lambda *x, name=name, w=with_states: compiled_ops._sequence_bw(name, *x, 1e-6, True, w),
                    [*saved, *cotangents]),
            }  # fmt: skip
            results[name] = case
        qs, ks, vs = (rand(B, NH, d, dtype=bf16) for d in (DHQK, DHQK, DHHV))
        i1, f1 = rand(B, NH), rand(B, NH)
        c, n, m = rand(B, NH, DHQK, DHHV), rand(B, NH, DHQK), rand(B, NH, 1)
        step_args = [qs, ks, vs, i1, f1, c, n, m, 1e-6, True, "exp", torch.float32]
        for op, fn in (("step", compiled_ops.step), ("step_", compiled_ops.step_)):
            eager = compiled_ops._step if op == "step" else compiled_ops._step_
            case = traced(lambda *x, fn=fn: fn(*x), step_args, backward=False)
            case["eager"] = {"forward": recorded_launches(eager, [t.detach() if isinstance(t, torch.Tensor) else t
                                                                  for t in step_args])}  # fmt: skip
            results[op] = case
        scan_args = [q.detach(), k.detach(), v.detach(), i.detach(), f.detach(), C0.detach(), n0.detach(),
                     m0.detach(), 1e-6, True, "exp", True, torch.float32]  # fmt: skip
        case = traced(lambda *x: compiled_ops.scan(*x), scan_args, backward=False)
        case["eager"] = {"forward": recorded_launches(compiled_ops._scan, scan_args)}
        results["scan"] = case
    results["symbolic"] = symbolic_cases()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
