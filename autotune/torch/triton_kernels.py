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

Rules beyond those of every kernel (autotune.checks): tensors must be on a CUDA device (or Triton's
interpreter must be on, TRITON_INTERPRET=1); float64 inputs run the native kernels (Triton's dots are not
fp64); ``chunk_size`` must be a power of two >= 16. Under torch.autocast, q, k, v are cast to
``autocast_kernel_dtype`` first, as upstream does.
"""

from __future__ import annotations

import json
import os
from functools import partial

import torch

from .. import db as tdb
from .. import families
from ..checks import MLSTMInputError, check_cell, check_chunk_size, check_eps, check_sequence_inputs, check_step_inputs
from ..dispatch import Request, dispatcher
from ..launch import chunkwise as launch_chunkwise
from ..launch import chunkwise_bw as launch_chunkwise_bw
from ..launch import parallel as launch_parallel
from ..launch import parallel_bw as launch_parallel_bw
from ..launch import recurrent as launch_recurrent
from ..launch.common import check_heads, empty
from ..variants import by_name, find
from . import registry
from .native.recurrent import mlstm_recurrent_sequence__native, mlstm_recurrent_step__native


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(q: torch.Tensor) -> None:
    if q.device.type != "cuda" and not _interpreting():
        raise MLSTMInputError(
            f"Triton kernels need CUDA tensors, got {q.device} (set TRITON_INTERPRET=1 to run them in Triton's "
            "CPU interpreter, or use a native kernel)"
        )


def _check_pow2_chunk(chunk_size) -> None:
    check_chunk_size(chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise MLSTMInputError(f"chunk_size must be a power of two >= 16 for Triton kernels, got {chunk_size}")


_GPU_IDENTITY: dict = {}
def _gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    """(GPU model, compute capability) of a device, cached; the interpreter is its own "GPU"."""
    if device.type != "cuda":
        return "cpu-interpreter", (0, 0)
    index = device.index if device.index is not None else torch.cuda.current_device()
    hit = _GPU_IDENTITY.get(index)
    if hit is None:
        hit = _GPU_IDENTITY[index] = (torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))
    return hit


def _pick(op: str, structures: tuple[str, ...], q: torch.Tensor, DHHV: int, S: int, BNH: int, default,
          direction: str = "fw"):  # fmt: skip
    """The (variant, config) for a call: the dispatcher's validated answer, memoised per (op, dtype, device, shape)
    so that a repeated call costs one dictionary hit, plus one that notices a changed MLSTM_AUTOTUNE_FORCE (which
    empties the memo: autotune.dispatch) (`python -m autotune.bench_dispatch`)."""
    d = dispatcher()
    if d.force_env.get(d.force_key) is not d.force_raw:
        d.sync_force()
    memo = d.memo
    key = (op, direction, structures, q.dtype, q.device, q.shape[-1], DHHV, S, BNH)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _pick_uncached(op, structures, q, DHHV, S, BNH, default, direction)
    return hit


def _pick_uncached(op, structures, q, DHHV, S, BNH, default, direction):
    if os.environ.get("MLSTM_AUTOTUNE_DISPATCH", "1") == "0":
        name, config = default()
        return by_name(name), dict(config)
    request = Request(op, direction, str(q.dtype).removeprefix("torch."), q.shape[-1], DHHV, tdb.bucket(S),
                      tdb.bucket(BNH), structures)  # fmt: skip
    gpu, capability = _gpu_identity(q.device)
    choice = dispatcher().choose(request, gpu, capability, default,
                                 validate=partial(_validate, op, structures, q.shape[-1], DHHV))  # fmt: skip
    variant = by_name(choice.variant)
    return variant, families.canonical(variant.template, choice.config)


def _validate(op: str, structures: tuple[str, ...], DHQK: int, DHHV: int, choice) -> None:
    """Raise ValueError or KeyError if ``choice`` cannot run a call of ``op`` ("<form>:<cell>") with these
    structures and head dims: a variant of another structure or cell (another function), or a configuration its
    launcher refuses. A forced choice (MLSTM_AUTOTUNE_FORCE, hand-written; the dispatcher raises on it) is also held
    to the launch parameters of its family (autotune.families): none unknown (a misspelt one would go unread), every
    one without a fill given, warp and stage counts that Triton can launch (warps a power of two up to 32); its error
    shows the variant's default configuration."""
    from ..variants import VARIANTS

    cell = op.partition(":")[2]
    if choice.rung == "override" and choice.variant not in {v.name for v in VARIANTS}:
        allowed = [v.name for v in VARIANTS if v.params["cell"] == cell and (
            not structures or v.template.removesuffix(".py.j2") in structures)]  # fmt: skip
        raise ValueError(f"unknown variant {choice.variant!r}; these can run it: {', '.join(allowed)}")
    variant = by_name(choice.variant)
    if structures and variant.template.removesuffix(".py.j2") not in structures:
        raise ValueError(f"{variant.name} is not of the structures {structures}")
    if variant.params["cell"] != cell:
        raise ValueError(f"{variant.name} computes the {variant.params['cell']} cell, not {cell}")
    try:
        families.checked(variant.template, choice.config)
    except MLSTMInputError as err:
        if choice.rung != "override":
            raise
        default = json.dumps(families.default_config(variant, DHQK, DHHV))
        raise ValueError(f"{err}; the variant's default for these head dims: {default}") from None


