"""The Triton entries of autotune.jax (autotune/jax/triton_kernels.py) on the CPU, in Triton's interpreter
(TRITON_INTERPRET=1, which tests/conftest.py sets where there is no GPU), replayed through jax.pure_callback.

- test_forward_same_bits_as_torch: every chunkwise--triton_* and parallel--triton_* entry gives the same bits as the
  PyTorch entry of the same name on the same fp32 inputs: h and the last states, with and without initial states,
  return_last_states False and True (every entry without initial states returning h and with them returning the
  last states; the other two combinations for one chunkwise and one parallel entry).
- test_gradients_same_bits_as_torch: jax.grad under jax.jit of a random linear loss on h and the last states equals
  PyTorch autograd bit for bit for every input and initial state (both run the same generated backward on the same
  values; equal bits also show that the JAX backward replays the plan and chunk the PyTorch entry picks, which a
  tolerance would not: another backward chunk moves the gradients by about 1e-7 relative), same cases plus an odd
  shape for every entry.
- test_matches_oracle_fp32 / test_fp16_inputs: outputs and gradients against the fp64 oracle (docs/math.md §6-§7);
  fp16 inputs give h in fp16 and float32 states.
- test_two_calls_same_bits: forward and gradients are deterministic.
- step "triton" and sequence "native_sequence__triton": the same bits as the PyTorch Triton step and sequence (both
  cells, zero state, dtype_state bfloat16); their gradients equal those of the native JAX kernels, whose VJP they use.
- test_float64_runs_the_native_kernel (the one test under jax.enable_x64): float64 inputs run the native kernel.
- MLSTMInputError under jax.vmap, for a chunk_size Triton cannot tile, for inplace=True, and without a GPU or the
  interpreter.
- TRITON_CACHE_DIR is left as it was by importing autotune.jax and by triton_exec.jax_triton(), also when the
  jax-triton import fails.
- jax.jit gives the eager bits, and a second trace of the same shapes reuses the recorded launches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import LIMITS, MAX_OUTLIER, REPO, Shape, conditioning_limits

import autotune.torch as torch_api
from autotune.reference import mlstm_recurrent, random_inputs

jax = pytest.importorskip("jax", reason="autotune.jax needs jax; CI installs the jax extra (mlstm-autotune[jax])")

import jax.numpy as jnp  # noqa: E402

import autotune.jax as jax_api  # noqa: E402
from autotune.jax import MLSTMInputError, triton_exec  # noqa: E402

TRITON = [n for n in jax_api.get_available_mlstm_kernels() if "--triton" in n]
SHAPE = Shape(1, 2, 40, 16, 16)
ODD = Shape(2, 1, 23, 24, 40)
CHUNK = 16
# one two-pass and one fused chunkwise entry (the fused one of the sig cell) and one parallel entry
ORACLE_NAMES = ["chunkwise--triton_xl_chunk", "chunkwise--triton_fused_siging", "parallel--triton_limit_headdim"]
JNP = {torch.float32: jnp.float32, torch.float16: jnp.float16, torch.bfloat16: jnp.bfloat16}
STATE_NAMES = {"exp": ["C", "n", "m"], "sig": ["C", "n"]}

interpreter = pytest.mark.skipif(not triton_exec.interpreting(), reason="compares with the PyTorch entries in Triton's "
                                 "interpreter (TRITON_INTERPRET=1)")  # fmt: skip
cpu_jax = pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the behaviour where JAX has no GPU")


@pytest.fixture(scope="module", autouse=True)
def _adapter_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLSTM_AUTOTUNE_ADAPTER_DIR", str(tmp_path_factory.mktemp("adapters")))
        yield


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _cell(name: str) -> str:
    return "sig" if "siging" in name else "exp"


def _inputs(shape: Shape, dtype: torch.dtype, with_states: bool, cell: str) -> dict:
    x = random_inputs(*shape.dims(), dtype=dtype, with_states=with_states, max_outlier=MAX_OUTLIER.get(dtype, 20.0))
    if cell == "sig":
        x.pop("m_initial", None)
    return x


def _jnp(t: torch.Tensor | None):
    """A JAX array with the tensor's dtype and bits."""
    if t is None:
        return None
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.view(torch.int16).numpy().view(jnp.bfloat16))
    return jnp.asarray(t.numpy())


