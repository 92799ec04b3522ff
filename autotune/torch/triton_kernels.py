"""Registry entries served by the generated Triton kernels.

Forward passes run the generated kernels (autotune.launch) with the variant and launch configuration the dispatcher
picks (autotune.dispatch: the tuning database for this GPU and shape, else the structure's default, in which
``chunk_size`` sets the chunk; MLSTM_AUTOTUNE_DISPATCH=0 always takes the default). A named entry keeps to its
structure (``triton_xl_chunk``: two passes; ``triton_fused``: one pass); ``triton_auto`` takes any. Gradients
come from the generated exact backward (templates/chunkwise_bw.py.j2, docs/math.md §6), picked by the dispatcher under
direction "fwbw" (default: the fused within-chunk kernel, chunks of 64, states recomputed): when an input needs a
gradient, the forward also keeps the per-token statistics (s, m) the backward needs, and with a two-pass forward
the states before every chunk, which a backward configured with ``states="reuse"`` takes instead of recomputing:
a two-pass forward then stores them every L tokens of that backward's chunk, whatever its own configuration says
(launch.chunkwise.states_every); a fused forward keeps them when its chunk equals L, else the backward recomputes
them at its own L.
Parallel entries default to the generated parallel backward (templates/parallel_bw.py.j2); their "fwbw" entries may
also name a chunkwise backward (the two forms compute the same function).

Which variant and configuration a call runs: autotune.torch.triton_choice; the autograd Function and the shared
sequence-interface wrapper: autotune.torch.triton_autograd. This module holds the entries themselves.

Rules beyond those of every kernel (autotune.checks): tensors must be on a CUDA device (or Triton's
interpreter must be on, TRITON_INTERPRET=1); float64 inputs run the native kernels (Triton's dots are not
fp64); ``chunk_size`` must be a power of two >= 16. Under torch.autocast, q, k, v are cast to
``autocast_kernel_dtype`` first, as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from .. import db as tdb
from ..checks import MLSTMInputError, check_cell, check_eps, check_sequence_inputs, check_step_inputs
from ..dispatch import Request, dispatcher
from ..launch import chunkwise as launch_chunkwise
from ..launch import chunkwise_bw as launch_chunkwise_bw
from ..launch import parallel as launch_parallel
from ..launch import recurrent as launch_recurrent
from ..launch.common import MAX_GRID_HEADS, check_heads, empty
from . import registry
from .native.recurrent import mlstm_recurrent_sequence__native, mlstm_recurrent_step__native
from .triton_autograd import _autocast, _check_device, _GeneratedFunction, _sequence_entry, check_pow2_chunk
from .triton_choice import (
    BACKWARDS,
    backward_default,
    backward_plan,
    check_choice,
    chunkwise_default,
    family_default,
    pick,
)

# kernel name -> (op, allowed structures, default(chunk_size, DHQK, DHHV) -> (variant name, config)); filled by
# _register, read by explain() (``mlstm-tune show``)
_ENTRIES: dict[str, tuple] = {}


def explain(name: str, *, dtype: torch.dtype, B: int, NH: int, S: int, DHQK: int, DHHV: int, chunk_size: int = 64,
            gpu: str, capability: tuple[int, int], direction: str = "fw"):  # fmt: skip
    """What a call of the Triton entry ``name`` with these shapes would run on ``gpu``: (Request, Choice); with
    direction "fwbw", the backward of a training step."""
    if name not in _ENTRIES:
        raise ValueError(f"{name!r} is not served by generated kernels; these are: {', '.join(_ENTRIES)}")
    op, structures, default = _ENTRIES[name]
    if direction == "fwbw":
        form, _, cell = op.partition(":")
        if form not in BACKWARDS:
            raise ValueError(f"{name!r} has no generated backward (inference only)")
        structures, default = BACKWARDS[form][0], lambda chunk, K, V, dtype: backward_default(form, cell, K, V)
    elif direction != "fw":
        raise ValueError(f"direction must be fw or fwbw, got {direction!r}")
    request = Request(op, direction, str(dtype).removeprefix("torch."), DHQK, DHHV, tdb.bucket(S), tdb.bucket(B * NH),
                      structures)  # fmt: skip
    return request, dispatcher().choose(request, gpu, capability, partial(default, chunk_size, DHQK, DHHV, dtype),
                                        validate=partial(check_choice, op, structures, DHQK, DHHV))  # fmt: skip


def _chunkwise_run(structures: tuple[str, ...], default_template: str, cell: str, *, equal_chunks: bool):
    def factory(*, chunk_size: int, eps: float, normalize: bool):
        def run(q, k, v, i, f, C0, n0, m0, *, return_last_states, saved=None):
            B, NH, S, DHQK = q.shape
            DHHV = v.shape[-1]

            default = partial(chunkwise_default, default_template, cell, equal_chunks, chunk_size, DHQK, DHHV,
                              q.dtype)  # fmt: skip
            # the inference choice; asked in a training step too, where a bad forced one raises all the same
            variant, config = pick(f"chunkwise:{cell}", structures, q, DHHV, S, B * NH, default)
            if saved is not None:  # a training step: the forward its backward was checked behind, at its chunk
                L = backward_plan(q, v, "chunkwise", cell)[1]["chunk"]
                variant, config = launch_chunkwise.training_forward(cell, DHQK, DHHV, L)
            return launch_chunkwise.chunkwise_fw(
                q, k, v, i, f, C0, n0, m0, variant=variant, config=config, eps=eps, normalize=normalize,
                return_last_states=return_last_states, saved=saved,
            )  # fmt: skip

        return run

    return factory


def _family_run(form: str, template: str, cell: str, launcher):
    """Run factory of a one-structure family (parallel, sequence): dispatched variant and config."""

    def factory(*, chunk_size: int, eps: float, normalize: bool):
        def run(q, k, v, i, f, C0, n0, m0, *, return_last_states, **kwargs):
            B, NH, S, DHQK = q.shape
            DHHV = v.shape[-1]

            default = partial(family_default, template, cell, DHQK, DHHV)
            variant, config = pick(f"{form}:{cell}", (template.removesuffix(".py.j2"),), q, DHHV, S, B * NH, default)
            return launcher(q, k, v, i, f, C0, n0, m0, variant=variant, config=config, eps=eps, normalize=normalize,
                            return_last_states=return_last_states, **kwargs)  # fmt: skip

        return run

    return factory


def _native_chunkwise(cell: str):
    from .native.chunkwise import _chunkwise_kernel

    def fallback(q, k, v, i, f, c, n, m, *, return_last_states, eps, chunk_size, normalize):
        return _chunkwise_kernel(q, k, v, i, f, c, n, m, return_last_states, eps, chunk_size, cell=cell,
                                 normalize=normalize, custom_backward=True)  # fmt: skip

    return fallback


@dataclass(frozen=True)
class SequenceEntry:
    """A chunkwise or parallel Triton entry: which generated forward it may run and its defaults. The JAX entries
    (autotune/jax/triton_kernels.py) record and replay the same runs."""

    form: str  # chunkwise | parallel
    cell: str
    structures: tuple[str, ...]  # the forward structures (template names without .py.j2) it may run
    default_template: str
    equal_chunks: bool  # chunkwise default: inter- and intra-chunk sizes both chunk_size
    default_chunk: int

    @property
    def uses_chunk(self) -> bool:
        return self.form == "chunkwise"

    def run(self, *, chunk_size: int, eps: float, normalize: bool):
        """run(q, k, v, i, f, C0, n0, m0, *, return_last_states, saved=None) -> (h, last state or None)."""
        if self.form == "chunkwise":
            factory = _chunkwise_run(self.structures, self.default_template, self.cell, equal_chunks=self.equal_chunks)
        else:
            factory = _family_run("parallel", self.default_template, self.cell, launch_parallel.parallel_fw)
        return factory(chunk_size=chunk_size, eps=eps, normalize=normalize)

    def default(self, chunk_size: int, DHQK: int, DHHV: int, dtype: torch.dtype):
        if self.form == "chunkwise":
            return chunkwise_default(self.default_template, self.cell, self.equal_chunks, chunk_size, DHQK, DHHV,
                                     dtype)  # fmt: skip
        return family_default(self.default_template, self.cell, DHQK, DHHV)


def _sequence_entries() -> dict[str, SequenceEntry]:
    two, one = launch_chunkwise.TWOPASS, launch_chunkwise.FUSED
    both = (two.removesuffix(".py.j2"), one.removesuffix(".py.j2"))
    par = ("parallel_fw",)
    return {
        # upstream names: the two-pass structure of upstream's TFLA kernels
        "chunkwise--triton_xl_chunk": SequenceEntry("chunkwise", "exp", both[:1], two, False, 128),
        "chunkwise--triton_limit_chunk": SequenceEntry("chunkwise", "exp", both[:1], two, True, 64),
        "chunkwise--triton_xl_chunk_siging": SequenceEntry("chunkwise", "sig", both[:1], two, False, 128),
        # our own: the fused single pass that keeps the state on chip, and the best structure per shape
        "chunkwise--triton_fused": SequenceEntry("chunkwise", "exp", both[1:], one, True, 64),
        "chunkwise--triton_fused_siging": SequenceEntry("chunkwise", "sig", both[1:], one, True, 64),
        "chunkwise--triton_auto": SequenceEntry("chunkwise", "exp", both, two, False, 64),
        "chunkwise--triton_auto_siging": SequenceEntry("chunkwise", "sig", both, two, False, 64),
        "parallel--triton_limit_headdim": SequenceEntry("parallel", "exp", par, "parallel_fw.py.j2", False, 64),
        "parallel--triton_siging": SequenceEntry("parallel", "sig", par, "parallel_fw.py.j2", False, 64),
    }


SEQUENCE_ENTRIES = _sequence_entries()


def _walk_documents(entry: SequenceEntry):
    """The packed call of a chunkwise entry (autotune/torch/packed.py calls it with checked offsets): the two-pass
    kernels walk the N documents themselves, one launch each for all of them. For inference its configuration is the
    dispatcher's for N sequences of the documents' mean length (the two-pass structure's entry, else its default); a
    training step runs the training forward and the chunkwise backward the dispatcher picks for that key, both
    walking the documents. Returns None where it does not apply (the native kernel runs per document for float64
    inputs, and so does every call for more (document, head) pairs than a grid axis takes or whose backward is not
    a chunkwise one)."""
    two = launch_chunkwise.TWOPASS

    def walk(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, eps=1e-6,
             autocast_kernel_dtype=torch.bfloat16, chunk_size=entry.default_chunk, normalize=True, *, cu, N,
             **kwargs):  # fmt: skip
        check_cell(entry.cell, normalize)
        check_eps(eps)
        m_initial = m_initial if entry.cell == "exp" else None
        dims = check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=entry.cell, states_batch=N)
        NH, T, DHQK, DHHV = dims.NH, dims.S, dims.DHQK, dims.DHHV
        check_pow2_chunk(chunk_size)
        if q.dtype == torch.float64 or N * NH > MAX_GRID_HEADS:  # the states kernel's rows are (document, head)
            return None
        _check_device(q)
        q, k, v = _autocast(q, k, v, autocast_kernel_dtype)
        tensors = (q, k, v, i, f, c_initial, n_initial, m_initial)
        rows = (-(-T // N), N * NH)  # the dispatch key: N sequences of the documents' mean length
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            plan = backward_plan(q, v, "chunkwise", entry.cell, rows)
            if plan[0].template != launch_chunkwise_bw.TEMPLATE:
                return None
            variant, config = launch_chunkwise.training_forward(entry.cell, DHQK, DHHV, plan[1]["chunk"])
            needs_grad = True
        else:
            default = partial(chunkwise_default, two, entry.cell, entry.equal_chunks, chunk_size, DHQK, DHHV,
                              q.dtype)  # fmt: skip
            variant, config = pick(f"chunkwise:{entry.cell}", (two.removesuffix(".py.j2"),), q, DHHV, *rows, default)
            plan, needs_grad = None, False

        def run(q, k, v, i, f, C0, n0, m0, *, return_last_states, saved=None):
            return launch_chunkwise.chunkwise_fw(q, k, v, i, f, C0, n0, m0, variant=variant, config=config, eps=eps,
                                                 normalize=normalize, return_last_states=return_last_states,
                                                 saved=saved, cu_seqlens=cu)  # fmt: skip

        out = _GeneratedFunction.apply(*tensors, run, "chunkwise", entry.cell, normalize, float(eps),
                                       return_last_states, needs_grad, plan, cu)  # fmt: skip
        if not return_last_states:
            return out
        h, C, n, m = out
        return h, ((C, n, m) if entry.cell == "exp" else (C, n))

    return walk


def _register() -> None:
    for name, entry in SEQUENCE_ENTRIES.items():
        _ENTRIES[name] = (f"{entry.form}:{entry.cell}", entry.structures, entry.default)
        form, backend = name.split("--")
        kernel = _sequence_entry(name, entry.run, _native_chunkwise(entry.cell), form=form, cell=entry.cell,
                                 default_chunk=entry.default_chunk, uses_chunk=entry.uses_chunk)  # fmt: skip
        if launch_chunkwise.TWOPASS.removesuffix(".py.j2") in entry.structures:  # the one structure that walks them
            kernel.walk_documents = _walk_documents(entry)
        registry.register_kernel(form, backend, kernel)
    registry.register_step_kernel("triton", mlstm_recurrent_step__triton)
    registry.register_sequence_kernel("native_sequence__triton", mlstm_recurrent_sequence__triton)


def mlstm_recurrent_step__triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c: torch.Tensor | None,
    n: torch.Tensor | None,
    m: torch.Tensor | None,
    eps: float = 1e-6,
    dtype_state: torch.dtype = torch.float32,
    inplace: bool = False,
    cell: str = "exp",
    normalize: bool = True,
    **kwargs,
):
    """One mLSTM step in one launch of a generated kernel; the step interface of the native step kernel.
    ``inplace=True`` updates the caller's c, n, m (contiguous; C and n in dtype_state or wider) without allocating.
    With autograd recording (inputs that require grad), or float64 inputs, it runs the native step kernel."""
    check_cell(cell, normalize)
    check_eps(eps)
    check_step_inputs(q, k, v, i, f, c, n, m if cell == "exp" else None, cell=cell)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, i, f, c, n, m))
    if needs_grad or q.dtype == torch.float64 or (c is not None and c.dtype == torch.float64):
        return mlstm_recurrent_step__native(q, k, v, i, f, c, n, m, eps=eps, dtype_state=dtype_state, inplace=inplace,
                                            cell=cell, normalize=normalize)  # fmt: skip
    _check_device(q)
    check_heads(q.shape[0], q.shape[1])
    if c is None and inplace:
        raise MLSTMInputError("inplace=True needs the state buffers c, n, m")
    if inplace:
        for name, buf in (("c", c), ("n", n), ("m", m)):
            if buf is not None and not buf.is_contiguous():
                raise MLSTMInputError(f"inplace=True needs contiguous state buffers; {name} is not")
    if torch.compiler.is_compiling():  # one operator per step (autotune.torch.compiled_ops)
        from . import compiled_ops as ops

        m_arg = ops.absent_or(m if cell == "exp" else None, q)
        if inplace:
            h = ops.step_(q, k, v, i, f, c, n, m_arg, float(eps), normalize, cell, dtype_state)
            return h, (c, n, m)
        states = [ops.absent_or(t, q) for t in (c, n)]
        h, C1, n1, m1 = ops.step(q, k, v, i, f, *states, m_arg, float(eps), normalize, cell, dtype_state)
        return h, (C1, n1, ops.present(m1) if cell == "exp" else m)
    return step_launch(q, k, v, i, f, c, n, m, cell=cell, eps=eps, normalize=normalize, dtype_state=dtype_state,
                       inplace=inplace)  # fmt: skip


def step_launch(q, k, v, i, f, c, n, m, *, cell: str, eps: float, normalize: bool, dtype_state: torch.dtype,
                inplace: bool = False):  # fmt: skip
    """One step on checked inputs: the dispatched variant and configuration, the new-state buffers (zero state for
    c None; the given c, n, m themselves when ``inplace``), the launch. Returns h, (C, n, m)."""
    B, NH, DHQK = q.shape
    DHHV = v.shape[-1]
    default = partial(family_default, "recurrent_step.py.j2", cell, DHQK, DHHV)
    variant, config = pick(f"step:{cell}", ("recurrent_step",), q, DHHV, 1, B * NH, default)
    if c is None:
        kw = dict(dtype=dtype_state, device=q.device)
        c, n = torch.zeros(B, NH, DHQK, DHHV, **kw), torch.zeros(B, NH, DHQK, **kw)
        m = torch.zeros(B, NH, 1, dtype=torch.float32, device=q.device) if cell == "exp" else None
    if inplace:
        out = (c, n, m)
    else:
        m_dtype = torch.promote_types(dtype_state, torch.float32)
        out = (empty(B, NH, DHQK, DHHV, dtype=dtype_state, device=q.device),
               empty(B, NH, DHQK, dtype=dtype_state, device=q.device),
               empty(B, NH, 1, dtype=m_dtype, device=q.device) if cell == "exp" else m)  # fmt: skip
    h = launch_recurrent.step_fw(q, k, v, i, f, c, n, m, variant=variant, config=config, eps=eps, normalize=normalize,
                                 out=out)  # fmt: skip
    return h, out


def mlstm_recurrent_sequence__triton(
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
    dtype_state: torch.dtype = torch.float32,
    cell: str = "exp",
    normalize: bool = True,
    **kwargs,
):
    """The recurrence over a whole sequence in one launch (any S >= 1), states on chip; the interface of the native
    sequence kernel. With autograd recording, or float64 inputs, it runs the native sequence kernel."""
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None
    check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell)
    tensors = (q, k, v, i, f, c_initial, n_initial, m_initial)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or q.dtype == torch.float64 or (c_initial is not None and c_initial.dtype == torch.float64):
        return mlstm_recurrent_sequence__native(*tensors, return_last_states=return_last_states, eps=eps,
                                                dtype_state=dtype_state, cell=cell, normalize=normalize)  # fmt: skip
    _check_device(q)
    check_heads(q.shape[0], q.shape[1])
    if torch.compiler.is_compiling():  # one operator (autotune.torch.compiled_ops)
        from . import compiled_ops as ops

        h, *last = ops.scan(*tensors[:5], *(ops.absent_or(t, q) for t in tensors[5:]), float(eps), normalize, cell,
                            return_last_states, dtype_state)  # fmt: skip
        last = [ops.present(t) for t in last]
    else:
        h, last = sequence_run(cell=cell, eps=eps, normalize=normalize)(
            *tensors, return_last_states=return_last_states, state_dtype=dtype_state
        )
    if not return_last_states:
        return h
    return h, (last if cell == "exp" else last[:2])


def sequence_run(*, cell: str, eps: float, normalize: bool):
    """run(q, k, v, i, f, C0, n0, m0, *, return_last_states, state_dtype) of the recurrent sequence kernel."""
    factory = _family_run("sequence", "recurrent_sequence.py.j2", cell, launch_recurrent.sequence_fw)
    return factory(chunk_size=64, eps=eps, normalize=normalize)


_register()
