"""Which generated variant and launch configuration a Triton entry runs: the dispatcher's answer (tuning database,
MLSTM_AUTOTUNE_FORCE, built-in default; autotune.dispatch), held to the variant's family spec (autotune.families)
and memoised per (op, dtype, device, shape); the built-in defaults; the backward's plan for a training step."""

from __future__ import annotations

import contextvars
import json
import os
from functools import partial

import torch

from .. import db as tdb
from .. import families
from ..checks import MLSTMInputError
from ..dispatch import Request, dispatcher
from ..launch import chunkwise as launch_chunkwise
from ..launch import chunkwise_bw as launch_chunkwise_bw
from ..launch import parallel_bw as launch_parallel_bw
from ..variants import by_name, find

_GPU_IDENTITY: dict = {}
# the GPU a recorded launch (meta tensors, autotune/launch/trace.py) is for: set by the runtime that will replay it
TRACE_TARGET: contextvars.ContextVar[tuple[str, tuple[int, int]]] = contextvars.ContextVar(
    "TRACE_TARGET", default=("cpu-interpreter", (0, 0))
)


def gpu_identity(device: torch.device) -> tuple[str, tuple[int, int]]:
    """(GPU model, compute capability) of a device, cached; the interpreter is its own "GPU"; a meta device is the
    GPU that TRACE_TARGET names."""
    if device.type == "meta":
        return TRACE_TARGET.get()
    if device.type != "cuda":
        return "cpu-interpreter", (0, 0)
    index = device.index if device.index is not None else torch.cuda.current_device()
    hit = _GPU_IDENTITY.get(index)
    if hit is None:
        hit = _GPU_IDENTITY[index] = (torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))
    return hit


def pick(op: str, structures: tuple[str, ...], q: torch.Tensor, DHHV: int, S: int, BNH: int, default,
          direction: str = "fw"):  # fmt: skip
    """The (variant, config) for a call: the dispatcher's validated answer, memoised per (op, dtype, device, shape)
    so that a repeated call costs one dictionary hit, plus one that notices a changed MLSTM_AUTOTUNE_FORCE (which
    empties the memo: autotune.dispatch) (`python -m autotune.bench_dispatch`)."""
    d = dispatcher()
    if d.force_env.get(d.force_key) is not d.force_raw:
        d.sync_force()
    memo = d.memo
    device = q.device if q.device.type != "meta" else TRACE_TARGET.get()
    # under torch.compile's dynamic shapes the sizes are symbolic: int() fixes them for this graph (a guard), as the
    # choice and the launch grids depend on them
    DHQK, DHHV, S, BNH = int(q.shape[-1]), int(DHHV), int(S), int(BNH)
    key = (op, direction, structures, q.dtype, device, DHQK, DHHV, S, BNH)
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
    gpu, capability = gpu_identity(q.device)
    choice = dispatcher().choose(request, gpu, capability, default,
                                 validate=partial(check_choice, op, structures, q.shape[-1], DHHV))  # fmt: skip
    variant = by_name(choice.variant)
    return variant, families.canonical(variant.template, choice.config)


def check_choice(op: str, structures: tuple[str, ...], DHQK: int, DHHV: int, choice) -> None:
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


# form -> (structures its backward may take, the default backward template)
BACKWARDS = {"chunkwise": (("chunkwise_bw",), launch_chunkwise_bw),
              "parallel": (("parallel_bw", "chunkwise_bw"), launch_parallel_bw)}  # fmt: skip


def backward_default(form: str, cell: str, DHQK: int, DHHV: int):
    launcher = BACKWARDS[form][1]
    params = {"kernels": "fused"} if launcher is launch_chunkwise_bw else {}
    variant = find(launcher.TEMPLATE, cell=cell, **params)
    return variant.name, families.default_config(variant, DHQK, DHHV)


def backward_plan(q: torch.Tensor, v: torch.Tensor, form: str, cell: str, rows: tuple[int, int] | None = None):
    """The backward (variant, config) for a training step on these shapes: the dispatcher, direction "fwbw", keyed by
    q's sequence length and B * NH, or by ``rows`` = (S, B * NH) (a packed sequence's mean length and documents x
    heads). With MLSTM_AUTOTUNE_BACKWARD_STATES=recompute a configuration that reuses the forward's per-chunk states
    (kept in memory from the forward to the backward) recomputes them instead: slower, and no memory held between
    the two."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    S, BNH = rows if rows is not None else (S, B * NH)
    default = partial(backward_default, form, cell, DHQK, DHHV)
    variant, config = pick(f"{form}:{cell}", BACKWARDS[form][0], q, DHHV, S, BNH, default, direction="fwbw")
    keep = os.environ.get("MLSTM_AUTOTUNE_BACKWARD_STATES", "")
    if keep not in ("", "recompute"):
        raise MLSTMInputError(f"MLSTM_AUTOTUNE_BACKWARD_STATES must be 'recompute' or unset, got {keep!r}")
    if keep == "recompute" and config.get("states") == "reuse":
        config = dict(config, states="recompute")
    return variant, config


FMA_CHUNK = 64  # the largest chunk of a built-in default for fp32 inputs (chunkwise_default)


def chunkwise_default(
    template: str,
    cell: str,
    equal_chunks: bool,
    chunk_size: int,
    DHQK: int,
    DHHV: int,
    dtype: torch.dtype,
):
    """The built-in (variant, config) of a chunkwise entry: its structure's default, chunk_size as the chunk, and
    for 16-bit inputs the state kept to about twice their mantissa where the products read it: stored as two planes
    by the two-pass forward, split into two tiles in registers by the fused one. Rounded once to 16 bits, a state
    every 64 tokens gave h 1.5x the trusted kernel's error at B=1, NH=2, 4,080 tokens on an H100 (docs/hazards.md
    §4). A tuned entry may keep 16-bit states where the gate passes them at its shape.

    fp32 inputs take chunks of at most FMA_CHUNK tokens: their within-chunk products run on the FMA path (tl.dot in
    ieee precision), whose arithmetic and unrolled code grow with the chunk's square. Compiled for sm_90 at 128 tokens
    (bench/tools/compile_times.py, on a 2-core CPU machine), the two-pass output kernel took 109 s at D=64 and 31 s at
    D=128, the fused kernel 32 and 75 s (3-13 s at 64 tokens), each spilling 79-122 KB per thread; on an H100 the
    JAX entry's first fp32 call at D=64 (jax-triton compiles again, per process) did not finish in 170 s."""
    sixteen_bit = dtype in (torch.bfloat16, torch.float16)
    state = "input" if not sixteen_bit else "planes" if template == launch_chunkwise.TWOPASS else "float32"
    variant = find(template, cell=cell, state=state)
    config = families.default_config(variant, DHQK, DHHV)
    if not sixteen_bit:
        chunk_size = min(chunk_size, FMA_CHUNK)
    if template == launch_chunkwise.FUSED:
        config["chunk"] = chunk_size
    else:
        config["chunk_intra"] = chunk_size
        config["chunk_inter"] = chunk_size if equal_chunks else min(chunk_size, 64)
    return variant.name, config


def family_default(template: str, cell: str, DHQK: int, DHHV: int):
    variant = find(template, cell=cell)
    return variant.name, families.default_config(variant, DHQK, DHHV)