def _to_jax(x: dict) -> dict:
    return {k: _jnp(v) for k, v in x.items()}


def _torch(a) -> torch.Tensor:
    """A torch tensor with the JAX array's dtype and bits."""
    a = np.asarray(a)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def _same_bits(check, *, target: str, baseline: str, dims, pairs: dict) -> None:
    """pairs {name: (JAX array or None, torch tensor or None)}: the same dtype, shape and bits (the values are logged
    through ``check`` with limit 0)."""
    for name, (a, t) in pairs.items():
        assert (a is None) == (t is None), f"{name}: {target} gives {a!r}, {baseline} gives {t!r}"
    pairs = {name: (_torch(a), t.detach()) for name, (a, t) in pairs.items() if a is not None}
    for name, (a, t) in pairs.items():
        assert (a.dtype, a.shape) == (t.dtype, t.shape), f"{name}: {a.dtype} {list(a.shape)}, {t.dtype} {list(t.shape)}"
    dtype = pairs["h"][1].dtype if "h" in pairs else next(iter(pairs.values()))[1].dtype
    check(target=target, baseline=baseline, dims=dims, dtype=dtype, pairs=pairs, limit=0.0)
    differ = [name for name, (a, t) in pairs.items() if not np.array_equal(_bits(a), _bits(t))]
    assert not differ, f"{target} vs {baseline}: equal values but different bits (signed zeros) in {differ}"


def _flat(out) -> tuple:
    """(h, *last states) of a kernel's return value (h alone, or (h, states))."""
    if isinstance(out, tuple):
        h, states = out
        return (h, *states)
    return (out,)


def _names(cell: str, return_last_states: bool) -> list[str]:
    return ["h", *STATE_NAMES[cell]] if return_last_states else ["h"]


def _jax_grad(fn, keys: list[str], weights: list, **kwargs):
    """jax.jit(jax.grad) of sum(w * out) over fn's outputs (h, last states): arrays -> (gradients, outputs)."""

    def loss(*arrays):
        outs = _flat(fn(**dict(zip(keys, arrays)), **kwargs))
        return sum((o * w).sum() for o, w in zip(outs, weights)), outs

    return jax.jit(jax.grad(loss, argnums=tuple(range(len(keys))), has_aux=True))


def _torch_grad(fn, x: dict, weights: list, **kwargs):
    """PyTorch autograd of the same loss: (gradients, outputs)."""
    xt = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    outs = _flat(fn(**xt, **kwargs))
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), list(xt.values()))
    return grads, outs


def _oracle(x: dict, cell: str) -> dict:
    x64 = {k: v.double() for k, v in x.items()}
    h, states = mlstm_recurrent(**x64, cell=cell, return_last_states=True)
    return dict(zip(["h", *STATE_NAMES[cell]], (h, *states)))


