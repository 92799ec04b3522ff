"""Record what a launcher does, on meta tensors, so that another runtime can replay it (autotune/jax/triton_exec.py
replays it with jax-triton; autotune/launch/replay.py with PyTorch, which is how the CPU tests check it).

``record(fn, inputs)`` calls ``fn`` (a launcher, or an entry's run function) with meta tensors of the inputs' shapes
and dtypes. Nothing is computed: every tensor operation and every kernel launch is written down as an event:
    New(buf, shape, dtype, fill)    a buffer the launcher allocates (fill None: uninitialised, else that value)
    Convert(buf, src, dtype)        a new buffer holding src in another dtype (also a plain copy)
    Fill(buf, value)                a buffer overwritten with one value
    Copy(buf, src)                  a buffer overwritten with another's values
    Op(outs, func, args, kwargs)    any other tensor operation (arithmetic on small per-head tensors, a strided
                                    view such as x[..., -1]): new buffers computed from others; tensors in the
                                    arguments become Ref(buf, shape)
    Launch(...)                     a kernel launch: the grid, each parameter bound to a buffer, a scalar or a
                                    constexpr, and the buffers the kernel writes with these constexprs (writes.py)
Contiguous views from a buffer's start (reshape, contiguous, leading slices) are not events: a tensor is identified
with the buffer it views, so every pointer a kernel gets is the start of a buffer. Other views are Op events: their
values are taken when the view is made (the launchers view results that are final by then), and a kernel cannot get
one. A kernel launch that gets anything else, or a tensor made outside the traced call, raises TraceError.

The trace depends on shapes, dtypes and the Python values of the call only; the replaying runtime supplies data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .common import without_data
from .writes import constexpr_params, written_params


class TraceError(RuntimeError):
    """A launcher did something a trace cannot express."""


@dataclass(frozen=True)
class New:
    buf: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: float | None


@dataclass(frozen=True)
class Convert:
    buf: int
    src: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Fill:
    buf: int
    value: float


@dataclass(frozen=True)
class Copy:
    buf: int
    src: int


@dataclass(frozen=True)
class Ref:
    """A tensor argument of an Op: a buffer, seen in ``shape`` (its first elements)."""

    buf: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Op:
    outs: tuple[int | None, ...]  # the buffer of each output leaf (None: not a tensor)
    func: object  # the torch.ops.aten overload
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.func.overloadpacket.__name__


@dataclass(frozen=True)
class Arg:
    """One kernel parameter: ``kind`` "buffer" (value: the buffer id), "scalar" (a runtime int, float or bool) or
    "constexpr"."""

    name: str
    kind: str
    value: object


@dataclass(frozen=True)
class Launch:
    kernel: object  # the generated module's JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple[Arg, ...]
    options: tuple[tuple[str, object], ...]  # num_warps, num_stages, ...
    writes: frozenset[int]  # the buffers the kernel stores to, with these constexprs

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@dataclass(frozen=True)
class Out:
    """A traced output: the first ``numel`` elements of a buffer, in ``shape``."""

    buf: int
    shape: tuple[int, ...]


@dataclass
class Trace:
    inputs: list[int | None]  # the buffer of each input leaf (None: not a tensor)
    buffers: dict[int, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # root shape, dtype
    events: list = field(default_factory=list)
    outputs: object = None  # the pytree fn returned, tensors replaced by Out

    def launches(self) -> list[Launch]:
        return [e for e in self.events if isinstance(e, Launch)]


_LOCAL = threading.local()  # the recorder of this thread, while one runs


class _Recorder(TorchDispatchMode):
    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.root: dict[int, tuple[torch.Tensor, int]] = {}  # id(tensor) -> (tensor, buffer id); keeps them alive
        self.roots: dict[int, torch.Tensor] = {}  # buffer id -> the tensor that made it
        self.views: set[int] = set()  # buffers that are values of strided or offset views
        self.next_id = 0

    # ------------------------------------------------------------------------------------------- buffers

    def new_buffer(self, t: torch.Tensor) -> int:
        buf = self.next_id
        self.next_id += 1
        self.root[id(t)] = (t, buf)
        self.trace.buffers[buf] = (tuple(t.shape), t.dtype)
        self.roots[buf] = t
        return buf

    def buffer_of(self, t: torch.Tensor, what: str) -> int:
        hit = self.root.get(id(t))
        if hit is None:
            raise TraceError(f"{what}: a tensor made outside the traced call (a cached buffer?) cannot be replayed")
        return hit[1]

    def root_of(self, t: torch.Tensor, what: str) -> torch.Tensor:
        return self.roots[self.buffer_of(t, what)]

    def whole(self, t: torch.Tensor, what: str) -> int:
        buf = self.buffer_of(t, what)
        shape, _ = self.trace.buffers[buf]
        if t.numel() != _numel(shape):
            raise TraceError(f"{what}: only whole buffers can be written by tensor operations")
        return buf

    # ------------------------------------------------------------------------------------------- tensor ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.observe(func, args, kwargs, out)
        return out

    def observe(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        tensors_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if name in _FACTORIES:
            fill = _FACTORIES[name](args, kwargs)
            buf = self.new_buffer(out)
            self.trace.events.append(New(buf, tuple(out.shape), out.dtype, fill))
        elif name in ("fill_", "zero_"):
            value = 0.0 if name == "zero_" else float(args[1])
            self.trace.events.append(Fill(self.whole(args[0], name), value))
        elif name == "copy_":
            dst, src = self.whole(args[0], "copy_"), self.whole(args[1], "copy_")
            self.trace.events.append(Copy(dst, src))
        elif (func.is_view or name in ("_unsafe_view", "alias")) and _from_start(out, self.root_of(args[0], name)):
            self.root[id(out)] = (out, self.buffer_of(args[0], name))
        elif name in ("_to_copy", "clone") and _whole(args[0], self.root_of(args[0], name)):
            src = self.buffer_of(args[0], name)
            buf = self.new_buffer(out)
            self.trace.events.append(Convert(buf, src, tuple(out.shape), out.dtype))
        elif any(t.device.type == "meta" for t in tensors_in):

            def ref(t):
                return Ref(self.buffer_of(t, name), tuple(t.shape)) if isinstance(t, torch.Tensor) else t

            leaves, _ = tree_flatten(out)
            outs = tuple(self.new_buffer(t) if isinstance(t, torch.Tensor) else None for t in leaves)
            if func.is_view or name in ("_unsafe_view", "alias"):
                self.views.update(b for b in outs if b is not None)  # a copy here: no kernel may write it
            self.trace.events.append(Op(outs, func, tree_map(ref, args), tree_map(ref, kwargs)))

    # ------------------------------------------------------------------------------------------- launches

    def launch(self, kernel, args, kwargs, grid) -> None:
        names = kernel.arg_names
        if len(args) > len(names):
            raise TraceError(f"{kernel.fn.__name__}: {len(args)} positional arguments for {len(names)} parameters")
        bound = dict(zip(names, args))
        options = {}
        for key, value in kwargs.items():
            if key in names:
                bound[key] = value
            else:
                options[key] = value
        constexprs = constexpr_params(kernel.fn)
        values = {n: bound[n] for n in names if n in constexprs and n in bound}
        if callable(grid):
            grid = grid(dict(bound))
        grid = tuple(int(g) for g in grid)
        written = written_params(kernel.fn, values)
        bindings, writes = [], set()
        for n in names:
            if n not in bound:
                continue  # a parameter with a default
            value = bound[n]
            if isinstance(value, torch.Tensor):
                buf = self.buffer_of(value, f"{kernel.fn.__name__}({n})")
                if buf in self.views or not _from_start(value, self.roots[buf]):
                    raise TraceError(f"{kernel.fn.__name__}({n}) gets a strided or offset view: cannot be replayed")
                bindings.append(Arg(n, "buffer", buf))
                if n in written:
                    writes.add(buf)
            elif n in constexprs:
                bindings.append(Arg(n, "constexpr", value))
            elif value is None or isinstance(value, (bool, int, float)):
                bindings.append(Arg(n, "scalar", value))
            else:
                raise TraceError(f"{kernel.fn.__name__}({n}) gets a {type(value).__name__}: cannot be replayed")
        self.trace.events.append(Launch(kernel, grid, tuple(bindings), tuple(sorted(options.items())),
                                        frozenset(writes)))  # fmt: skip

    def output(self, t: torch.Tensor) -> Out:
        buf = self.buffer_of(t, "an output")
        if not _from_start(t, self.roots[buf]):
            raise TraceError("an output is a strided or offset view: cannot be replayed")
        return Out(buf, tuple(t.shape))


def _from_start(view: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether ``view`` is a contiguous run of memory from where ``base`` starts."""
    return view.is_contiguous() and view.storage_offset() == base.storage_offset()