def _autocast(q, k, v, dtype: torch.dtype):
    if torch.is_autocast_enabled(q.device.type):
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


# form -> (structures its backward may take, the default backward template)
_BACKWARDS = {"chunkwise": (("chunkwise_bw",), launch_chunkwise_bw),
              "parallel": (("parallel_bw", "chunkwise_bw"), launch_parallel_bw)}  # fmt: skip


def _backward_default(form: str, cell: str, DHQK: int, DHHV: int):
    launcher = _BACKWARDS[form][1]
    params = {"kernels": "fused"} if launcher is launch_chunkwise_bw else {}
    variant = find(launcher.TEMPLATE, cell=cell, **params)
    return variant.name, families.default_config(variant, DHQK, DHHV)


def _backward_plan(q: torch.Tensor, v: torch.Tensor, form: str, cell: str):
    """The backward (variant, config) for a training step on these shapes: the dispatcher, direction "fwbw". With
    MLSTM_AUTOTUNE_BACKWARD_STATES=recompute a configuration that reuses the forward's per-chunk states (kept in
    memory from the forward to the backward) recomputes them instead: slower, and no memory held between the two."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    default = partial(_backward_default, form, cell, DHQK, DHHV)
    variant, config = _pick(f"{form}:{cell}", _BACKWARDS[form][0], q, DHHV, S, B * NH, default, direction="fwbw")
    keep = os.environ.get("MLSTM_AUTOTUNE_BACKWARD_STATES", "")
    if keep not in ("", "recompute"):
        raise MLSTMInputError(f"MLSTM_AUTOTUNE_BACKWARD_STATES must be 'recompute' or unset, got {keep!r}")
    if keep == "recompute" and config.get("states") == "reuse":
        config = dict(config, states="recompute")
    return variant, config


def _run_backward(saved: dict, dh, dlast, plan, *, cell: str, normalize: bool, eps: float):
    """The generated backward for what a forward saved, with the (variant, config) chosen at the forward."""
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
    return launcher(
        saved["q"], saved["k"], saved["v"], saved["i"], saved["f"], saved["C0"], saved["n0"], saved["m0"], saved["h"],
        saved["s"], saved["mt"], dh, dC, dn, dm, saved["last"], variant=variant, config=config, eps=eps,
        normalize=normalize, borders=borders,
    )  # fmt: skip


_SAVED = ("q", "k", "v", "i", "f", "C0", "n0", "m0", "h", "s", "mt", "Cb", "nb", "mb", "C_S", "n_S", "m_S")


class _GeneratedFunction(torch.autograd.Function):
    """Forward: ``run`` (a generated-kernel launcher). Backward: the generated exact backward (_run_backward).

    One class for every entry; non-tensor arguments are plain Python values, and no scalar is wrapped in a tensor
    (both matter to torch.compile). The forward keeps per-token statistics only when a gradient is needed."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, run, form: str, cell: str, normalize: bool, eps: float,
                with_last: bool, needs_grad: bool):  # fmt: skip
        saved = {} if needs_grad else None
        if needs_grad:
            ctx.plan = _backward_plan(q, v, form, cell)
            if ctx.plan[1].get("states") == "reuse":
                # the states' chunk: a fused forward then keeps its states for the backward, a two-pass one stores
                # them at that stride (launch.chunkwise.states_every)
                saved["borders_at"] = ctx.plan[1]["chunk"]
        h, last = run(q, k, v, i, f, C0, n0, m0, return_last_states=with_last, saved=saved)
        if needs_grad:
            ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, saved["s"], saved["mt"], saved.get("Cb"),
                                  saved.get("nb"), saved.get("mb"), *(last if with_last else (None,) * 3))  # fmt: skip
            ctx.chunk = saved.get("L", 0)
        ctx.opts = dict(cell=cell, normalize=normalize, eps=eps)
        ctx.with_last = with_last
        return (h, *last) if with_last else h

    @staticmethod
    def backward(ctx, dh, *dlast):
        saved = dict(zip(_SAVED, ctx.saved_tensors))
        saved["L"], saved["last"] = ctx.chunk, (saved["C_S"], saved["n_S"], saved["m_S"])
        if ctx.with_last and all(d is None for d in dlast):
            dlast = None
        elif ctx.with_last:
            like = (saved["C_S"], saved["n_S"], saved["C_S"].new_zeros(saved["C_S"].shape[:2] + (1,)))
            dlast = tuple(d if d is not None else torch.zeros_like(z) for d, z in zip(dlast, like))
        else:
            dlast = None
        grads = _run_backward(saved, dh.contiguous(), dlast, ctx.plan, **ctx.opts)
        inputs = (saved[n] for n in ("q", "k", "v", "i", "f", "C0", "n0", "m0"))
        out = [g.to(t.dtype).reshape(t.shape) if (t is not None and g is not None) else None
               for g, t in zip(grads, inputs)]  # fmt: skip
        return (*out, None, None, None, None, None, None, None)