def _token(x: dict, t: int = 0) -> dict:
    """The step kernel's q, k, v, i, f for token t of sequence inputs x."""
    return {"q": x["q"][:, :, t], "k": x["k"][:, :, t], "v": x["v"][:, :, t], "i": x["i"][:, :, t, None],
            "f": x["f"][:, :, t, None]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Chunkwise and parallel entries: the same bits as the PyTorch entries
# ---------------------------------------------------------------------------------------------------------------


# every entry without initial states returning h, and with them returning the last states too; the other two
# combinations for one chunkwise and one parallel entry
BOTH = ["chunkwise--triton_xl_chunk", "parallel--triton_limit_headdim"]
CASES = [(n, False, False) for n in TRITON] + [(n, True, True) for n in TRITON]
CASES += [(n, False, True) for n in BOTH] + [(n, True, False) for n in BOTH]


def _case_id(name: str, with_states: bool, return_last_states: bool) -> str:
    return f"{name}-{'state' if with_states else 'nostate'}-{'last' if return_last_states else 'h'}"


@interpreter
@pytest.mark.parametrize("name,with_states,return_last_states", CASES, ids=[_case_id(*c) for c in CASES])
def test_forward_same_bits_as_torch(name, with_states, return_last_states, check):
    cell = _cell(name)
    x = _inputs(SHAPE, torch.float32, with_states, cell)
    out = jax_api.get_mlstm_kernel(name)(**_to_jax(x), return_last_states=return_last_states, chunk_size=CHUNK)
    ref = torch_api.get_mlstm_kernel(name)(**x, return_last_states=return_last_states, chunk_size=CHUNK)
    names = _names(cell, return_last_states)
    assert len(_flat(out)) == len(_flat(ref)) == len(names)
    _same_bits(check, target=f"jax {name}", baseline=f"torch {name}", dims=SHAPE.dims(),
               pairs=dict(zip(names, zip(_flat(out), _flat(ref)))))  # fmt: skip


GRAD_CASES = [(n, SHAPE, s, r) for n, s, r in CASES] + [(n, ODD, True, True) for n in TRITON]


@interpreter
@pytest.mark.parametrize("name,shape,with_states,return_last_states", GRAD_CASES,
                         ids=[f"{s.id}-{_case_id(n, w, r)}" for n, s, w, r in GRAD_CASES])  # fmt: skip
def test_gradients_same_bits_as_torch(name, shape, with_states, return_last_states, check):
    """jax.jit(jax.grad) of a random linear loss on h (and the last states) vs PyTorch autograd: the gradient of every
    input and initial state, and the outputs of the forward that saved for the backward."""
    cell = _cell(name)
    x = _inputs(shape, torch.float32, with_states, cell)
    names = _names(cell, return_last_states)
    kwargs = dict(return_last_states=return_last_states, chunk_size=CHUNK)
    probe = _flat(torch_api.get_mlstm_kernel(name)(**x, **kwargs))
    weights = [torch.randn(o.shape) for o in probe]
    grads, outs = _jax_grad(jax_api.get_mlstm_kernel(name), list(x), [_jnp(w) for w in weights], **kwargs)(
        *_to_jax(x).values()
    )
    grads_t, outs_t = _torch_grad(torch_api.get_mlstm_kernel(name), x, weights, **kwargs)
    assert len(grads) == len(grads_t) == len(x)
    pairs = dict(zip(names, zip(outs, outs_t))) | {f"d{k}": (g, gt) for k, g, gt in zip(x, grads, grads_t)}
    _same_bits(check, target=f"jax.jit(jax.grad) of jax {name}", baseline=f"torch {name} autograd",
               dims=shape.dims(), pairs=pairs)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Against the fp64 oracle
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_matches_oracle_fp32(name, check):
    """fp32 inputs with initial states: h, last states and every gradient (jax.grad under jax.jit of a random linear
    loss) against the fp64 oracle and autograd through it, within the fp32 limits of docs/math.md §7."""
    cell = _cell(name)
    x = _inputs(SHAPE, torch.float32, True, cell)
    names = ["h", *STATE_NAMES[cell]]
    out = _flat(jax_api.get_mlstm_kernel(name)(**_to_jax(x), return_last_states=True, chunk_size=CHUNK))
    ref = _oracle(x, cell)
    check(target=f"jax {name}", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(), dtype=torch.float32,
          pairs={n: (_torch(o), ref[n]) for n, o in zip(names, out)},
          limit=conditioning_limits(torch.float32, lambda x64: _oracle(x64, cell), x))  # fmt: skip

    weights = [torch.randn(o.shape) for o in out]
    grads, _ = _jax_grad(jax_api.get_mlstm_kernel(name), list(x), [_jnp(w) for w in weights], return_last_states=True,
                         chunk_size=CHUNK)(*_to_jax(x).values())  # fmt: skip

    def oracle_grads(x64):
        x64 = {k: v.double().requires_grad_(True) for k, v in x64.items()}
        refs = _oracle(x64, cell)
        loss = sum((refs[n] * w.double()).sum() for n, w in zip(names, weights))
        return {f"d{k}": g for k, g in zip(x64, torch.autograd.grad(loss, list(x64.values())))}

    ref_grads = oracle_grads(x)
    check(target=f"jax.jit(jax.grad) of jax {name}", baseline="autograd through reference.mlstm_recurrent(fp64)",
          dims=SHAPE.dims(), dtype=torch.float32, pairs={f"d{k}": (_torch(g), ref_grads[f"d{k}"]) for k, g in
                                                           zip(x, grads)},
          limit=conditioning_limits(torch.float32, oracle_grads, x))  # fmt: skip


@pytest.mark.parametrize("name", ORACLE_NAMES)
def test_fp16_inputs(name, check):
    """fp16 q, k, v, i, f with float32 initial states: h in fp16, last states in float32, within the fp16 limit of
    the oracle (bf16 is left out: the interpreter mis-computes tl.dot on bf16)."""
    cell = _cell(name)
    x = _inputs(SHAPE, torch.float16, True, cell)
    h, states = jax_api.get_mlstm_kernel(name)(**_to_jax(x), return_last_states=True, chunk_size=CHUNK)
    assert h.dtype == jnp.float16, h.dtype
    assert [s.dtype for s in states] == [jnp.float32] * len(STATE_NAMES[cell]), [s.dtype for s in states]
    names = ["h", *STATE_NAMES[cell]]
    ref = _oracle(x, cell)
    check(target=f"jax {name} on fp16 inputs", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float16, pairs={n: (_torch(o), ref[n]) for n, o in zip(names, (h, *states))},
          limit=conditioning_limits(torch.float16, lambda x64: _oracle(x64, cell), x))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Determinism, jax.jit and the trace cache
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chunkwise--triton_auto", "parallel--triton_siging"])
def test_two_calls_same_bits(name, check):
    cell = _cell(name)
    x = _inputs(SHAPE, torch.float32, True, cell)
    xj = _to_jax(x)
    fn = jax_api.get_mlstm_kernel(name)
    names = ["h", *STATE_NAMES[cell]]
    first = _flat(fn(**xj, return_last_states=True, chunk_size=CHUNK))
    second = _flat(fn(**xj, return_last_states=True, chunk_size=CHUNK))
    _same_bits(check, target=f"jax {name}", baseline="the same call again", dims=SHAPE.dims(),
               pairs={n: (a, _torch(b)) for n, a, b in zip(names, first, second)})  # fmt: skip
    weights = [_jnp(torch.randn(o.shape)) for o in first]
    grad = _jax_grad(fn, list(x), weights, return_last_states=True, chunk_size=CHUNK)
    grads_1, _ = grad(*xj.values())
    grads_2, _ = grad(*xj.values())
    _same_bits(check, target=f"jax.jit(jax.grad) of jax {name}", baseline="the same call again", dims=SHAPE.dims(),
               pairs={f"d{k}": (a, _torch(b)) for k, a, b in zip(x, grads_1, grads_2)})  # fmt: skip


def test_jit_same_bits_as_eager_and_trace_cached(check):
    """A jitted call (static shapes, options closed over) gives the eager bits; a second jax.jit trace of the same
    shapes takes the recorded launches from the cache (hits rise, nothing new is recorded)."""
    name = "chunkwise--triton_xl_chunk"
    x = _to_jax(_inputs(ODD, torch.float32, True, "exp"))
    fn = jax_api.get_mlstm_kernel(name)
    traces = []

    def call(arrays):
        traces.append(1)
        return fn(**arrays, return_last_states=True, chunk_size=CHUNK)

    out = _flat(jax.jit(lambda a: call(a))(x))
    after_first = triton_exec.traced.cache_info()
    again = _flat(jax.jit(lambda a: call(a))(x))
    after_second = triton_exec.traced.cache_info()
    assert len(traces) == 2, "each jax.jit of a new function traces it"
    assert after_second.misses == after_first.misses, (after_first, after_second)
    assert after_second.hits > after_first.hits, (after_first, after_second)
    eager = _flat(fn(**x, return_last_states=True, chunk_size=CHUNK))
    names = ["h", "C", "n", "m"]
    _same_bits(check, target=f"jax.jit of jax {name}", baseline="the eager call", dims=ODD.dims(),
               pairs={n: (a, _torch(b)) for n, a, b in zip(names, out, eager)})  # fmt: skip
    _same_bits(check, target=f"jax.jit of jax {name}, traced again", baseline="the eager call", dims=ODD.dims(),
               pairs={n: (a, _torch(b)) for n, a, b in zip(names, again, eager)})  # fmt: skip


def test_a_changed_force_reaches_the_next_call(monkeypatch):
    """MLSTM_AUTOTUNE_FORCE set after a shape's first JAX call: the next call of that shape records its launches again
    and runs the forced variant, as PyTorch's entries do (recordings are kept per generation of the dispatcher's
    answers); while nothing changes, a call records nothing."""
    x = _to_jax(_inputs(ODD, torch.float32, False, "exp"))
    fn = jax_api.get_mlstm_kernel("chunkwise--triton_auto")
    recorded = []
    record = triton_exec.record
    monkeypatch.setattr(triton_exec, "record", lambda run, metas: recorded.append(record(run, metas)) or recorded[-1])
    monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE", raising=False)
    fn(**x, chunk_size=CHUNK)
    recorded.clear()
    fn(**x, chunk_size=CHUNK)
    assert recorded == []
    forced = {"chunkwise:exp": {"variant": "chunkwise_fused_fw__cell-exp_state-float32",
                                "config": {"chunk": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}}}  # fmt: skip
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps(forced))
    fn(**x, chunk_size=CHUNK)
    launched = {event.name for trace in recorded for event in trace.events if hasattr(event, "grid")}
    assert launched == {"chunkwise_fused_fw_kernel"}, launched


