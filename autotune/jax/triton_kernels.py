"""The JAX registry entries served by the generated Triton kernels: the same names, generated modules, dispatcher and
tuning databases as the PyTorch entries (autotune/torch/triton_kernels.py).

Each entry records the PyTorch entry's launches once per shapes on meta tensors (autotune/launch/trace.py: the
dispatcher's choice is made there, at trace time, from static shapes) and replays them on JAX arrays
(autotune/jax/triton_exec.py: jax-triton on a GPU, Triton's interpreter when TRITON_INTERPRET=1). Chunkwise and
parallel entries are ``jax.custom_vjp`` functions whose backward is the generated exact backward, chosen by the
dispatcher under direction "fwbw" exactly as for PyTorch; the step and sequence entries run the generated inference
kernels forward and take their gradient from the native JAX kernels (autodiff of the same function).

Rules beyond those of every kernel (autotune.checks): a GPU backend (or TRITON_INTERPRET=1); float64 inputs run the
native kernels (Triton's dots are not fp64); ``chunk_size`` a power of two >= 16; not under ``jax.vmap`` (fold the
mapped axis into B). Works under ``jax.jit`` and ``jax.grad``.
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp

from ..checks import MLSTMInputError, check_cell, check_chunk_size, check_eps, check_sequence_inputs, check_step_inputs
from ..launch.common import check_heads
from ..torch.triton_autograd import check_pow2_chunk, run_backward
from ..torch.triton_choice import backward_plan
from ..torch.triton_kernels import SEQUENCE_ENTRIES, sequence_run, step_launch
from . import registry
from .checks import JAX, compute_dtype, max_state_dtype, state_dtype
from .native.chunkwise import chunkwise_kernel
from .native.recurrent import mlstm_recurrent_sequence__native, mlstm_recurrent_step__native
from .triton_exec import answers_generation, call, target, torch_dtype, traced

_STATES = ("Cb", "nb", "mb")


# ------------------------------------------------------------------------------------------- run functions (recorded)


def _forward_run(*, name: str, chunk_size: int, eps: float, normalize: bool, with_last: bool, saving: bool):
    """The PyTorch entry's forward; with ``saving``, also what its backward needs (the backward's plan decides
    whether the states before every chunk are kept, as in autotune/torch/triton_autograd.py)."""
    entry = SEQUENCE_ENTRIES[name]
    run = entry.run(chunk_size=chunk_size, eps=eps, normalize=normalize)

    def forward(q, k, v, i, f, C0, n0, m0):
        saved = None
        if saving:
            saved = {}
            _, config = backward_plan(q, v, entry.form, entry.cell)
            if config.get("states") == "reuse":
                saved["borders_at"] = config["chunk"]
        h, last = run(q, k, v, i, f, C0, n0, m0, return_last_states=with_last, saved=saved)
        if saved is not None:
            saved.pop("borders_at", None)
            saved = {key: saved.get(key) for key in ("s", "mt", *_STATES, "L")}
        return h, last, saved

    return forward


def _backward_run(*, name: str, chunk_size: int, eps: float, normalize: bool, with_last: bool, L: int):
    """The generated backward of the PyTorch entry, on what _forward_run saved."""
    entry = SEQUENCE_ENTRIES[name]

    def backward(q, k, v, i, f, C0, n0, m0, h, s, mt, Cb, nb, mb, C_S, n_S, m_S, dh, dC, dn, dm):
        plan = backward_plan(q, v, entry.form, entry.cell)
        saved = dict(q=q, k=k, v=v, i=i, f=f, C0=C0, n0=n0, m0=m0, h=h, s=s, mt=mt, Cb=Cb, nb=nb, mb=mb, L=L,
                     last=(C_S, n_S, m_S))  # fmt: skip
        dlast = (dC, dn, dm) if with_last else None
        return list(run_backward(saved, dh, dlast, plan, cell=entry.cell, normalize=normalize, eps=eps))

    return backward


def _step_run(*, cell: str, eps: float, normalize: bool, dtype_state: str):
    # the state updated in place, as the PyTorch step with inplace=True: the replay declares c, n, m the kernel's
    # outputs as well (input_output_aliases), so a state donated to jax.jit is overwritten where it lies. With fresh
    # outputs XLA placed the new state in the donated buffer and copied the old one out first: one more read and
    # write of the state per step (JAX 1.95x ours at B=512 on the H100).
    def step(q, k, v, i, f, c, n, m):
        return step_launch(q, k, v, i, f, c, n, m, cell=cell, eps=eps, normalize=normalize,
                           dtype_state=torch_dtype(dtype_state), inplace=True)  # fmt: skip

    return step


def _sequence_loop_run(*, cell: str, eps: float, normalize: bool, dtype_state: str, with_last: bool):
    run = sequence_run(cell=cell, eps=eps, normalize=normalize)

    def sequence(q, k, v, i, f, C0, n0, m0):
        return run(q, k, v, i, f, C0, n0, m0, return_last_states=with_last, state_dtype=torch_dtype(dtype_state))

    return sequence


# ------------------------------------------------------------------------------------------- chunkwise and parallel


def _specs(arrays) -> tuple:
    return tuple(None if a is None else (tuple(a.shape), jnp.dtype(a.dtype).name) for a in arrays)


@cache
def _sequence_fn(name: str, chunk_size: int, eps: float, normalize: bool, with_last: bool, generation: int):
    """(q, k, v, i, f, C0, n0, m0) -> (h, last state or None), with the generated exact backward as its VJP; forward
    and backward recorded under the dispatcher's answers of one ``generation`` (triton_exec.answers_generation)."""
    opts = dict(name=name, chunk_size=chunk_size, eps=eps, normalize=normalize, with_last=with_last)

    @jax.custom_vjp
    def fn(q, k, v, i, f, C0, n0, m0):
        h, last, _ = call(_forward_run, dict(opts, saving=False), q, k, v, i, f, C0, n0, m0, generation=generation)
        return h, last

    def fwd(q, k, v, i, f, C0, n0, m0):
        inputs = (q, k, v, i, f, C0, n0, m0)
        h, last, saved = call(_forward_run, dict(opts, saving=True), *inputs, generation=generation)
        return (h, last), (inputs, h, last, tuple(saved[key] for key in ("s", "mt", *_STATES)))

    def bwd(residuals, cotangents):
        inputs, h, last, stats = residuals
        dh, dlast = cotangents
        # the chunk of the kept states: a Python value of the forward's recording (cached, not recorded again)
        fw_options = tuple(sorted(dict(opts, saving=True).items()))
        L = traced(_forward_run, fw_options, _specs(inputs), target(), generation).outputs[2]["L"]
        last = last if with_last else (None, None, None)
        dlast = dlast if with_last else (None, None, None)
        grads = call(_backward_run, dict(opts, L=L), *inputs, h, *stats, *last, dh, *dlast, generation=generation)
        return tuple(
            None if x is None else (jnp.zeros_like(x) if g is None else g.astype(x.dtype).reshape(x.shape))
            for g, x in zip(grads, inputs)
        )

    fn.defvjp(fwd, bwd)
    return fn


