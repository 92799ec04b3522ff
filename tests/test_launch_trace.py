"""Recording launchers on meta tensors and replaying the record (autotune/launch/trace.py, writes.py, adapters.py,
replay.py), under Triton's interpreter:

* a recorded run replayed with ``TorchRuntime("cpu")`` gives bitwise the outputs of the direct call: every sequence
  entry's forward (the run functions of autotune/jax/triton_kernels.py, with and without initial states, last states
  and saved statistics), its generated backward fed with what the forward saved, the step (both cells, both k_tiles
  modes, in place) and the recurrent sequence; the same replay under JAX's contract (``ImmutableRuntime`` below:
  read-only inputs are copies the kernel must leave alone, fresh outputs start as NaN) gives the same bits, so
  every buffer a kernel writes is in its launch's ``writes``;
* ``written_params`` on the generated kernels (stores follow their constexprs; inputs are never written) and on
  small kernels of this module (locals, helpers, constexpr conditions, atomics, runtime branches, loops);
* what ``record`` refuses: a tensor made outside the call, a view that does not start a buffer, nesting;
* adapters: one file per kernel and layout, named by the hash of a text that names the kernel's module and binds
  each of its parameters once;
* kernels launched outside a recording (after one, or on another thread during one) compute as before;
* no launch of a recorded forward or backward writes one of the trace's inputs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from dataclasses import dataclass

import pytest
import torch
import triton
import triton.language as tl
from helpers import Shape, chunkwise_bw_config
from torch.utils._pytree import tree_flatten, tree_map

from autotune.launch import adapters
from autotune.launch import replay as replay_module
from autotune.launch.adapters import Layout, adapter, adapter_dir, adapter_source
from autotune.launch.replay import TorchRuntime, replay, to_meta
from autotune.launch.trace import Fill, Out, TraceError, meta_like, record
from autotune.launch.writes import written_params
from autotune.load import load_variant
from autotune.reference import random_inputs
from autotune.torch.triton_kernels import SEQUENCE_ENTRIES, sequence_run, step_launch
from autotune.variants import VARIANTS, by_name, find

CHUNK = 16
EPS = 1e-6
SMALL = Shape(1, 2, 40, 16, 16)
ODD = Shape(2, 1, 23, 32, 16)  # S not a multiple of the chunk, DHQK != DHHV, two key tiles of 16
STATS = ("s", "mt", "Cb", "nb", "mb")


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory):
    """Adapters written under a temporary folder; a dispatcher without user database or overrides, so that the
    direct call and its recording choose the same built-in configuration."""
    from autotune.dispatch import dispatcher

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSTM_AUTOTUNE_ADAPTER_DIR", str(tmp_path_factory.mktemp("adapters")))
        mp.setenv("MLSTM_AUTOTUNE_DB", str(tmp_path_factory.mktemp("db")))
        for name in ("MLSTM_AUTOTUNE_FORCE", "MLSTM_AUTOTUNE_DISPATCH", "MLSTM_AUTOTUNE_BACKWARD_STATES",
                     "MLSTM_AUTOTUNE_POISON", "MLSTM_AUTOTUNE_TF32"):  # fmt: skip
            mp.delenv(name, raising=False)
        dispatcher().reset()
        yield
    dispatcher().reset()


@pytest.fixture(scope="module")
def runs():
    """autotune/jax/triton_kernels.py, whose run functions (_forward_run, _backward_run) are what the JAX entries
    record."""
    pytest.importorskip("jax", reason="the recorded run functions live in autotune.jax (the jax extra)")
    from autotune.jax import triton_kernels

    return triton_kernels


# ----------------------------------------------------------------------------------------------- helpers


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _assert_same(got, want, what: str) -> None:
    """``got`` and ``want`` are the same pytree; tensors of the same dtype, shape and bits (NaN included)."""
    got_leaves, got_spec = tree_flatten(got)
    want_leaves, want_spec = tree_flatten(want)
    assert got_spec == want_spec, f"{what}: structure {got_spec} != {want_spec}"
    for j, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        if isinstance(w, torch.Tensor):
            assert isinstance(g, torch.Tensor), f"{what}: leaf {j} is {g!r}, not a tensor"
            same = (g.dtype, g.shape) == (w.dtype, w.shape)
            assert same, f"{what}: leaf {j} is {g.dtype} {tuple(g.shape)}, expected {w.dtype} {tuple(w.shape)}"
            if not torch.equal(_bits(g), _bits(w)):
                diff = (g.double() - w.double()).abs().nan_to_num(float("inf")).max().item()
                raise AssertionError(f"{what}: leaf {j} ({tuple(w.shape)}) differs, largest difference {diff:.3g}")
        else:
            assert g == w, f"{what}: leaf {j} is {g!r}, expected {w!r}"


def _poisoned(shape, dtype) -> torch.Tensor:
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(shape, fill, dtype=dtype)


class ImmutableRuntime(TorchRuntime):
    """TorchRuntime under JAX's contract: a kernel gets copies of its inputs, must leave those of its read-only
    inputs as they were, and writes fresh outputs that start as NaN (or the copy of the input the trace says it
    updates). Nothing the replay holds changes in place, so a store missing from a launch's ``writes`` is lost."""

    def __init__(self):
        super().__init__("cpu")

    def launch(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options):
        copies = [x.clone() for x in inputs]
        outs = [_poisoned(shape, dtype) for shape, dtype in outputs]
        for i, o in aliases.items():
            outs[o] = copies[i]
        kernel[grid](*copies, *scalars, *outs, **constexprs, **options)
        for j, (x, c) in enumerate(zip(inputs, copies)):
            if j not in aliases:
                assert torch.equal(_bits(x), _bits(c)), f"{kernel.fn.__name__} wrote its read-only input {j}"
        return outs


