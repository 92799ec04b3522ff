"""Run recorded launches (autotune/launch/trace.py) from JAX: with jax-triton on a GPU, or with Triton's CPU
interpreter through ``jax.pure_callback`` when ``TRITON_INTERPRET=1`` (how the CPU tests run this path).

    target()       the GPU the dispatcher chooses for (name and compute capability of JAX's default device)
    call(...)      record a run function once per shapes (cached), then replay it on JAX arrays
    jax_triton()   the jax-triton module, imported with Triton's cache directory left as it was

Under ``jax.vmap`` a call raises MLSTMInputError (jax-triton has no batching rule): the kernels batch over B, so a
mapped axis belongs folded into B.
"""

from __future__ import annotations

import os
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..checks import MLSTMInputError
from ..dispatch import dispatcher
from ..launch.replay import TorchRuntime, replay
from ..launch.trace import Out, meta_like, record
from ..torch.triton_choice import TRACE_TARGET
from . import aten
from .extra import require

_TO_JNP = aten.DTYPES
_TO_TORCH = {jnp.dtype(v): k for k, v in _TO_JNP.items()}


def torch_dtype(dtype) -> torch.dtype:
    return _TO_TORCH[jnp.dtype(dtype)]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@cache
def jax_triton():
    """Import jax-triton. Its import sets TRITON_CACHE_DIR to "" for the whole process, which would leave Triton's
    own launches (the PyTorch entries, the tuner) without their kernel cache: the previous value is put back (jax-triton
    compiles through its own cache and does not read it)."""
    before = os.environ.get("TRITON_CACHE_DIR")
    try:
        return require("jax_triton", "the Triton kernels of autotune.jax on a GPU")
    finally:
        if before is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = before


def target() -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of JAX's default device, which the dispatcher and the tuning databases key on;
    the interpreter is its own "GPU"."""
    if interpreting():
        return "cpu-interpreter", (0, 0)
    device = jax.devices()[0]
    if device.platform != "gpu":
        raise MLSTMInputError(
            f"the Triton kernels of autotune.jax need a GPU, and JAX's default backend is {device.platform!r} "
            "(set TRITON_INTERPRET=1 to run them in Triton's CPU interpreter, or use a native kernel)"
        )
    major, minor = (int(x) for x in str(device.compute_capability).split(".")[:2])
    return device.device_kind, (major, minor)


class JaxTritonRuntime:
    """Replays a trace with jax-triton: each launch one ``triton_call`` of the kernel's adapter."""

    def new(self, shape, dtype, fill):
        with jax.enable_x64(True):
            return jnp.full(shape, 0.0 if fill is None else fill, dtype=_TO_JNP[dtype])

    def convert(self, x, shape, dtype):
        with jax.enable_x64(True):  # a float64 copy stays float64 (autotune/jax/aten.py)
            return x.astype(_TO_JNP[dtype]).reshape(shape)

    def launch(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options):
        unknown = set(options) - {"num_warps", "num_stages"}
        if unknown:
            raise MLSTMInputError(f"{kernel.fn.__name__}: launch options {sorted(unknown)} cannot pass to jax-triton")
        out_shape = [jax.ShapeDtypeStruct(shape, _TO_JNP[dtype]) for shape, dtype in outputs]
        # a Python float is fp32 to Triton's launcher and fp64 to jax-triton's: pass what the kernel gets from PyTorch
        scalars = [np.float32(x) if isinstance(x, float) else x for x in scalars]
        result = jax_triton().triton_call(
            *inputs, *scalars, kernel=kernel, out_shape=out_shape, grid=grid, input_output_aliases=aliases,
            **options, **constexprs,
        )  # fmt: skip
        return list(result) if isinstance(result, (list, tuple)) else [result]

    def view(self, x, shape):
        return x.reshape(-1)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def op(self, func, args, kwargs):
        return aten.run(func, args, kwargs)


def _to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.uint16).numpy().view(jnp.bfloat16)
    return t.numpy()


class InterpreterRuntime(JaxTritonRuntime):
    """Replays a trace with Triton's CPU interpreter: each launch a ``jax.pure_callback`` that runs the adapter on
    PyTorch CPU tensors (TRITON_INTERPRET=1)."""

    def launch(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options):
        out_shape = [jax.ShapeDtypeStruct(shape, _TO_JNP[dtype]) for shape, dtype in outputs]

        def host(*arrays):
            tensors = [_to_torch(np.asarray(a)) for a in arrays]
            outs = TorchRuntime("cpu").launch(kernel, grid, tensors, scalars, outputs, aliases, constexprs, options)
            return [_to_numpy(o) for o in outs]

        return list(jax.pure_callback(host, out_shape, *inputs, vmap_method="sequential"))


def runtime():
    return InterpreterRuntime() if interpreting() else JaxTritonRuntime()


def _spec(x):
    return None if x is None else (tuple(x.shape), jnp.dtype(x.dtype).name)


@cache
def traced(run_factory, options: tuple, specs: tuple, gpu: tuple, generation: int):
    """The trace of ``run_factory(**options)`` on inputs of these (shape, dtype) specs, for this GPU (once each, per
    ``generation`` of the dispatcher's answers: a reset or a changed MLSTM_AUTOTUNE_FORCE records again)."""
    fn = run_factory(**dict(options))
    metas = tuple(None if s is None else meta_like(s[0], torch_dtype(s[1])) for s in specs)
    token = TRACE_TARGET.set(gpu)
    try:
        return record(fn, metas)
    finally:
        TRACE_TARGET.reset(token)


def answers_generation() -> int:
    """The dispatcher's generation of answers, after taking up a changed MLSTM_AUTOTUNE_FORCE (as PyTorch's entries
    do at every call): recordings are kept per generation."""
    d = dispatcher()
    if d.force_env.get(d.force_key) is not d.force_raw:
        d.sync_force()
    return d.generation


def call(run_factory, options: dict, *arrays, generation: int | None = None):
    """``run_factory(**options)(*tensors)`` on JAX arrays (None where a tensor argument is None): the pytree it
    returns, with JAX arrays for its tensors and its other values as they were when recorded, under the
    dispatcher's answers of ``generation`` (default: the current one)."""
    options = tuple(sorted(options.items()))
    generation = answers_generation() if generation is None else generation
    trace = traced(run_factory, options, tuple(_spec(a) for a in arrays), target(), generation)
    results = iter(_unbatchable(run_factory, options, generation)(*arrays))
    leaves, spec = tree_flatten(trace.outputs, is_leaf=lambda x: isinstance(x, Out))
    return tree_unflatten([next(results) if isinstance(x, Out) else x for x in leaves], spec)


@cache
def _unbatchable(run_factory, options: tuple, generation: int):
    """The replay as a function of arrays only, with a clear error under jax.vmap (jax-triton has no batching
    rule; the kernels already batch over B)."""

    @jax.custom_batching.custom_vmap
    def run(*arrays):
        trace = traced(run_factory, options, tuple(_spec(a) for a in arrays), target(), generation)
        out = replay(trace, list(arrays), runtime())
        return [x for x in tree_flatten(out)[0] if hasattr(x, "shape")]

    @run.def_vmap
    def vmapped(axis_size, in_batched, *arrays):
        raise MLSTMInputError(
            "the Triton kernels of autotune.jax do not run under jax.vmap: fold the mapped axis into the batch "
            "axis B (they batch over B already), or use a native kernel"
        )

    return run


__all__ = ["call", "jax_triton", "runtime", "target", "torch_dtype", "traced"]