def _whole(view: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether ``view`` covers all of ``base``'s memory, contiguously from its start."""
    return _from_start(view, base) and view.numel() == base.numel()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _fill_of(position: int):
    def fill(args, kwargs):
        return float(kwargs.get("fill_value", args[position] if len(args) > position else 0.0))

    return fill


_FACTORIES = {  # aten op -> the fill of the buffer it makes (None: uninitialised)
    "empty": lambda a, k: None,
    "empty_strided": lambda a, k: None,
    "empty_like": lambda a, k: None,
    "new_empty": lambda a, k: None,
    "new_empty_strided": lambda a, k: None,
    "zeros": lambda a, k: 0.0,
    "zeros_like": lambda a, k: 0.0,
    "new_zeros": lambda a, k: 0.0,
    "ones": lambda a, k: 1.0,
    "ones_like": lambda a, k: 1.0,
    "new_ones": lambda a, k: 1.0,
    "full": _fill_of(1),
    "full_like": _fill_of(1),
    "new_full": _fill_of(2),
}


# ----------------------------------------------------------------------------------------------- kernel launches


def _hooked_run(original):
    def run(self, *args, grid, warmup, **kwargs):
        recorder = getattr(_LOCAL, "recorder", None)
        if recorder is not None:
            if not warmup:
                recorder.launch(self, args, kwargs, grid)
            return None
        # fake or functional tensors come with a dispatch mode on the stack: an eager launch pays one C call here
        if not warmup and torch._C._len_torch_dispatch_stack() and any(_traced(a) for a in (*args, *kwargs.values())):
            return _traced_launch(self, grid, args, kwargs)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    run.__wrapped__ = original
    return run


def _traced(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type != "meta" and without_data(value)


def _traced_launch(kernel, grid, args, kwargs):
    """A launch with fake or functional tensors: torch.compile is tracing a Triton entry's operator
    (autotune/torch/compiled_ops.py), so the kernel goes into the graph through torch.library.wrap_triton."""
    from torch._library.triton import is_wrap_triton_enabled
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction) or not is_wrap_triton_enabled():
        raise TraceError(f"{kernel.fn.__name__}: launched on fake tensors outside a traceable Triton operator")
    return torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def install_launch_hook() -> None:
    """Route every Triton launch through the recorder of the current thread, if one is running, and a launch on
    fake or functional tensors into the graph being traced (once per process; other launches go to Triton
    unchanged)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    for cls in (JITFunction, InterpretedFunction):
        if not hasattr(cls.run, "__wrapped__"):
            cls.run = _hooked_run(cls.run)


def meta_like(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def record(fn, inputs) -> Trace:
    """Run ``fn(*inputs)`` on meta tensors and return what it did. ``inputs``: a pytree whose leaves are meta tensors
    (meta_like) or plain values; ``fn`` returns a pytree of tensors (views of buffers from the start) and values."""
    install_launch_hook()
    leaves, spec = tree_flatten(inputs)
    trace = Trace(inputs=[])
    recorder = _Recorder(trace)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type != "meta" or not leaf.is_contiguous():
                raise TraceError("record() takes contiguous meta tensors (meta_like)")
            trace.inputs.append(recorder.new_buffer(leaf))
        else:
            trace.inputs.append(None)
    if getattr(_LOCAL, "recorder", None) is not None:
        raise TraceError("record() does not nest")
    _LOCAL.recorder = recorder
    try:
        with recorder:
            out = fn(*tree_unflatten(leaves, spec))
    finally:
        _LOCAL.recorder = None
    out_leaves, out_spec = tree_flatten(out)
    trace.outputs = tree_unflatten(
        [recorder.output(t) if isinstance(t, torch.Tensor) else t for t in out_leaves], out_spec
    )
    return trace
