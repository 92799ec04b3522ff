"""The Triton entries as PyTorch custom operators, so that ``torch.compile(..., fullgraph=True)`` takes a model that
calls them without a graph break.

Under ``torch.compile`` (``torch.compiler.is_compiling()``) the chunkwise and parallel entries, the step and the
sequence kernel call these operators instead of running their launchers inline; eager calls keep the direct path.
Everything the dispatcher decides (variant, configuration, the backward's plan) is decided inside the operators
from the shapes and dtypes, so the graph Dynamo captures holds one operator call per entry (Inductor then sees
the kernels inside it or an opaque call, below):

    mlstm_autotune::sequence_fw   forward of a chunkwise or parallel entry, with what its backward needs
    mlstm_autotune::sequence_bw   the generated exact backward (registered as sequence_fw's autograd formula)
    mlstm_autotune::step          one recurrent step into new state buffers
    mlstm_autotune::step_         one recurrent step updating c, n, m in place (mutates exactly those)
    mlstm_autotune::scan          the recurrent sequence kernel (inference)

An absent tensor (no initial state, no kept states) travels as a tensor of shape (0,). The forward's kept states
carry their chunk length L in the shape of a marker, an empty tensor of shape (0, L).

With torch >= 2.6 the operators are ``torch.library.triton_op``s: tracing runs their Python on fake tensors, and
each kernel launch goes into the graph through ``torch.library.wrap_triton`` (the launch hook of
autotune/launch/trace.py routes a launch on fake or functional tensors there), so Inductor sees the generated
kernels themselves, with the variant, configuration, grid and warp and stage counts the dispatcher chose, and
launches them from its own code. With older torch, and under Triton's interpreter (whose kernels cannot be
traced), they are ``torch.library.custom_op``s that Inductor runs as external calls; their fake implementations
(shapes for tracing) record the real launchers on meta tensors, so they cannot drift from what the launchers
allocate.
"""

import os

import torch

from ..launch.trace import install_launch_hook, meta_like, record
from .triton_autograd import _SAVED, backward_grads, forward_keeping
from .triton_choice import TRACE_TARGET, backward_plan, gpu_identity

_KEPT = ("s", "mt", "Cb", "nb", "mb")

# the operators' kind: kernels traced into the graph, or opaque calls (see above)
TRACEABLE = hasattr(torch.library, "triton_op") and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def _operator(name: str, fn, fake, mutates_args: tuple[str, ...] = ()):
    """``fn`` as the operator ``mlstm_autotune::<name>``: a triton_op where TRACEABLE, else a custom_op with ``fake``
    as its fake implementation."""
    if TRACEABLE:
        install_launch_hook()
        return torch.library.triton_op(f"mlstm_autotune::{name}", mutates_args=mutates_args)(fn)
    op = torch.library.custom_op(f"mlstm_autotune::{name}", mutates_args=mutates_args)(fn)
    op.register_fake(fake)
    return op


def _absent(t: torch.Tensor | None) -> bool:
    return t is None or (t.dim() == 1 and t.numel() == 0)


