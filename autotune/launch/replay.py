"""Replay a recorded launcher (autotune/launch/trace.py) on a runtime that supplies the data.

A runtime makes buffers and launches kernels the way its framework can: JAX (autotune/jax/triton_exec.py, through
jax-triton) keeps arrays immutable and hands each kernel fresh outputs after its inputs; ``TorchRuntime`` below
does the same with PyTorch tensors, so the CPU tests check a trace and its adapters under Triton's interpreter.

Per launch, the buffers a kernel gets are split by the trace's ``writes``: read-only inputs, inputs the kernel also
writes (they already hold data: aliased to their output), and fresh outputs (uninitialised until the kernel writes
them). The kernel runs through an adapter (autotune/launch/adapters.py) whose parameters come in that order.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .adapters import Layout, adapter
from .trace import Convert, Copy, Fill, Launch, New, Op, Out, Ref, Trace, TraceError, meta_like


class Runtime(Protocol):
    def new(self, shape: tuple[int, ...], dtype, fill: float | None): ...

    def convert(self, x, shape: tuple[int, ...], dtype): ...

    def launch(self, kernel, grid: tuple[int, ...], inputs: list, scalars: list, outputs: list, aliases: dict,
               constexprs: dict, options: dict) -> list: ...  # fmt: skip

    def view(self, x, shape: tuple[int, ...]): ...

    def op(self, func, args, kwargs): ...


def replay(trace: Trace, inputs, runtime: Runtime):
    """The outputs of the recorded call, computed by ``runtime`` from ``inputs`` (the pytree given to record(),
    with arrays of the runtime in place of the meta tensors)."""
    leaves, _ = tree_flatten(inputs)
    if len(leaves) != len(trace.inputs):
        raise TraceError(f"the trace takes {len(trace.inputs)} input leaves, got {len(leaves)}")
    env: dict[int, object] = {buf: leaf for buf, leaf in zip(trace.inputs, leaves) if buf is not None}
    for event in trace.events:
        if isinstance(event, New):
            env[event.buf] = None if event.fill is None else runtime.new(event.shape, event.dtype, event.fill)
        elif isinstance(event, Convert):
            env[event.buf] = runtime.convert(_value(env, trace, event.src, runtime), event.shape, event.dtype)
        elif isinstance(event, Fill):
            shape, dtype = trace.buffers[event.buf]
            env[event.buf] = runtime.new(shape, dtype, event.value)
        elif isinstance(event, Copy):
            shape, dtype = trace.buffers[event.buf]
            env[event.buf] = runtime.convert(_value(env, trace, event.src, runtime), shape, dtype)
        elif isinstance(event, Op):

            def resolve(x):
                return runtime.view(_value(env, trace, x.buf, runtime), x.shape) if isinstance(x, Ref) else x

            is_ref = lambda x: isinstance(x, Ref)  # noqa: E731
            args = tree_map(resolve, event.args, is_leaf=is_ref)
            kwargs = tree_map(resolve, event.kwargs, is_leaf=is_ref)
            out_leaves, _ = tree_flatten(runtime.op(event.func, args, kwargs))
            for buf, value in zip(event.outs, out_leaves):
                if buf is not None:
                    env[buf] = value
        elif isinstance(event, Launch):
            _launch(event, env, trace, runtime)
        else:
            raise TraceError(f"unknown event {event!r}")

    def output(leaf):
        if not isinstance(leaf, Out):
            return leaf
        if env.get(leaf.buf) is None:
            raise TraceError(f"an output (buffer {leaf.buf}) is never written by the traced call")
        return runtime.view(env[leaf.buf], leaf.shape)

    out_leaves, spec = tree_flatten(trace.outputs, is_leaf=lambda x: isinstance(x, Out))
    return tree_unflatten([output(leaf) for leaf in out_leaves], spec)


def _value(env, trace, buf, runtime):
    """A buffer's current value; an uninitialised one (a dummy pointer a kernel never reads) is made empty."""
    if env.get(buf) is None:
        shape, dtype = trace.buffers[buf]
        env[buf] = runtime.new(shape, dtype, None)
    return env[buf]


def _launch(event: Launch, env, trace, runtime) -> None:
    order: list[int] = []  # distinct buffers, in parameter order
    for arg in event.args:
        if arg.kind == "buffer" and arg.value not in order:
            order.append(arg.value)
    written = [b for b in order if b in event.writes]
    read_only = [b for b in order if b not in event.writes]
    updated = [b for b in written if env.get(b) is not None]  # written over existing data: aliased
    inputs = read_only + updated
    slot = {}
    for j, b in enumerate(inputs):
        slot[b] = ("in", j)
    for j, b in enumerate(written):
        slot[b] = ("out", j)  # a written buffer is passed to the kernel as its output
    params, scalars, constexprs = [], [], {}
    for arg in event.args:
        if arg.kind == "buffer":
            params.append((arg.name, *slot[arg.value]))
        elif arg.kind == "scalar" and arg.value is not None:
            params.append((arg.name, "scalar", len(scalars)))
            scalars.append(arg.value)
        elif arg.kind == "scalar":
            params.append((arg.name, "none", 0))
        else:
            params.append((arg.name, "constexpr", 0))
            constexprs[arg.name] = arg.value
    layout = Layout(len(inputs), len(scalars), len(written), tuple(params), tuple(sorted(constexprs)))
    aliases = {len(read_only) + j: written.index(b) for j, b in enumerate(updated)}
    values = [_value(env, trace, b, runtime) for b in inputs]
    specs = [trace.buffers[b] for b in written]
    results = runtime.launch(adapter(event.kernel, layout), event.grid, values, scalars, specs, aliases, constexprs,
                             dict(event.options))  # fmt: skip
    for b, result in zip(written, results):
        env[b] = result


class TorchRuntime:
    """Replays with PyTorch tensors on one device (outputs fresh, aliased inputs updated in place)."""

    def __init__(self, device):
        self.device = device

    def new(self, shape, dtype, fill):
        if fill is None:
            return torch.empty(shape, dtype=dtype, device=self.device)
        return torch.full(shape, fill, dtype=dtype, device=self.device)

    def convert(self, x, shape, dtype):
        return x.to(dtype).reshape(shape).clone()

    def launch(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options):
        outs = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in outputs]
        for i, o in aliases.items():
            outs[o] = inputs[i]  # in place: the kernel's output pointer is the input's memory
        kernel[grid](*inputs, *scalars, *outs, **constexprs, **options)
        return outs

    def view(self, x, shape):
        n = 1
        for s in shape:
            n *= s
        return x.reshape(-1)[:n].reshape(shape)

    def op(self, func, args, kwargs):
        if isinstance(kwargs.get("device"), torch.device):
            kwargs = dict(kwargs, device=torch.device(self.device))
        return func(*args, **kwargs)


def to_meta(tree):
    """``tree`` with every tensor replaced by a meta tensor of its shape and dtype (for trace.record)."""
    return tree_map(lambda t: meta_like(t.shape, t.dtype) if isinstance(t, torch.Tensor) else t, tree)