def _check_replays(fn, args, direct, what: str):
    """Records ``fn`` on meta tensors of ``args``, replays the trace with TorchRuntime (on clones of ``args``) and
    with ImmutableRuntime, checks both against ``direct`` bitwise, and returns the trace."""
    trace = record(fn, to_meta(args))
    clones = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, args)
    _assert_same(replay(trace, clones, TorchRuntime("cpu")), direct, f"{what}, TorchRuntime")
    _assert_same(replay(trace, list(args), ImmutableRuntime()), direct, f"{what}, ImmutableRuntime")
    return trace


def _inputs(shape: Shape, cell: str, states: bool, dtype=torch.float32) -> list:
    """q, k, v, i, f, C0, n0, m0 as the JAX entries pass them (None where absent; no m0 for the sig cell)."""
    x = {k: v.contiguous() for k, v in random_inputs(*shape.dims(), dtype=dtype, gate_dtype=torch.float32,
                                                      with_states=states).items()}  # fmt: skip
    C0, n0, m0 = (x.get(n) for n in ("c_initial", "n_initial", "m_initial"))
    return [x["q"], x["k"], x["v"], x["i"], x["f"], C0, n0, m0 if cell == "exp" else None]


def _backward_args(args, h, last, saved, with_last: bool, like) -> list:
    """The inputs of _backward_run as autotune/jax/triton_kernels.py's bwd assembles them: the forward's inputs, h,
    the saved statistics and chunk states, the last state, and cotangents made by ``like`` (for h and the last
    state; None without last states)."""
    last = list(last) if with_last else [None] * 3
    return [*args, h, *(saved[k] for k in STATS), *last, like(h), *(like(t) if t is not None else None for t in last)]


def _metas(trace, tree):
    """``tree`` (a trace's outputs) with every Out replaced by a meta tensor of its shape and buffer's dtype."""
    return tree_map(lambda o: meta_like(o.shape, trace.buffers[o.buf][1]) if isinstance(o, Out) else o, tree,
                    is_leaf=lambda o: isinstance(o, Out))  # fmt: skip


def _force(monkeypatch, forced: dict) -> None:
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(forced))


def _reuse_backward(cell: str, kernels: str, shape: Shape) -> dict:
    """MLSTM_AUTOTUNE_FORCE for a chunkwise backward that reuses the forward's states at chunks of CHUNK."""
    variant = find("chunkwise_bw.py.j2", cell=cell, kernels=kernels)
    config = chunkwise_bw_config(variant, shape.DHQK, shape.DHHV, CHUNK, "reuse", 16)
    return {f"chunkwise:{cell}/fwbw": {"variant": variant.name, "config": config}}