def present(t: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor, or None for the stand-in of an absent one."""
    return None if _absent(t) else t


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def absent_or(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t``, or the (0,)-shaped stand-in of an absent tensor."""
    return t if t is not None else _placeholder(like)


def _fake_by_record(real, *args):
    """Fake outputs of ``real(*args)``: the launcher's Python runs on meta tensors of the same shapes (no kernel
    runs), for the GPU the fake tensors are on."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device
    with unset_fake_temporarily():
        metas = [meta_like(a.shape, a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
        token = TRACE_TARGET.set(gpu_identity(device))
        try:
            trace = record(real, metas)
        finally:
            TRACE_TARGET.reset(token)
    return [torch.empty(out.shape, dtype=trace.buffers[out.buf][1], device=device) for out in trace.outputs]


# --- chunkwise and parallel entries --------------------------------------------------------------------------------


def _sequence_fw(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                C0: torch.Tensor, n0: torch.Tensor, m0: torch.Tensor, chunk_size: int, eps: float, normalize: bool,
                with_last: bool, needs_grad: bool) -> list[torch.Tensor]:  # fmt: skip
    """[h, C_S, n_S, m_S, s, mt, Cb, nb, mb, L marker] of entry ``name``; absent ones of shape (0,)."""
    from .triton_kernels import SEQUENCE_ENTRIES

    entry = SEQUENCE_ENTRIES[name]
    run = entry.run(chunk_size=chunk_size, eps=eps, normalize=normalize)
    tensors = (q, k, v, i, f, present(C0), present(n0), present(m0))
    h, last, _, saved = forward_keeping(run, tensors, entry.form, entry.cell, with_last, needs_grad)
    last = list(last) if with_last else [_placeholder(q) for _ in range(3)]
    saved = saved or {}
    kept = [absent_or(saved.get(key), q) for key in _KEPT]
    return [h, *last, *kept, q.new_empty(0, saved.get("L", 0))]


def _sequence_fw_fake(name, q, k, v, i, f, C0, n0, m0, chunk_size, eps, normalize, with_last, needs_grad):
    return _fake_by_record(_sequence_fw, name, q, k, v, i, f, C0, n0, m0, chunk_size, eps, normalize,
                           with_last, needs_grad)  # fmt: skip


sequence_fw = _operator("sequence_fw", _sequence_fw, _sequence_fw_fake)


def _sequence_bw(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                C0: torch.Tensor, n0: torch.Tensor, m0: torch.Tensor, h: torch.Tensor, s: torch.Tensor,
                mt: torch.Tensor, Cb: torch.Tensor, nb: torch.Tensor, mb: torch.Tensor, chunk_marker: torch.Tensor,
                C_S: torch.Tensor, n_S: torch.Tensor, m_S: torch.Tensor, dh: torch.Tensor, dC: torch.Tensor,
                dn: torch.Tensor, dm: torch.Tensor, eps: float, normalize: bool,
                with_last: bool) -> list[torch.Tensor]:  # fmt: skip
    """[dq, dk, dv, di, df, dC0, dn0, dm0] through the backward the dispatcher plans for these shapes."""
    from .triton_kernels import SEQUENCE_ENTRIES

    entry = SEQUENCE_ENTRIES[name]
    values = (q, k, v, i, f, C0, n0, m0, h, s, mt, Cb, nb, mb, C_S, n_S, m_S)
    saved = {key: present(t) for key, t in zip(_SAVED, values)}
    saved["L"], saved["last"] = chunk_marker.shape[1], (saved["C_S"], saved["n_S"], saved["m_S"])
    plan = backward_plan(q, v, entry.form, entry.cell)
    dlast = (present(dC), present(dn), present(dm))
    grads = backward_grads(saved, dh, dlast, plan, with_last=with_last, cell=entry.cell, normalize=normalize, eps=eps)
    return [absent_or(g, q).contiguous() for g in grads]  # contiguous, as the fake's, whatever the inputs' strides


def _sequence_bw_fake(name, q, k, v, i, f, C0, n0, m0, *rest):
    # contiguous: empty_like would keep the strides of a permuted input (a model's projections give q, k, v so),
    # which the real gradients do not have, and Inductor asserts the real strides against these
    return [t.new_empty(t.shape) if not _absent(t) else _placeholder(q) for t in (q, k, v, i, f, C0, n0, m0)]


sequence_bw = _operator("sequence_bw", _sequence_bw, _sequence_bw_fake)


def _setup_sequence(ctx, inputs, output):
    name, q, k, v, i, f, C0, n0, m0, chunk_size, eps, normalize, with_last, needs_grad = inputs
    h, C_S, n_S, m_S, s, mt, Cb, nb, mb, marker = output
    ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, s, mt, Cb, nb, mb, marker, C_S, n_S, m_S)
    ctx.args = (name, eps, normalize, with_last)


def _sequence_backward(ctx, grads):
    name, eps, normalize, with_last = ctx.args
    dh, dC, dn, dm = grads[:4]
    saved = ctx.saved_tensors
    q, h = saved[0], saved[8]
    dh = dh if dh is not None else torch.zeros_like(h)
    cotangents = [absent_or(g, q) for g in (dC, dn, dm)]
    out = sequence_bw(name, *saved, dh, *cotangents, eps, normalize, with_last)
    return (None, *(present(g) for g in out), None, None, None, None, None)


sequence_fw.register_autograd(_sequence_backward, setup_context=_setup_sequence)


def sequence(name: str, q, k, v, i, f, C0, n0, m0, *, chunk_size: int, eps: float, normalize: bool, with_last: bool,
             needs_grad: bool):  # fmt: skip
    """The entry's h, or (h, C, n, m) with ``with_last``, through sequence_fw (its gradient: sequence_bw)."""
    states = [absent_or(t, q) for t in (C0, n0, m0)]
    out = sequence_fw(name, q, k, v, i, f, *states, chunk_size, eps, normalize, with_last, needs_grad)
    return (out[0], *out[1:4]) if with_last else out[0]


# --- the recurrent step and sequence kernels ------------------------------------------------------------------------


def _step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
         n: torch.Tensor, m: torch.Tensor, eps: float, normalize: bool, cell: str,
         dtype_state: torch.dtype) -> list[torch.Tensor]:  # fmt: skip
    """[h, C, n, m] of one step into new buffers (m of shape (0,) for the sig cell)."""
    from .triton_kernels import step_launch

    h, (C1, n1, m1) = step_launch(q, k, v, i, f, present(c), present(n), present(m), cell=cell, eps=eps,
                                  normalize=normalize, dtype_state=dtype_state)  # fmt: skip
    return [h, C1, n1, absent_or(m1, q)]