def _sequence_entry(run_factory, native_fallback, *, form: str, cell: str, default_chunk: int, uses_chunk: bool):
    """A sequence-interface function: validate, pick the path (native for fp64), launch through the Function."""

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
            _check_pow2_chunk(chunk_size)
        else:
            check_chunk_size(chunk_size)
        if q.dtype == torch.float64:
            states = (c_initial, n_initial, m_initial)
            return native_fallback(q, k, v, i, f, *states, return_last_states=return_last_states, eps=eps,
                                   chunk_size=chunk_size, normalize=normalize)  # fmt: skip
        _check_device(q)
        check_heads(q.shape[0], q.shape[1])
        q, k, v = _autocast(q, k, v, autocast_kernel_dtype)
        run = run_factory(chunk_size=chunk_size, eps=eps, normalize=normalize)
        tensors = (q, k, v, i, f, c_initial, n_initial, m_initial)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        out = _GeneratedFunction.apply(*tensors, run, form, cell, normalize, float(eps), return_last_states,
                                       needs_grad)  # fmt: skip
        if not return_last_states:
            return out
        h, C, n, m = out
        return h, ((C, n, m) if cell == "exp" else (C, n))

    return kernel


def _chunkwise_default(template: str, cell: str, equal_chunks: bool, chunk_size: int, DHQK: int, DHHV: int):
    """The built-in (variant, config) of a chunkwise entry: its structure's default, chunk_size as the chunk. States
    are kept in the inputs' dtype: fp32 chunk states for bf16 inputs doubled the state traffic and ran the state's
    part of the outputs as a tf32 product (tuning_db/reports/NOTES.md has the H200 measurements); the
    recurrence itself always runs in fp32, only the stored copies are rounded."""
    variant = find(template, cell=cell, state="input")
    config = families.default_config(variant, DHQK, DHHV)
    if template == launch_chunkwise.FUSED:
        config["chunk"] = chunk_size
    else:
        config["chunk_intra"] = chunk_size
        config["chunk_inter"] = chunk_size if equal_chunks else min(chunk_size, 64)
    return variant.name, config


def _family_default(template: str, cell: str, DHQK: int, DHHV: int):
    variant = find(template, cell=cell)
    return variant.name, families.default_config(variant, DHQK, DHHV)


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
        if form not in _BACKWARDS:
            raise ValueError(f"{name!r} has no generated backward (inference only)")
        structures, default = _BACKWARDS[form][0], lambda chunk, K, V: _backward_default(form, cell, K, V)
    elif direction != "fw":
        raise ValueError(f"direction must be fw or fwbw, got {direction!r}")
    request = Request(op, direction, str(dtype).removeprefix("torch."), DHQK, DHHV, tdb.bucket(S), tdb.bucket(B * NH),
                      structures)  # fmt: skip
    return request, dispatcher().choose(request, gpu, capability, partial(default, chunk_size, DHQK, DHHV),
                                        validate=partial(_validate, op, structures, DHQK, DHHV))  # fmt: skip