@pytest.mark.parametrize("name", ["chunkwise--triton_xl_chunk", "parallel--triton_limit_headdim"])
def test_float64_runs_the_native_kernel(name, check):
    """float64 inputs (under jax.enable_x64) run the native chunkwise kernel: no Triton launch is recorded, the
    result has the bits of chunkwise--native_custbw and float64 accuracy."""
    with jax.enable_x64(True):
        x = _inputs(SHAPE, torch.float64, True, "exp")
        xj = _to_jax(x)
        assert xj["q"].dtype == jnp.float64
        before = triton_exec.traced.cache_info()
        out = _flat(jax_api.get_mlstm_kernel(name)(**xj, return_last_states=True, chunk_size=CHUNK))
        assert triton_exec.traced.cache_info() == before, "float64 inputs recorded a Triton launch"
        native = _flat(jax_api.get_mlstm_kernel("chunkwise--native_custbw")(**xj, return_last_states=True,
                                                                              chunk_size=CHUNK))  # fmt: skip
    names = ["h", "C", "n", "m"]
    assert [o.dtype for o in out] == [jnp.float64] * 4, [o.dtype for o in out]
    _same_bits(check, target=f"jax {name} on float64 inputs", baseline="jax chunkwise--native_custbw",
               dims=SHAPE.dims(), pairs={n: (a, _torch(b)) for n, a, b in zip(names, out, native)})  # fmt: skip
    ref = _oracle(x, "exp")
    check(target=f"jax {name} on float64 inputs", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float64, pairs={n: (_torch(o), ref[n]) for n, o in zip(names, out)},
          limit=LIMITS[torch.float64])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Step and sequence kernels