def _step_fake(q, k, v, i, f, c, n, m, eps, normalize, cell, dtype_state):
    return _fake_by_record(_step, q, k, v, i, f, c, n, m, eps, normalize, cell, dtype_state)


step = _operator("step", _step, _step_fake)


def _step_(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
          n: torch.Tensor, m: torch.Tensor, eps: float, normalize: bool, cell: str,
          dtype_state: torch.dtype) -> torch.Tensor:  # fmt: skip
    """h of one step; c, n and m (m of shape (0,) for the sig cell) are updated in place."""
    from .triton_kernels import step_launch

    h, _ = step_launch(q, k, v, i, f, c, n, present(m), cell=cell, eps=eps, normalize=normalize,
                       dtype_state=dtype_state, inplace=True)  # fmt: skip
    return h


def _step__fake(q, k, v, i, f, c, n, m, eps, normalize, cell, dtype_state):
    return q.new_empty(q.shape[:2] + v.shape[-1:])


step_ = _operator("step_", _step_, _step__fake, mutates_args=("c", "n", "m"))


def _scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, C0: torch.Tensor,
         n0: torch.Tensor, m0: torch.Tensor, eps: float, normalize: bool, cell: str, with_last: bool,
         dtype_state: torch.dtype) -> list[torch.Tensor]:  # fmt: skip
    """[h, C_S, n_S, m_S] of the recurrent sequence kernel (absent ones of shape (0,))."""
    from .triton_kernels import sequence_run

    run = sequence_run(cell=cell, eps=eps, normalize=normalize)
    states = (present(C0), present(n0), present(m0))
    h, last = run(q, k, v, i, f, *states, return_last_states=with_last, state_dtype=dtype_state)
    last = [absent_or(t, q) for t in last] if with_last else [_placeholder(q) for _ in range(3)]
    return [h, *last]


def _scan_fake(q, k, v, i, f, C0, n0, m0, eps, normalize, cell, with_last, dtype_state):
    return _fake_by_record(_scan, q, k, v, i, f, C0, n0, m0, eps, normalize, cell, with_last, dtype_state)


scan = _operator("scan", _scan, _scan_fake)