# ----------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One forward (and, in the training cases, backward) of a sequence entry."""

    name: str
    shape: Shape
    states: bool
    with_last: bool
    dtype: torch.dtype = torch.float32
    force: str | None = None  # "split" / "fused": a chunkwise backward reusing the forward's states
    poison: bool = False  # MLSTM_AUTOTUNE_POISON=1: outputs NaN-filled by the launcher (Fill events)

    @property
    def cell(self) -> str:
        return SEQUENCE_ENTRIES[self.name].cell

    @property
    def id(self) -> str:
        parts = [self.name, self.shape.id, "state" if self.states else "nostate", "last" if self.with_last else "h"]
        parts += [str(self.dtype).removeprefix("torch.")] if self.dtype != torch.float32 else []
        parts += [f"reuse-{self.force}"] if self.force else []
        return "-".join(parts + (["poison"] if self.poison else []))

    def options(self, **kw) -> dict:
        return dict(name=self.name, chunk_size=CHUNK, eps=EPS, normalize=True, with_last=self.with_last, **kw)

    def setup(self, monkeypatch) -> None:
        if self.force:
            _force(monkeypatch, _reuse_backward(self.cell, self.force, self.shape))
        if self.poison:
            monkeypatch.setenv("MLSTM_AUTOTUNE_POISON", "1")


# with the forward-only runs (saving False) and the training runs (saving True), every entry sees each value of
# initial states, last states and saving, and every pair of them
FORWARD = [Run(n, SMALL, False, False) for n in SEQUENCE_ENTRIES] + [Run(n, ODD, True, True) for n in SEQUENCE_ENTRIES]
TRAINING = [Run(n, s, st, wl) for n in SEQUENCE_ENTRIES for s, st, wl in ((SMALL, False, True), (SMALL, True, False),
                                                                          (ODD, True, True))]  # fmt: skip
TRAINING += [
    Run("chunkwise--triton_fused", SMALL, True, True, force="split"),  # the fused forward stores its chunk states
    Run("chunkwise--triton_xl_chunk_siging", ODD, True, True, force="fused"),
    Run("chunkwise--triton_auto", SMALL, True, True, dtype=torch.float16),
    Run("parallel--triton_limit_headdim", SMALL, True, True, poison=True),
]


@pytest.mark.parametrize("run", FORWARD, ids=[r.id for r in FORWARD])
def test_forward_replay_is_bitwise(runs, run, monkeypatch):
    run.setup(monkeypatch)
    fn = runs._forward_run(**run.options(saving=False))
    args = _inputs(run.shape, run.cell, run.states, run.dtype)
    direct = fn(*args)
    assert direct[2] is None and (direct[1] is not None) == run.with_last
    trace = _check_replays(fn, args, direct, f"{run.id} forward")
    assert trace.launches()


@pytest.mark.parametrize("run", TRAINING, ids=[r.id for r in TRAINING])
def test_training_replay_is_bitwise(runs, run, monkeypatch):
    """The forward keeping what the backward needs, then the generated backward on what the direct forward saved,
    with the chunk L of the forward's recording (as the JAX entries' bwd)."""
    run.setup(monkeypatch)
    fw = runs._forward_run(**run.options(saving=True))
    args = _inputs(run.shape, run.cell, run.states, run.dtype)
    h, last, saved = direct = fw(*args)
    trace = _check_replays(fw, args, direct, f"{run.id} forward")
    L = trace.outputs[2]["L"]
    assert L == saved["L"]
    if run.force:  # the forward kept its states at the backward's chunks
        assert L == CHUNK and saved["Cb"] is not None
    if run.poison:
        assert any(isinstance(e, Fill) for e in trace.events)
    bw = runs._backward_run(**run.options(L=L))
    bargs = _backward_args(args, h, last, saved, run.with_last, torch.randn_like)
    grads = bw(*bargs)
    assert len(grads) == 8 and (grads[5] is None) == (not run.states)
    bw_trace = _check_replays(bw, bargs, grads, f"{run.id} backward")
    if run.force:  # reused, not recomputed
        assert "chunkwise_states_kernel" not in [launch.name for launch in bw_trace.launches()]


@dataclass(frozen=True)
class StepRun:
    cell: str
    shape: Shape
    states: bool
    k_tiles: str
    inplace: bool = False

    @property
    def id(self) -> str:
        state = "inplace" if self.inplace else ("state" if self.states else "zero-state")
        return f"{self.cell}-{self.shape.id}-{state}-{self.k_tiles}"


STEPS = [
    StepRun("exp", SMALL, True, "loop"),
    StepRun("sig", SMALL, True, "loop"),
    StepRun("exp", ODD, False, "loop"),
    StepRun("sig", ODD, False, "loop"),
    StepRun("exp", ODD, True, "programs"),
    StepRun("sig", ODD, True, "programs"),
    StepRun("exp", SMALL, True, "loop", inplace=True),
    StepRun("exp", ODD, True, "programs", inplace=True),
    StepRun("sig", ODD, True, "loop", inplace=True),
]