def _sequence_entry(name: str):
    entry = SEQUENCE_ENTRIES[name]

    def kernel(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states: bool = False,
               eps: float = 1e-6, autocast_kernel_dtype=None, chunk_size: int = entry.default_chunk,
               normalize: bool = True, **kwargs):  # fmt: skip
        cell = entry.cell
        check_cell(cell, normalize)
        check_eps(eps)
        if cell == "sig":
            m_initial = None
        check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, kind=JAX)
        if entry.uses_chunk:
            check_pow2_chunk(chunk_size)
        else:
            check_chunk_size(chunk_size)
        if compute_dtype(q, i, c_initial) == jnp.float64:  # Triton's dots are not fp64: the native kernel
            return chunkwise_kernel(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps,
                                    chunk_size, cell=cell, normalize=normalize, custom_backward=True)  # fmt: skip
        target()  # a GPU, or the interpreter
        check_heads(q.shape[0], q.shape[1])
        fn = _sequence_fn(name, chunk_size, float(eps), bool(normalize), bool(return_last_states), answers_generation())
        h, last = fn(q, k, v, i, f, c_initial, n_initial, m_initial)
        if not return_last_states:
            return h
        C, n, m = last
        return h, ((C, n, m) if cell == "exp" else (C, n))

    kernel.__name__ = kernel.__qualname__ = "mlstm_" + name.replace("--", "__")
    kernel.__doc__ = f"""The Triton entry {name!r} on JAX arrays ({entry.cell} cell): the generated forward and exact
    backward that the dispatcher picks for this GPU and shape. Interface and shapes as the native kernels; h in q's
    dtype, last states in float32."""
    return kernel


# ------------------------------------------------------------------------------------------- step and sequence


def _native_gradient(fn, native):
    """``fn`` (a Triton forward of arrays) with the VJP of ``native`` (the native kernel of the same function)."""
    wrapped = jax.custom_vjp(fn)

    def fwd(*args):
        return fn(*args), args

    def bwd(args, cotangent):
        return jax.vjp(native, *args)[1](cotangent)

    wrapped.defvjp(fwd, bwd)
    return wrapped


