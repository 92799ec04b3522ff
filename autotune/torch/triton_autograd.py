"""The autograd plumbing of the Triton entries: one torch.autograd.Function whose forward runs a generated launcher
(keeping what the backward needs when a gradient is wanted) and whose backward runs the generated exact backward,
and the sequence-interface wrapper every chunkwise and parallel entry shares (input checks, fp64 and autocast)."""

from __future__ import annotations

import os

import torch

from ..checks import MLSTMInputError, check_cell, check_chunk_size, check_eps, check_sequence_inputs
from ..launch import chunkwise_bw as launch_chunkwise_bw
from ..launch import parallel_bw as launch_parallel_bw
from ..launch.common import check_heads
from .triton_choice import backward_plan


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(q: torch.Tensor) -> None:
    if q.device.type != "cuda" and not _interpreting():
        raise MLSTMInputError(
            f"Triton kernels need CUDA tensors, got {q.device} (set TRITON_INTERPRET=1 to run them in Triton's "
            "CPU interpreter, or use a native kernel)"
        )


def check_pow2_chunk(chunk_size) -> None:
    check_chunk_size(chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise MLSTMInputError(f"chunk_size must be a power of two >= 16 for Triton kernels, got {chunk_size}")


def _autocast(q, k, v, dtype: torch.dtype):
    if torch.is_autocast_enabled(q.device.type):
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def run_backward(saved: dict, dh, dlast, plan, *, cell: str, normalize: bool, eps: float):
    """The generated backward for what a forward saved, with the (variant, config) chosen at the forward (and the
    offsets "cu" of a packed sequence's documents, when the forward walked them)."""
    variant, config = plan
    config = dict(config)
    borders = None
    if variant.family == "parallel_bw":
        launcher = launch_parallel_bw.parallel_bw
    else:
        launcher = launch_chunkwise_bw.chunkwise_bw
        if (config.get("states") == "reuse" and saved.get("Cb") is not None
                and saved["L"] == config["chunk"]):  # fmt: skip
            borders = (saved["Cb"], saved["nb"], saved["mb"])
        else:
            config["states"] = "recompute"  # e.g. a parallel forward, or a two-pass one with another chunk size
    dC, dn, dm = dlast if dlast is not None else (None, None, None)
    packed = {"cu_seqlens": saved["cu"]} if saved.get("cu") is not None else {}
    return launcher(
        saved["q"], saved["k"], saved["v"], saved["i"], saved["f"], saved["C0"], saved["n0"], saved["m0"], saved["h"],
        saved["s"], saved["mt"], dh, dC, dn, dm, saved["last"], variant=variant, config=config, eps=eps,
        normalize=normalize, borders=borders, **packed,
    )  # fmt: skip


_SAVED = ("q", "k", "v", "i", "f", "C0", "n0", "m0", "h", "s", "mt", "Cb", "nb", "mb", "C_S", "n_S", "m_S", "cu")


def forward_keeping(run, tensors, form: str, cell: str, with_last: bool, needs_grad: bool, plan=None):
    """``run`` on ``tensors`` (q, k, v, i, f, C0, n0, m0). Returns h, the last state (or None), and, when a gradient is
    needed, the backward's (variant, config) (``plan``, or the dispatcher's for these shapes) and what the forward
    kept for it ("s", "mt"; "Cb", "nb", "mb" and their chunk "L" where kept), else (None, None)."""
    if not needs_grad:
        h, last = run(*tensors, return_last_states=with_last, saved=None)
        return h, last, None, None
    plan, saved = plan or backward_plan(tensors[0], tensors[2], form, cell), {}
    if plan[1].get("states") == "reuse":
        # the states' chunk: a fused forward then keeps its states for the backward, a two-pass one stores them at
        # that stride (launch.chunkwise.states_every)
        saved["borders_at"] = plan[1]["chunk"]
    h, last = run(*tensors, return_last_states=with_last, saved=saved)
    return h, last, plan, saved


def backward_grads(saved: dict, dh, dlast, plan, *, with_last: bool, cell: str, normalize: bool, eps: float):
    """The gradients of q, k, v, i, f, C0, n0, m0 (None for an absent input) from what the forward kept (``saved``:
    the names of _SAVED, "L" and "last") and the cotangents of h and of the last state (each None where unused)."""
    if with_last and all(d is None for d in dlast):
        dlast = None
    elif with_last:
        like = (saved["C_S"], saved["n_S"], saved["C_S"].new_zeros(saved["C_S"].shape[:2] + (1,)))
        dlast = tuple(d if d is not None else torch.zeros_like(z) for d, z in zip(dlast, like))
    else:
        dlast = None
    grads = run_backward(saved, dh.contiguous(), dlast, plan, cell=cell, normalize=normalize, eps=eps)
    inputs = (saved[n] for n in ("q", "k", "v", "i", "f", "C0", "n0", "m0"))
    return [g.to(t.dtype).reshape(t.shape) if (t is not None and g is not None) else None
            for g, t in zip(grads, inputs)]  # fmt: skip


class _GeneratedFunction(torch.autograd.Function):
    """Forward: ``run`` (a generated-kernel launcher). Backward: the generated exact backward (run_backward).

    One class for every entry; non-tensor arguments are plain Python values, and no scalar is wrapped in a tensor.
    The forward keeps per-token statistics only when a gradient is needed. Under torch.compile the entries call the
    custom operators of autotune.torch.compiled_ops instead, which run the same two functions."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, run, form: str, cell: str, normalize: bool, eps: float,
                with_last: bool, needs_grad: bool, plan=None, cu=None):  # fmt: skip
        h, last, ctx.plan, saved = forward_keeping(run, (q, k, v, i, f, C0, n0, m0), form, cell, with_last,
                                                   needs_grad, plan)  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, saved["s"], saved["mt"], saved.get("Cb"),
                                  saved.get("nb"), saved.get("mb"), *(last if with_last else (None,) * 3),
                                  cu)  # fmt: skip
            ctx.chunk = saved.get("L", 0)
        ctx.opts = dict(cell=cell, normalize=normalize, eps=eps)
        ctx.with_last = with_last
        return (h, *last) if with_last else h

    @staticmethod
    def backward(ctx, dh, *dlast):
        saved = dict(zip(_SAVED, ctx.saved_tensors))
        saved["L"], saved["last"] = ctx.chunk, (saved["C_S"], saved["n_S"], saved["m_S"])
        grads = backward_grads(saved, dh, dlast, ctx.plan, with_last=ctx.with_last, **ctx.opts)
        return (*grads, None, None, None, None, None, None, None, None, None)


def _sequence_entry(name: str, run_factory, native_fallback, *, form: str, cell: str, default_chunk: int,
                    uses_chunk: bool):  # fmt: skip
    """A sequence-interface function: validate, pick the path (native for fp64), launch through the Function, or
    under torch.compile through the custom operator of the entry ``name`` (autotune.torch.compiled_ops)."""

    def kernel(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        i: torch.Tensor,
        f: torch.Tensor,
        c_initial: torch.Tensor | None = None,
        n_initial: torch.Tensor | None = None,
        m_initial: torch.Tensor | None = None,
        return_last_states: bool = False,
        eps: float = 1e-6,
        autocast_kernel_dtype: torch.dtype = torch.bfloat16,
        chunk_size: int = default_chunk,
        normalize: bool = True,
        **kwargs,
    ):
        check_cell(cell, normalize)
        check_eps(eps)
        if cell == "sig":
            m_initial = None
        check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell)
        if uses_chunk:
            check_pow2_chunk(chunk_size)
        else:
            check_chunk_size(chunk_size)
        if q.dtype == torch.float64:
            states = (c_initial, n_initial, m_initial)
            return native_fallback(q, k, v, i, f, *states, return_last_states=return_last_states, eps=eps,
                                   chunk_size=chunk_size, normalize=normalize)  # fmt: skip
        _check_device(q)
        check_heads(q.shape[0], q.shape[1])
        q, k, v = _autocast(q, k, v, autocast_kernel_dtype)
        tensors = (q, k, v, i, f, c_initial, n_initial, m_initial)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        if torch.compiler.is_compiling():
            from . import compiled_ops

            out = compiled_ops.sequence(name, *tensors, chunk_size=chunk_size, eps=float(eps), normalize=normalize,
                                        with_last=return_last_states, needs_grad=needs_grad)  # fmt: skip
        else:
            run = run_factory(chunk_size=chunk_size, eps=eps, normalize=normalize)
            out = _GeneratedFunction.apply(*tensors, run, form, cell, normalize, float(eps), return_last_states,
                                           needs_grad)  # fmt: skip
        if not return_last_states:
            return out
        h, C, n, m = out
        return h, ((C, n, m) if cell == "exp" else (C, n))

    return kernel