@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_step_replay_is_bitwise(step, monkeypatch):
    """step_launch, with the split step ("programs": one program per tile of C, scratch and counters) forced;
    in place, the replay updates the state it is given as the direct call does."""
    variant = f"recurrent_step__cell-{step.cell}"
    config = {"dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4, "k_tiles": step.k_tiles}
    _force(monkeypatch, {f"step:{step.cell}": {"variant": variant, "config": config}})
    B, NH, _, DHQK, DHHV = step.shape.dims()
    q, k, v, i, f, C0, n0, m0 = _inputs(Shape(B, NH, 1, DHQK, DHHV), step.cell, step.states)
    args = [q[:, :, 0].contiguous(), k[:, :, 0].contiguous(), v[:, :, 0].contiguous(), i, f, C0, n0, m0]

    def fn(q, k, v, i, f, c, n, m):
        return step_launch(q, k, v, i, f, c, n, m, cell=step.cell, eps=EPS, normalize=True,
                           dtype_state=torch.float32, inplace=step.inplace)  # fmt: skip

    mine = [a.clone() if a is not None else None for a in args]
    direct = fn(*mine)
    trace = record(fn, to_meta(args))
    kernel = "recurrent_step_split_kernel" if step.k_tiles == "programs" else "recurrent_step_kernel"
    assert [launch.name for launch in trace.launches()] == [kernel]
    theirs = [a.clone() if a is not None else None for a in args]
    _assert_same(replay(trace, theirs, TorchRuntime("cpu")), direct, f"step {step.id}, TorchRuntime")
    if step.inplace:
        _assert_same(theirs[5:], mine[5:], f"step {step.id}: the state updated in place")
        assert not torch.equal(mine[5], args[5]), "the direct step left its state as it was"
    _assert_same(replay(trace, list(args), ImmutableRuntime()), direct, f"step {step.id}, ImmutableRuntime")


SEQUENCES = [
    ("exp", SMALL, False, True, torch.float32),
    ("sig", SMALL, True, False, torch.float32),
    ("exp", ODD, True, True, torch.bfloat16),
    ("sig", ODD, False, True, torch.float32),
]
SEQUENCE_IDS = [f"{c}-{s.id}-{'state' if st else 'nostate'}-{'last' if wl else 'h'}-{str(d).removeprefix('torch.')}"
                for c, s, st, wl, d in SEQUENCES]  # fmt: skip


@pytest.mark.parametrize("cell,shape,states,with_last,state_dtype", SEQUENCES, ids=SEQUENCE_IDS)
def test_sequence_replay_is_bitwise(cell, shape, states, with_last, state_dtype):
    run = sequence_run(cell=cell, eps=EPS, normalize=True)

    def fn(*args):
        return run(*args, return_last_states=with_last, state_dtype=state_dtype)

    args = _inputs(shape, cell, states)
    direct = fn(*args)
    assert (direct[1] is not None) == with_last
    _check_replays(fn, args, direct, f"sequence {cell}")


# ----------------------------------------------------------------------------------------------- no input written


@pytest.mark.parametrize("name", list(SEQUENCE_ENTRIES))
def test_no_launch_writes_an_input_of_its_trace(runs, name, monkeypatch):
    """Every forward and backward recorded in the replay tests above: the generated kernels never write their
    inputs, so no launch's ``writes`` holds an input buffer of the trace (which a runtime would have to copy)."""
    found = []
    for run in [r for r in FORWARD + TRAINING if r.name == name]:
        with monkeypatch.context() as mp:
            run.setup(mp)
            args = to_meta(_inputs(run.shape, run.cell, run.states, run.dtype))
            traces = {"forward": record(runs._forward_run(**run.options(saving=False)), args)}
            fw = traces["forward, saving"] = record(runs._forward_run(**run.options(saving=True)), args)
            h, last, saved = _metas(fw, fw.outputs)
            bargs = _backward_args(args, h, last, saved, run.with_last, lambda t: meta_like(t.shape, t.dtype))
            traces["backward"] = record(runs._backward_run(**run.options(L=saved["L"])), bargs)
        for what, trace in traces.items():
            inputs = {b for b in trace.inputs if b is not None}
            for launch in trace.launches():
                hit = [a.name for a in launch.args if a.kind == "buffer" and a.value in inputs & launch.writes]
                if hit:
                    found.append(f"{run.id} {what}: {launch.name} writes {hit}")
    assert not found, "launches that write an input of their trace:\n" + "\n".join(found)


# ----------------------------------------------------------------------------------------------- written_params


def _pointers_written(kernel, **constexprs) -> set[str]:
    return {p for p in written_params(kernel.fn, constexprs) if p.endswith("_ptr")}


FUSED_FW = find("chunkwise_fused_fw.py.j2", cell="exp", state="input")


@pytest.mark.parametrize("store_last", [False, True])
@pytest.mark.parametrize("store_borders", [False, True])
@pytest.mark.parametrize("store_stats", [False, True])
def test_fused_forward_writes_follow_its_constexprs(store_last, store_borders, store_stats):
    kernel = load_variant(FUSED_FW).chunkwise_fused_fw_kernel
    expected = {"h_ptr"}
    expected |= {"CS_ptr", "nS_ptr", "mS_ptr"} if store_last else set()
    expected |= {"Cb_ptr", "nb_ptr", "mb_ptr"} if store_borders else set()
    expected |= {"s_ptr", "mt_ptr"} if store_stats else set()
    written = _pointers_written(kernel, STORE_LAST=store_last, STORE_BORDERS=store_borders, STORE_STATS=store_stats,
                                HAS_STATE=True, NORMALIZE=True)  # fmt: skip
    assert written == expected


@pytest.mark.parametrize("store_last", [False, True])
@pytest.mark.parametrize("store_borders", [False, True])
def test_twopass_states_kernel_writes_follow_its_constexprs(store_last, store_borders):
    kernel = load_variant(find("chunkwise_twopass_fw.py.j2", cell="exp", state="input")).chunkwise_states_kernel
    expected = ({"CS_ptr", "nS_ptr", "mS_ptr"} if store_last else set()) | (
        {"Cb_ptr", "nb_ptr", "mb_ptr"} if store_borders else set())  # fmt: skip
    assert _pointers_written(kernel, STORE_LAST=store_last, STORE_BORDERS=store_borders) == expected


@pytest.mark.parametrize("inplace", [False, True])
def test_step_kernel_touches_its_counters_only_in_place(inplace):
    kernel = load_variant(by_name("recurrent_step__cell-exp")).recurrent_step_kernel
    expected = {"Cout_ptr", "nout_ptr", "mout_ptr", "h_ptr"} | ({"count_ptr"} if inplace else set())
    assert _pointers_written(kernel, INPLACE=inplace) == expected


def test_recorded_launch_writes_follow_the_call():
    """The fused forward's recorded launch writes h alone for a plain call; with last states and saving at its own
    chunk, also the last state, the statistics and the chunk states."""
    from autotune.launch.chunkwise import chunkwise_fw

    config = {"chunk": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}
    args = to_meta(_inputs(SMALL, "exp", True))

    def plain(*a):
        return chunkwise_fw(*a, variant=FUSED_FW, config=config)

    def full(*a):
        saved = {"borders_at": 16}
        h, last = chunkwise_fw(*a, variant=FUSED_FW, config=config, return_last_states=True, saved=saved)
        return h, last, {k: saved[k] for k in STATS}

    trace = record(plain, args)
    (launch,) = trace.launches()
    assert launch.writes == {trace.outputs[0].buf}
    trace = record(full, args)
    (launch,) = trace.launches()
    h, last, saved = trace.outputs
    assert launch.writes == {h.buf, *(o.buf for o in last), *(saved[k].buf for k in STATS)}


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_no_generated_kernel_writes_its_inputs(variant):
    """With every constexpr unknown (both sides of every branch), no kernel of a generated module stores to
    q, k, v, i, f or dh."""
    module = load_variant(variant)
    found = {}
    for name, kernel in vars(module).items():
        if name.endswith("_kernel") and hasattr(kernel, "arg_names"):
            hit = _pointers_written(kernel) & {"q_ptr", "k_ptr", "v_ptr", "i_ptr", "f_ptr", "dh_ptr"}
            if hit:
                found[name] = sorted(hit)
    assert not found, f"{variant.name}: {found}"


@triton.jit
def _scale_kernel(x_ptr, o_ptr, factor, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(o_ptr + offs, tl.load(x_ptr + offs) * factor)


@triton.jit
def _through_local_kernel(x_ptr, o_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    p_o = o_ptr
    p_o += offs
    tl.store(p_o, tl.load(x_ptr + offs) + 1.0)


@triton.jit
def _put(ptr, offs, value):
    tl.store(ptr + offs, value)


@triton.jit
def _put_if(ptr, offs, value, FLAG: tl.constexpr):
    if FLAG:
        _put(ptr, offs, value)


@triton.jit
def _through_helpers_kernel(x_ptr, a_ptr, b_ptr, c_ptr, N: tl.constexpr, FLAG: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    _put(a_ptr, offs, x)
    _put(value=x * 2.0, offs=offs, ptr=b_ptr)
    _put_if(c_ptr, offs, x * 3.0, FLAG)


@triton.jit
def _guarded_kernel(x_ptr, a_ptr, b_ptr, N: tl.constexpr, FLAG: tl.constexpr):
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs)
    if FLAG:
        tl.store(a_ptr + offs, x)
    else:
        tl.store(b_ptr + offs, -x)


@triton.jit
def _conditions_kernel(o1_ptr, o2_ptr, o3_ptr, o4_ptr, o5_ptr, N: tl.constexpr, A: tl.constexpr, B: tl.constexpr,
                       MODE: tl.constexpr):  # fmt: skip
    offs = tl.arange(0, N)
    one = tl.full([N], 1.0, tl.float32)
    if not A:
        tl.store(o1_ptr + offs, one)
    if A and B:
        tl.store(o2_ptr + offs, one)
    if MODE == "fast":
        tl.store(o3_ptr + offs, one)
    if MODE != "fast" or B:
        tl.store(o4_ptr + offs, one)
    elif A:
        tl.store(o5_ptr + offs, one)


@triton.jit
def _atomic_kernel(x_ptr, count_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.atomic_add(count_ptr + offs, tl.load(x_ptr + offs))


@triton.jit
def _runtime_branch_kernel(x_ptr, a_ptr, b_ptr, n, N: tl.constexpr):
    offs = tl.arange(0, N)
    if n > 0:
        tl.store(a_ptr + offs, tl.load(x_ptr + offs))
    else:
        tl.store(b_ptr + offs, tl.load(x_ptr + offs))


@triton.jit
def _loop_carried_kernel(x_ptr, o_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    dst = x_ptr
    for j in range(2):
        if j == 1:
            tl.store(dst + offs, tl.load(x_ptr + offs) + 5.0)
        dst = o_ptr


def test_a_store_through_a_local_counts():
    assert _pointers_written(_through_local_kernel) == {"o_ptr"}
    assert _pointers_written(_scale_kernel) == {"o_ptr"}


@pytest.mark.parametrize("flag", [False, True, None], ids=["false", "true", "unknown"])
def test_stores_in_helpers_count_with_the_callers_constexprs(flag):
    constexprs = {} if flag is None else {"FLAG": flag}
    expected = {"a_ptr", "b_ptr"} | ({"c_ptr"} if flag in (True, None) else set())
    assert _pointers_written(_through_helpers_kernel, **constexprs) == expected


@pytest.mark.parametrize("flag", [False, True, None], ids=["false", "true", "unknown"])
def test_an_if_on_a_constexpr_is_resolved(flag):
    constexprs = {} if flag is None else {"FLAG": flag}
    expected = {True: {"a_ptr"}, False: {"b_ptr"}, None: {"a_ptr", "b_ptr"}}[flag]
    assert _pointers_written(_guarded_kernel, **constexprs) == expected


@pytest.mark.parametrize("A", [False, True])
@pytest.mark.parametrize("B", [False, True])
@pytest.mark.parametrize("MODE", ["fast", "slow"])
def test_not_and_or_and_comparisons_are_resolved(A, B, MODE):
    expected = set()
    expected |= {"o1_ptr"} if not A else set()
    expected |= {"o2_ptr"} if A and B else set()
    expected |= {"o3_ptr"} if MODE == "fast" else set()
    expected |= {"o4_ptr"} if MODE != "fast" or B else ({"o5_ptr"} if A else set())
    assert _pointers_written(_conditions_kernel, A=A, B=B, MODE=MODE) == expected


def test_partly_known_conditions_keep_both_branches():
    """B unknown: "A and B" is False only when A is; "not A" and the MODE tests are still resolved."""
    assert _pointers_written(_conditions_kernel, A=False, MODE="fast") == {"o1_ptr", "o3_ptr", "o4_ptr"}
    assert _pointers_written(_conditions_kernel, A=True, MODE="slow") == {"o2_ptr", "o4_ptr"}


def test_atomics_runtime_branches_and_loops_count():
    assert _pointers_written(_atomic_kernel) == {"count_ptr"}
    assert _pointers_written(_runtime_branch_kernel) == {"a_ptr", "b_ptr"}
    assert "o_ptr" in _pointers_written(_loop_carried_kernel)  # assigned after the store, in the loop's body


@pytest.mark.parametrize("flag", [False, True])
def test_small_kernels_replay_under_the_immutable_contract(flag):
    """A launcher of the kernels above, recorded and replayed where a store missing from ``writes`` would be lost:
    the same bits as the direct call."""

    def launcher(x):
        a, b, c = (torch.full((16,), 7.0, device=x.device) for _ in range(3))
        _through_helpers_kernel[(1,)](x, a, b, c, N=16, FLAG=flag)
        d, e = torch.empty(16, device=x.device), torch.zeros(16, device=x.device)
        _guarded_kernel[(1,)](a, d, e, N=16, FLAG=flag)
        count = torch.zeros(16, device=x.device)
        _atomic_kernel[(2,)](x, count, N=16)
        o = torch.empty(16, device=x.device)
        _loop_carried_kernel[(1,)](c, o, N=16)
        return a, b, c, (d if flag else e), count, o

    x = torch.randn(16)
    direct = launcher(x)
    trace = _check_replays(launcher, [x], direct, f"small kernels FLAG={flag}")
    assert len(trace.launches()) == 4


# ----------------------------------------------------------------------------------------------- record's errors

_CACHED = torch.zeros(16, device="meta")  # made at import: outside any traced call


def test_a_tensor_made_outside_the_call_is_refused_by_name():
    x = meta_like((16,), torch.float32)

    def to_kernel(x):
        _scale_kernel[(1,)](x, _CACHED, 2.0, N=16)
        return x

    with pytest.raises(TraceError, match=r"_scale_kernel\(o_ptr\): a tensor made outside the traced call"):
        record(to_kernel, [x])
    with pytest.raises(TraceError, match=r"^add: a tensor made outside the traced call"):
        record(lambda x: x + _CACHED, [x])
    with pytest.raises(TraceError, match=r"^an output: a tensor made outside the traced call"):
        record(lambda x: (x, _CACHED), [x])


VIEWS = {
    "read-offset": lambda x, o: (x[1:], o),  # a contiguous view that starts after its buffer's start
    "written-offset": lambda x, o: (x[:16], o[1:]),
    "read-strided": lambda x, o: (x[:16].reshape(8, 2)[:, 0], o[:16]),
}


@pytest.mark.parametrize("view", VIEWS, ids=VIEWS)
def test_a_kernel_given_a_view_that_does_not_start_a_buffer_is_refused(view):
    def launcher(x):
        o = torch.zeros(17, device=x.device)
        src, dst = VIEWS[view](x, o)
        _scale_kernel[(1,)](src, dst, 2.0, N=16)
        return o

    with pytest.raises(TraceError, match=r"_scale_kernel\((x|o)_ptr\) gets a strided or offset view"):
        record(launcher, [meta_like((17,), torch.float32)])


def test_record_refuses_what_it_cannot_replay():
    with pytest.raises(TraceError, match="contiguous meta tensors"):
        record(lambda x: x, [torch.zeros(4)])
    with pytest.raises(TraceError, match="contiguous meta tensors"):
        record(lambda x: x, [meta_like((4, 2), torch.float32).t()])

    def with_a_string(x):
        o = torch.empty_like(x)
        _scale_kernel[(1,)](x, o, "2.0", N=16)
        return o

    with pytest.raises(TraceError, match=r"_scale_kernel\(factor\) gets a str"):
        record(with_a_string, [meta_like((16,), torch.float32)])


def test_record_does_not_nest_and_recovers():
    x = meta_like((16,), torch.float32)

    def outer(x):
        record(lambda y: y, [meta_like((4,), torch.float32)])
        return x

    with pytest.raises(TraceError, match="does not nest"):
        record(outer, [x])

    def launcher(x):
        o = torch.empty_like(x)
        _scale_kernel[(1,)](x, o, 2.0, N=16)
        return o

    trace = record(launcher, [x])
    assert [launch.name for launch in trace.launches()] == ["_scale_kernel"]


# ----------------------------------------------------------------------------------------------- launches outside


def test_launches_outside_a_recording_compute():
    """After a recording (and a failed one), on this thread and on another thread during a recording, a kernel
    launch runs on its tensors; the hook is installed once."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    x = torch.randn(16)

    def launch_here():
        o = torch.zeros(16)
        _scale_kernel[(1,)](x, o, 3.0, N=16)
        return o

    elsewhere = {}

    def launcher(m):
        thread = threading.Thread(target=lambda: elsewhere.update(o=launch_here()))
        thread.start()
        thread.join()
        o = torch.empty_like(m)
        _scale_kernel[(1,)](m, o, 2.0, N=16)
        return o

    trace = record(launcher, [meta_like((16,), torch.float32)])
    assert [type(e).__name__ for e in trace.events] == ["New", "Launch"]
    assert torch.equal(elsewhere["o"], x * 3.0)
    for cls in (JITFunction, InterpretedFunction):
        assert hasattr(cls.run, "__wrapped__") and not hasattr(cls.run.__wrapped__, "__wrapped__")
    assert torch.equal(launch_here(), x * 3.0)
    with pytest.raises(TraceError):
        record(lambda m: m + _CACHED, [meta_like((16,), torch.float32)])
    assert torch.equal(launch_here(), x * 3.0)


# ----------------------------------------------------------------------------------------------- adapters


def _layouts(monkeypatch, fn, args) -> list[tuple]:
    """The (kernel, layout) of every adapter a replay of ``fn`` asks for."""
    seen = []

    def spy(kernel, layout):
        seen.append((kernel, layout))
        return adapter(kernel, layout)

    monkeypatch.setattr(replay_module, "adapter", spy)
    replay(record(fn, to_meta(args)), args, TorchRuntime("cpu"))
    return seen


def test_adapter_source_names_the_kernel_and_binds_each_parameter_once(runs, monkeypatch):
    fn = runs._forward_run(name="chunkwise--triton_xl_chunk", chunk_size=CHUNK, eps=EPS, normalize=True,
                           with_last=True, saving=True)  # fmt: skip
    seen = _layouts(monkeypatch, fn, _inputs(SMALL, "exp", True))
    assert len(seen) == 3
    for kernel, layout in seen:
        text = adapter_source(kernel, layout)
        assert text == adapter_source(kernel, layout)
        module, name = kernel.fn.__module__, kernel.fn.__name__
        assert f"sys.modules[{module!r}].{name}" in text
        tree = ast.parse(text)
        (definition,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        params = [a.arg for a in definition.args.args]
        assert params == ([f"in{j}" for j in range(layout.inputs)] + [f"scalar{j}" for j in range(layout.scalars)]
                          + [f"out{j}" for j in range(layout.outputs)] + list(layout.constexprs))  # fmt: skip
        (call,) = [n for n in ast.walk(definition) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "kernel"]
        assert not call.args and [kw.arg for kw in call.keywords] == list(kernel.arg_names)
        bound = {kw.arg: ast.unparse(kw.value) for kw in call.keywords}
        for pname, source, index in layout.params:
            value = {"in": f"in{index}", "out": f"out{index}", "scalar": f"scalar{index}", "none": "None",
                     "constexpr": pname}[source]  # fmt: skip
            assert bound[pname] == value
        used = [v for v in bound.values() if v.startswith(("in", "out", "scalar"))]
        assert sorted(used) == sorted(params[: layout.inputs + layout.scalars + layout.outputs])


def test_adapter_files_are_named_by_their_text_and_written_once():
    kernel = _scale_kernel
    layout = Layout(1, 1, 1, (("x_ptr", "in", 0), ("o_ptr", "out", 0), ("factor", "scalar", 0),
                              ("N", "constexpr", 0)), ("N",))  # fmt: skip
    text = adapter_source(kernel, layout)
    path = adapter_dir() / f"_scale_kernel__{hashlib.sha256(text.encode()).hexdigest()[:16]}.py"
    fn = adapter(kernel, layout)
    assert path.read_text() == text
    assert fn.fn.__name__ == "_scale_kernel__outputs_last"
    before = sorted(p.name for p in adapter_dir().iterdir())
    adapters.adapter.cache_clear()
    assert adapter(kernel, layout) is fn  # the module imported once per process
    assert sorted(p.name for p in adapter_dir().iterdir()) == before and path.read_text() == text
    other = Layout(1, 0, 1, (("x_ptr", "in", 0), ("o_ptr", "out", 0), ("factor", "none", 0),
                             ("N", "constexpr", 0)), ("N",))  # fmt: skip
    assert adapter_source(kernel, other) != text
    adapter(kernel, other)
    assert len([p for p in adapter_dir().iterdir() if p.name.startswith("_scale_kernel__")]) == len(
        [p for p in before if p.startswith("_scale_kernel__")]) + 1  # fmt: skip
    x, o = torch.randn(16), torch.empty(16)
    fn[(1,)](x, 2.5, o, N=16)
    assert torch.equal(o, x * 2.5)