# ---------------------------------------------------------------------------------------------------------------

STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _step_state(x: dict, cell: str, zero_state: bool, dtype_state: torch.dtype) -> dict:
    """c, n (in dtype_state) and m (float32; None for the sig cell) from x's initial states, or all None."""
    if zero_state:
        return {"c": None, "n": None, "m": None}
    m = x["m_initial"] if cell == "exp" else None
    return {"c": x["c_initial"].to(dtype_state), "n": x["n_initial"].to(dtype_state), "m": m}


@interpreter
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_step_updates_the_state_in_place(cell, monkeypatch):
    """The Triton step hands its launch the state as inputs aliased to its outputs (jax-triton's
    input_output_aliases): a state donated to jax.jit is written where it lies. With fresh outputs XLA copied the
    donated state out of the way first, one more read and write of it per step (JAX 1.95x ours at B=512, H100)."""
    from autotune.launch import replay

    launches = []
    launch = replay.TorchRuntime.launch

    def spy(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options):
        launches.append(([tuple(t.shape) for t in inputs], [tuple(shape) for shape, _ in outputs], dict(aliases)))
        return launch(self, kernel, grid, inputs, scalars, outputs, aliases, constexprs, options)

    monkeypatch.setattr(replay.TorchRuntime, "launch", spy)
    x = _inputs(SHAPE, torch.float32, True, "exp")
    state = _step_state(x, cell, False, torch.float32)
    jax_api.get_mlstm_step_kernel("triton")(**_to_jax(_token(x)), **_to_jax(state), cell=cell)
    ((inputs, outputs, aliases),) = launches
    aliased = sorted(outputs[o] for o in aliases.values())
    assert [inputs[i] for i in sorted(aliases, key=aliases.get)] == [outputs[o] for o in sorted(aliases.values())]
    state_shapes = [tuple(t.shape) for t in state.values() if t is not None]
    assert all(aliased.count(s) >= state_shapes.count(s) for s in state_shapes), (inputs, outputs, aliases)