def _chunkwise_run(structures: tuple[str, ...], default_template: str, cell: str, *, equal_chunks: bool):
    def factory(*, chunk_size: int, eps: float, normalize: bool):
        def run(q, k, v, i, f, C0, n0, m0, *, return_last_states, saved=None):
            B, NH, S, DHQK = q.shape
            DHHV = v.shape[-1]

            default = partial(_chunkwise_default, default_template, cell, equal_chunks, chunk_size, DHQK, DHHV)
            variant, config = _pick(f"chunkwise:{cell}", structures, q, DHHV, S, B * NH, default)
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

            default = partial(_family_default, template, cell, DHQK, DHHV)
            variant, config = _pick(f"{form}:{cell}", (template.removesuffix(".py.j2"),), q, DHHV, S, B * NH, default)
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


def _register() -> None:
    two, one = launch_chunkwise.TWOPASS, launch_chunkwise.FUSED
    both = (two.removesuffix(".py.j2"), one.removesuffix(".py.j2"))
    chunkwise = {
        # name: (cell, allowed structures, default structure, equal inter/intra chunks, default chunk_size)
        # upstream names: the two-pass structure of upstream's TFLA kernels
        "triton_xl_chunk": ("exp", both[:1], two, False, 128),
        "triton_limit_chunk": ("exp", both[:1], two, True, 64),
        "triton_xl_chunk_siging": ("sig", both[:1], two, False, 128),
        # our own: the fused single pass that keeps the state on chip, and the best structure per shape
        "triton_fused": ("exp", both[1:], one, True, 64),
        "triton_fused_siging": ("sig", both[1:], one, True, 64),
        "triton_auto": ("exp", both, two, False, 64),
        "triton_auto_siging": ("sig", both, two, False, 64),
    }
    for name, (cell, structures, default, equal, default_chunk) in chunkwise.items():
        run = _chunkwise_run(structures, default, cell, equal_chunks=equal)
        _ENTRIES[f"chunkwise--{name}"] = (f"chunkwise:{cell}", structures,
                                          partial(_chunkwise_default, default, cell, equal))  # fmt: skip
        registry.register_kernel("chunkwise", name, _sequence_entry(
            run, _native_chunkwise(cell), form="chunkwise", cell=cell, default_chunk=default_chunk,
            uses_chunk=True))  # fmt: skip
    for name, cell in (("triton_limit_headdim", "exp"), ("triton_siging", "sig")):
        run = _family_run("parallel", "parallel_fw.py.j2", cell, launch_parallel.parallel_fw)
        _ENTRIES[f"parallel--{name}"] = (f"parallel:{cell}", ("parallel_fw",), lambda chunk, DHQK, DHHV, cell=cell:
                                         _family_default("parallel_fw.py.j2", cell, DHQK, DHHV))  # fmt: skip
        registry.register_kernel("parallel", name, _sequence_entry(
            run, _native_chunkwise(cell), form="parallel", cell=cell, default_chunk=64, uses_chunk=False))  # fmt: skip
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
    B, NH, DHQK = q.shape
    DHHV = v.shape[-1]
    check_heads(B, NH)

    default = partial(_family_default, "recurrent_step.py.j2", cell, DHQK, DHHV)
    variant, config = _pick(f"step:{cell}", ("recurrent_step",), q, DHHV, 1, B * NH, default)
    if c is None:
        if inplace:
            raise MLSTMInputError("inplace=True needs the state buffers c, n, m")
        kw = dict(dtype=dtype_state, device=q.device)
        c, n = torch.zeros(B, NH, DHQK, DHHV, **kw), torch.zeros(B, NH, DHQK, **kw)
        m = torch.zeros(B, NH, 1, dtype=torch.float32, device=q.device) if cell == "exp" else None
    if inplace:
        for name, buf in (("c", c), ("n", n), ("m", m)):
            if buf is not None and not buf.is_contiguous():
                raise MLSTMInputError(f"inplace=True needs contiguous state buffers; {name} is not")
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
    factory = _family_run("sequence", "recurrent_sequence.py.j2", cell, launch_recurrent.sequence_fw)
    run = factory(chunk_size=64, eps=eps, normalize=normalize)
    h, last = run(*tensors, return_last_states=return_last_states, state_dtype=dtype_state)
    if not return_last_states:
        return h
    return h, (last if cell == "exp" else last[:2])


_register()