@cache
def _step_fn(cell: str, eps: float, normalize: bool, dtype_state: str):
    opts = dict(cell=cell, eps=eps, normalize=normalize, dtype_state=dtype_state)

    def triton(q, k, v, i, f, c, n, m):
        return call(_step_run, opts, q, k, v, i, f, c, n, m)

    def native(q, k, v, i, f, c, n, m):
        return mlstm_recurrent_step__native(q, k, v, i, f, c, n, m, eps=eps, dtype_state=dtype_state, cell=cell,
                                            normalize=normalize)  # fmt: skip

    return _native_gradient(triton, native)


def mlstm_recurrent_step__triton(q, k, v, i, f, c, n, m, eps: float = 1e-6, dtype_state=jnp.float32,
                                 cell: str = "exp", normalize: bool = True, inplace: bool = False,
                                 **kwargs):  # fmt: skip
    """One mLSTM step in one launch of a generated kernel; the step interface of the native step kernel (gradients
    by the native step's autodiff). float64 inputs run the native step kernel."""
    if inplace:
        raise MLSTMInputError("inplace=True is a PyTorch option: JAX arrays are immutable (donate the state to jit)")
    check_cell(cell, normalize)
    check_eps(eps)
    dims = check_step_inputs(q, k, v, i, f, c, n, m if cell == "exp" else None, cell=cell, kind=JAX)
    sd = state_dtype(dtype_state, q, i, c)
    if compute_dtype(q, i, c) == jnp.float64:
        return mlstm_recurrent_step__native(q, k, v, i, f, c, n, m, eps=eps, dtype_state=dtype_state, cell=cell,
                                            normalize=normalize)  # fmt: skip
    target()
    check_heads(dims.B, dims.NH)
    if c is None:
        c = jnp.zeros((dims.B, dims.NH, dims.DHQK, dims.DHHV), sd)
        n = jnp.zeros((dims.B, dims.NH, dims.DHQK), sd)
        m = jnp.zeros((dims.B, dims.NH, 1), max_state_dtype(sd)) if cell == "exp" else None
    given_m = m  # the sig cell has no max state: m passes through unchanged
    c, n = c.astype(sd), n.astype(sd)  # the kernel updates them in place (_step_run): in the state's dtype
    m = m.astype(max_state_dtype(sd)) if cell == "exp" else m
    h, (C, n_new, m_new) = _step_fn(cell, float(eps), bool(normalize), sd.name)(
        q, k, v, i, f, c, n, m if cell == "exp" else None
    )
    return h, (C, n_new, m_new if cell == "exp" else given_m)


@cache
def _sequence_loop_fn(cell: str, eps: float, normalize: bool, dtype_state: str, with_last: bool):
    opts = dict(cell=cell, eps=eps, normalize=normalize, dtype_state=dtype_state, with_last=with_last)

    def triton(q, k, v, i, f, C0, n0, m0):
        h, last = call(_sequence_loop_run, opts, q, k, v, i, f, C0, n0, m0)
        return (h, tuple(last) if cell == "exp" else tuple(last[:2])) if with_last else h

    def native(q, k, v, i, f, C0, n0, m0):
        return mlstm_recurrent_sequence__native(q, k, v, i, f, C0, n0, m0, return_last_states=with_last, eps=eps,
                                                dtype_state=dtype_state, cell=cell, normalize=normalize)  # fmt: skip

    return _native_gradient(triton, native)


def mlstm_recurrent_sequence__triton(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None,
                                     return_last_states: bool = False, eps: float = 1e-6, dtype_state=jnp.float32,
                                     cell: str = "exp", normalize: bool = True, **kwargs):  # fmt: skip
    """The recurrence over a whole sequence in one launch (any S >= 1), states on chip; the interface of the native
    sequence kernel (gradients by the native kernel's autodiff). float64 inputs run the native sequence kernel."""
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None
    check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell, kind=JAX)
    sd = state_dtype(dtype_state, q, i, c_initial)
    if compute_dtype(q, i, c_initial) == jnp.float64:
        return mlstm_recurrent_sequence__native(q, k, v, i, f, c_initial, n_initial, m_initial,
                                                return_last_states=return_last_states, eps=eps,
                                                dtype_state=dtype_state, cell=cell, normalize=normalize)  # fmt: skip
    target()
    check_heads(q.shape[0], q.shape[1])
    fn = _sequence_loop_fn(cell, float(eps), bool(normalize), sd.name, bool(return_last_states))
    return fn(q, k, v, i, f, c_initial, n_initial, m_initial)


def _register() -> None:
    for name in SEQUENCE_ENTRIES:
        form, backend = name.split("--")
        registry.REGISTRY.register_kernel(form, backend, _sequence_entry(name))
    registry.REGISTRY.register_step_kernel("triton", mlstm_recurrent_step__triton)
    registry.REGISTRY.register_sequence_kernel("native_sequence__triton", mlstm_recurrent_sequence__triton)


_register()