@interpreter
@pytest.mark.parametrize("dtype_state", STATE_DTYPES.values(), ids=STATE_DTYPES.keys())
@pytest.mark.parametrize("zero_state", [False, True], ids=["state", "zero"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_step_same_bits_as_torch(cell, zero_state, dtype_state, check):
    """get_mlstm_step_kernel("triton"): h and the new state equal the PyTorch Triton step's bits; C and n in
    dtype_state, m in float32 (None for the sig cell, which has no max state)."""
    x = _inputs(SHAPE, torch.float32, True, "exp")
    tok, state = _token(x), _step_state(x, cell, zero_state, dtype_state)
    h_t, state_t = torch_api.get_mlstm_step_kernel("triton")(**tok, **state, cell=cell, dtype_state=dtype_state)
    h, state_j = jax_api.get_mlstm_step_kernel("triton")(**_to_jax(tok), **_to_jax(state), cell=cell,
                                                          dtype_state=JNP[dtype_state])  # fmt: skip
    expected = [jnp.float32, JNP[dtype_state], JNP[dtype_state], jnp.float32 if cell == "exp" else None]
    assert [getattr(a, "dtype", None) for a in (h, *state_j)] == expected, [getattr(a, "dtype", None) for a in
                                                                            (h, *state_j)]  # fmt: skip
    B, NH, S, DHQK, DHHV = SHAPE.dims()
    _same_bits(check, target="jax step triton", baseline="torch step triton", dims=(B, NH, 1, DHQK, DHHV),
               pairs=dict(zip(["h", "C", "n", "m"], zip((h, *state_j), (h_t, *state_t)))))  # fmt: skip


@interpreter
def test_sig_step_passes_m_through():
    """The sig cell has no max state: a given m comes back unchanged from the Triton step, as it does from the
    PyTorch Triton step and from the native JAX step (autotune/jax/native/recurrent.py)."""
    x = _inputs(SHAPE, torch.float32, True, "exp")
    tok, m = _token(x), x["m_initial"]
    state = {"c": x["c_initial"], "n": x["n_initial"], "m": m}
    _, (_, _, m_torch) = torch_api.get_mlstm_step_kernel("triton")(**tok, **state, cell="sig")
    _, (_, _, m_native) = jax_api.get_mlstm_step_kernel("native")(**_to_jax(tok), **_to_jax(state), cell="sig")
    _, (_, _, m_triton) = jax_api.get_mlstm_step_kernel("triton")(**_to_jax(tok), **_to_jax(state), cell="sig")
    assert m_torch is not None and torch.equal(m_torch, m)
    assert m_native is not None and np.array_equal(np.asarray(m_native), m.numpy())
    assert m_triton is not None, "jax step 'triton' (cell='sig') returns m=None for a given m"
    assert np.array_equal(np.asarray(m_triton), m.numpy())


@pytest.mark.parametrize("zero_state", [False, True], ids=["state", "zero"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_step_gradients_equal_native(cell, zero_state, check):
    """jax.jit(jax.grad) of a random linear loss on h and the new state: the Triton step's gradients are those of
    the native JAX step (whose VJP it takes), for q, k, v, i, f and the given state."""
    x = _inputs(SHAPE, torch.float32, True, "exp")
    args = {**_token(x), **{k: v for k, v in _step_state(x, cell, zero_state, torch.float32).items() if v is not None}}
    keys = list(args)
    h, state = jax_api.get_mlstm_step_kernel("native")(**{"c": None, "n": None, "m": None, **_to_jax(args)}, cell=cell)
    weights = [_jnp(torch.randn(a.shape)) for a in (h, *state) if a is not None]

    def grad(name):
        step = jax_api.get_mlstm_step_kernel(name)

        def loss(*arrays):
            h, state = step(**{"c": None, "n": None, "m": None, **dict(zip(keys, arrays))}, cell=cell)
            return sum((a * w).sum() for a, w in zip((h, *(s for s in state if s is not None)), weights))

        return jax.jit(jax.grad(loss, argnums=tuple(range(len(keys)))))(*_to_jax(args).values())

    B, NH, S, DHQK, DHHV = SHAPE.dims()
    _same_bits(check, target="jax.jit(jax.grad) of jax step triton", baseline="the same of jax step native",
               dims=(B, NH, 1, DHQK, DHHV),
               pairs={f"d{k}": (a, _torch(b)) for k, a, b in zip(keys, grad("triton"), grad("native"))})  # fmt: skip


SEQUENCE_CASES = [("exp", False, "fp32"), ("exp", True, "fp32"), ("sig", False, "fp32"), ("sig", True, "fp32"),
                  ("exp", True, "bf16"), ("sig", False, "bf16")]  # fmt: skip


@interpreter
@pytest.mark.parametrize("cell,with_states,dtype_state", SEQUENCE_CASES,
                         ids=[f"{c}-{'state' if s else 'nostate'}-{d}" for c, s, d in SEQUENCE_CASES])  # fmt: skip
def test_sequence_same_bits_as_torch(cell, with_states, dtype_state, check):
    """get_mlstm_sequence_kernel("native_sequence__triton"): h and the last states equal the PyTorch Triton
    sequence's bits; C and n in dtype_state, m in float32."""
    sd = STATE_DTYPES[dtype_state]
    x = _inputs(SHAPE, torch.float32, with_states, cell)
    kwargs = dict(return_last_states=True, cell=cell)
    ref = _flat(torch_api.get_mlstm_sequence_kernel("native_sequence__triton")(**x, dtype_state=sd, **kwargs))
    out = _flat(jax_api.get_mlstm_sequence_kernel("native_sequence__triton")(**_to_jax(x), dtype_state=JNP[sd],
                                                                               **kwargs))  # fmt: skip
    expected = [jnp.float32, JNP[sd], JNP[sd], jnp.float32][: 1 + len(STATE_NAMES[cell])]
    assert [a.dtype for a in out] == expected, [a.dtype for a in out]
    _same_bits(check, target="jax native_sequence__triton", baseline="torch native_sequence__triton",
               dims=SHAPE.dims(), pairs=dict(zip(["h", *STATE_NAMES[cell]], zip(out, ref))))  # fmt: skip


@pytest.mark.parametrize("cell,with_states", [("exp", True), ("sig", False)], ids=["exp-state", "sig-nostate"])
def test_sequence_gradients_equal_native(cell, with_states, check):
    """jax.jit(jax.grad) of a random linear loss on h and the last states: native_sequence__triton's gradients are
    those of native_sequence__native (whose VJP it takes), for every input and initial state."""
    x = _inputs(SHAPE, torch.float32, with_states, cell)
    kwargs = dict(return_last_states=True, cell=cell)
    out = _flat(jax_api.get_mlstm_sequence_kernel("native_sequence__native")(**_to_jax(x), **kwargs))
    weights = [_jnp(torch.randn(o.shape)) for o in out]
    grads = {
        name: _jax_grad(jax_api.get_mlstm_sequence_kernel(name), list(x), weights, **kwargs)(*_to_jax(x).values())[0]
        for name in ("native_sequence__triton", "native_sequence__native")
    }
    _same_bits(check, target="jax.jit(jax.grad) of jax native_sequence__triton",
               baseline="the same of jax native_sequence__native", dims=SHAPE.dims(),
               pairs={f"d{k}": (a, _torch(b)) for k, a, b in zip(x, grads["native_sequence__triton"],
                                                                 grads["native_sequence__native"])})  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def _call(kind: str, x: dict, **kwargs):
    """A Triton entry on sequence inputs x (JAX arrays): kind "chunkwise", "parallel", "sequence" or "step"."""
    if kind == "step":
        return jax_api.get_mlstm_step_kernel("triton")(**_token(x), c=x["c_initial"], n=x["n_initial"],
                                                       m=x["m_initial"], **kwargs)  # fmt: skip
    if kind == "sequence":
        return jax_api.get_mlstm_sequence_kernel("native_sequence__triton")(**x, return_last_states=True, **kwargs)
    name = {"chunkwise": "chunkwise--triton_fused", "parallel": "parallel--triton_limit_headdim"}[kind]
    return jax_api.get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=CHUNK, **kwargs)


KINDS = ["chunkwise", "parallel", "sequence", "step"]


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_is_refused(kind):
    x = _to_jax(_inputs(SHAPE, torch.float32, True, "exp"))
    stacked = {k: jnp.stack([v, v]) for k, v in x.items()}
    with pytest.raises(MLSTMInputError, match=r"jax\.vmap"):
        jax.vmap(lambda a: _call(kind, a))(stacked)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("chunk_size", [0, 8, 24, 48, 100])
@pytest.mark.parametrize("name", ["chunkwise--triton_xl_chunk", "chunkwise--triton_fused_siging"])
def test_chunk_size_triton_cannot_tile(name, chunk_size, jit):
    x = _to_jax(_inputs(SHAPE, torch.float32, False, _cell(name)))
    fn = jax_api.get_mlstm_kernel(name)
    call = lambda a: fn(**a, chunk_size=chunk_size)  # noqa: E731
    with pytest.raises(MLSTMInputError, match=r"chunk_size"):
        (jax.jit(call) if jit else call)(x)


def test_step_inplace_is_refused():
    x = _to_jax(_inputs(SHAPE, torch.float32, True, "exp"))
    with pytest.raises(MLSTMInputError, match=r"inplace"):
        _call("step", x, inplace=True)


@cpu_jax
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("kind", KINDS)
def test_without_gpu_or_interpreter_says_so(kind, jit, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = _to_jax(_inputs(SHAPE, torch.float32, True, "exp"))
    call = lambda a: _call(kind, a)  # noqa: E731
    with pytest.raises(MLSTMInputError, match=r"need a GPU.*TRITON_INTERPRET=1"):
        (jax.jit(call) if jit else call)(x)


# ---------------------------------------------------------------------------------------------------------------
# TRITON_CACHE_DIR
# ---------------------------------------------------------------------------------------------------------------


def test_import_leaves_triton_cache_dir(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    code = "import os, autotune.jax; print(os.environ.get('TRITON_CACHE_DIR'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path)


def _forget_jax_triton(monkeypatch):
    """Drop jax_triton and its submodules from sys.modules (put back after the test), so that importing it runs
    its module code again."""
    for module in [m for m in sys.modules if m == "jax_triton" or m.startswith("jax_triton.")]:
        monkeypatch.delitem(sys.modules, module)


@cpu_jax
@pytest.mark.parametrize("before", ["set", "unset"])
def test_jax_triton_import_failure_restores_triton_cache_dir(before, tmp_path, monkeypatch):
    """jax-triton does not import where JAX has no GPU (its import sets TRITON_CACHE_DIR="" before it fails): the
    ImportError names the extra, and TRITON_CACHE_DIR is as it was."""
    _forget_jax_triton(monkeypatch)
    if before == "set":
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with pytest.raises(ImportError, match=r"mlstm-autotune\[jax\]"):
        triton_exec.jax_triton()
    assert os.environ.get("TRITON_CACHE_DIR") == (str(tmp_path) if before == "set" else None)


@pytest.mark.parametrize("before", ["set", "unset"])
def test_jax_triton_restores_triton_cache_dir_when_the_import_changes_it(before, tmp_path, monkeypatch):
    """An import that sets TRITON_CACHE_DIR and then fails leaves the variable as it was before the call."""

    def failing_import(module, what):
        os.environ["TRITON_CACHE_DIR"] = ""
        raise ImportError(f"{what} needs {module}")

    monkeypatch.setattr(triton_exec, "require", failing_import)
    triton_exec.jax_triton.cache_clear()
    if before == "set":
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with pytest.raises(ImportError, match=r"jax_triton"):
        triton_exec.jax_triton()
    assert os.environ.get("TRITON_CACHE_DIR") == (str(tmp_path) if before == "set" else None)


def test_float_scalars_reach_jax_triton_as_fp32(monkeypatch):
    """Triton's own launcher types a Python float argument fp32; jax-triton types it fp64 (and np.float32 fp32). The
    runtime hands jax-triton float32 scalars, so a kernel compiles as it does from PyTorch (with fp64 scalars the
    parallel and backward kernels did not compile: a loop-carried fp32 accumulator turned fp64)."""
    seen = {}

    class FakeJaxTriton:
        @staticmethod
        def triton_call(*args, **kwargs):
            seen["args"] = args
            return [jnp.zeros(s.shape, s.dtype) for s in kwargs["out_shape"]]

    monkeypatch.setattr(triton_exec, "jax_triton", lambda: FakeJaxTriton)
    x = jnp.zeros(4, jnp.float32)
    triton_exec.JaxTritonRuntime().launch(object(), (1,), [x], [0.125, 7, True], [((4,), torch.float32)], {}, {}, {})
    scalars = seen["args"][1:]
    assert [type(s) for s in scalars] == [np.float32, int, bool]
    assert scalars[0] == np.float32(0.125)
