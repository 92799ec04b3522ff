"""The native JAX kernels (autotune/jax/) against the float64 recurrent oracle and against their PyTorch twins.

- test_forward_matches_oracle: every chunkwise, parallel and sequence kernel (the sig-cell chunkwise function
  included), fp64 and fp32, with and without initial states: h and every last state (docs/math.md §7 limits).
- test_chunk_sizes: chunkwise kernels with chunk sizes that divide S, leave a tail, exceed S, and chunks of 1.
- test_gradients_match_oracle: jax.grad of a random linear loss on h and the last states vs torch autograd through
  the fp64 oracle, for every input and initial state (docs/math.md §6).
- test_matches_torch_native: outputs, states and gradients equal those of the PyTorch kernel of the same name.
- test_jit_matches_eager: the kernel call (and its gradient) under jax.jit equals the eager call.
- step kernel: a loop of steps equals the sequence kernel and the oracle (both cells, eager and jitted); state
  dtypes (dtype_state); inplace=True is refused.
- 16-bit inputs return h in the input dtype, computed in float32, with float32 states.
- bad input raises MLSTMInputError naming the argument, eagerly and at trace time under jax.jit; unknown names raise
  ValueError listing the known ones.
- the compensated float32 prefix sum of the non-stable-f parallel kernels.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import (
    GRAD_LIMIT_FP64,
    LIMITS,
    MAX_OUTLIER,
    SHAPES,
    UNIT_ROUNDOFF,
    Case,
    Shape,
    conditioning_limits,
    drop,
    set_input,
    set_kw,
)

import autotune.torch as torch_api
from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch.native.chunkwise import mlstm_siging_chunkwise__native as torch_sig_chunkwise

jax = pytest.importorskip("jax", reason="jax is not installed (the jax extra; CI installs it): no JAX kernel to test")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import autotune.jax as jax_api  # noqa: E402
from autotune.jax import MLSTMInputError  # noqa: E402
from autotune.jax.native.chunkwise import mlstm_siging_chunkwise__native as jax_sig_chunkwise  # noqa: E402
from autotune.jax.native.parallel import _prefix_sum  # noqa: E402

SEQ = "sequence:native_sequence__native"
SIG_CHUNKWISE = "chunkwise:mlstm_siging_chunkwise__native"
SEQUENCE_KERNELS = [n for n in jax_api.get_available_mlstm_kernels() if "--native" in n]
ALL = SEQUENCE_KERNELS + [SEQ, SIG_CHUNKWISE]

DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
JNP = {torch.float64: jnp.float64, torch.float32: jnp.float32, torch.bfloat16: jnp.bfloat16, torch.float16: jnp.float16}

FWD_SHAPES = [SHAPES[1], SHAPES[3]]
GRAD_SHAPE = SHAPES[3]
CHUNK = 16
# jit and eager run the same XLA computations up to fusion: they agree to a few float64 roundings
JIT_LIMIT = 1e-12


def _fn(name: str, api=jax_api) -> Callable:
    """The kernel called ``name`` in ``api`` (autotune.jax or autotune.torch)."""
    if name == SEQ:
        return api.get_mlstm_sequence_kernel(name.split(":", 1)[1])
    if name == SIG_CHUNKWISE:
        return jax_sig_chunkwise if api is jax_api else torch_sig_chunkwise
    return api.get_mlstm_kernel(name)


def _cell(name: str) -> str:
    return "sig" if "siging" in name else "exp"


def _state_names(cell: str) -> list[str]:
    return ["C", "n", "m"] if cell == "exp" else ["C", "n"]


def _jnp(t: torch.Tensor | None):
    """The same values as a JAX array of the same dtype."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.float().numpy()).astype(jnp.bfloat16)
    return jnp.asarray(t.numpy())


def _to_jax(x: dict) -> dict:
    return {k: _jnp(v) for k, v in x.items()}


def _torch(a) -> torch.Tensor:
    """A JAX array's values as a float64 torch tensor (for the comparison helper)."""
    return torch.from_numpy(np.asarray(a).astype(np.float64))


def _inputs(shape: Shape, dtype: torch.dtype, with_states: bool, cell: str, generator=None) -> dict:
    x = random_inputs(*shape.dims(), dtype=dtype, with_states=with_states, generator=generator,
                      max_outlier=MAX_OUTLIER.get(dtype, 20.0))  # fmt: skip
    if cell == "sig":
        x.pop("m_initial", None)
    return x


def _oracle(x: dict, cell: str, need_grad: bool = False):
    """The fp64 recurrent definition on the same input values."""
    x64 = {k: v.detach().double().requires_grad_(need_grad) for k, v in x.items()}
    h, states = mlstm_recurrent(**x64, cell=cell, return_last_states=True)
    return x64, h, states


def _run(name: str, xj: dict, chunk_size: int = CHUNK):
    return _fn(name)(**xj, return_last_states=True, chunk_size=chunk_size)


def _pairs(names, outs, refs) -> dict:
    """{name: (out, ref)} for the comparison helper, JAX arrays converted to torch tensors."""

    def as_torch(a):
        return a if isinstance(a, torch.Tensor) else _torch(a)

    return {n: (as_torch(o), as_torch(r)) for n, o, r in zip(names, outs, refs)}


def _flat_oracle(x64: dict, cell: str) -> tuple:
    _, h, states = _oracle(x64, cell)
    return (h, *states)


def _oracle_dict(names: list[str], cell: str) -> Callable:
    """x64 -> {name: tensor} of the oracle's (h, *states), for conditioning_limits."""
    return lambda x64: dict(zip(names, _flat_oracle(x64, cell)))


# ---------------------------------------------------------------------------------------------------------------
# Forward: outputs and last states against the oracle
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=[s.id for s in FWD_SHAPES])
@pytest.mark.parametrize("name", ALL)
def test_forward_matches_oracle(name, shape, with_states, dtype, check):
    cell = _cell(name)
    x = _inputs(shape, dtype, with_states, cell)
    h, states = _run(name, _to_jax(x))
    _, h_ref, states_ref = _oracle(x, cell)
    assert h.dtype == JNP[dtype] and h.shape == tuple(h_ref.shape)
    assert len(states) == len(states_ref)
    assert all(s.dtype == JNP[dtype] for s in states), [s.dtype for s in states]
    names = ["h", *_state_names(cell)]
    limit = LIMITS[dtype]
    if dtype != torch.float64:
        limit = conditioning_limits(dtype, _oracle_dict(names, cell), x)
    check(target=f"jax {name}", baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(), dtype=dtype,
          pairs=_pairs(names, (h, *states), (h_ref, *states_ref)), limit=limit)  # fmt: skip


CHUNK_CASES = [(SHAPES[0], 16), (SHAPES[1], 1), (SHAPES[3], 13), (SHAPES[3], 128)]


@pytest.mark.parametrize("shape,chunk_size", CHUNK_CASES, ids=[f"{s.id}-L{L}" for s, L in CHUNK_CASES])
@pytest.mark.parametrize("name", ["chunkwise--native_custbw", SIG_CHUNKWISE])
def test_chunk_sizes(name, shape, chunk_size, check):
    """Chunks larger than S (no full chunk), of 1 token, and dividing S (no tail), fp64 with initial states."""
    cell = _cell(name)
    x = _inputs(shape, torch.float64, True, cell)
    h, states = _run(name, _to_jax(x), chunk_size)
    _, h_ref, states_ref = _oracle(x, cell)
    check(target=f"jax {name}(chunk_size={chunk_size})", baseline="reference.mlstm_recurrent(fp64)",
          dims=shape.dims(), dtype=torch.float64, pairs=_pairs(["h", *_state_names(cell)], (h, *states),
                                                               (h_ref, *states_ref)),
          limit=LIMITS[torch.float64])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Gradients: jax.grad against autograd through the oracle, against the PyTorch kernels, and under jit
# ---------------------------------------------------------------------------------------------------------------


def _linear_loss(h, states, weights):
    return (h * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))


def _grad_fn(name: str, keys: list[str], weights: list, chunk_size: int) -> Callable:
    """arrays -> (gradients of the linear loss for every array, (h, last states))."""
    fn = _fn(name)

    def loss(*arrays):
        h, states = fn(**dict(zip(keys, arrays)), return_last_states=True, chunk_size=chunk_size)
        return _linear_loss(h, states, weights), (h, states)

    return jax.grad(loss, argnums=tuple(range(len(keys))), has_aux=True)


@functools.cache
def _grad_case(name: str, chunk_size: int, with_states: bool):
    """fp64 inputs on GRAD_SHAPE, loss weights and the eager JAX results (grads, (h, states)) of one case. The
    oracle, PyTorch and jit tests compare against this one eager run (drawn from a seed of the case's own)."""
    cell = _cell(name)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}-{chunk_size}-{with_states}".encode()))
    x = _inputs(GRAD_SHAPE, torch.float64, with_states, cell, generator=gen)
    B, NH, S, DHQK, DHHV = GRAD_SHAPE.dims()
    shapes = [(B, NH, S, DHHV), (B, NH, DHQK, DHHV), (B, NH, DHQK), (B, NH, 1)][: 1 + len(_state_names(cell))]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads, (h, states) = _grad_fn(name, list(x), [_jnp(w) for w in weights], chunk_size)(*_to_jax(x).values())
    return x, weights, grads, h, states


# every kernel with initial states; without them, the chunkwise and sequence kernels and the sig cell. Chunk size
# matters only to chunkwise kernels: the exact backward also runs with chunks that divide S (no tail) and that exceed
# S (no full chunk). (Each case compiles a forward and a backward program: the cases are chosen to keep the file fast.)
NOSTATE = ["chunkwise--native_custbw", SEQ, "parallel--native_siging_custbw"]
GRAD_CASES = [(n, CHUNK, True) for n in ALL] + [(n, CHUNK, False) for n in NOSTATE]
GRAD_CASES += [("chunkwise--native_custbw", L, True) for L in (13, 128)]
JIT_CASES = [(n, True) for n in ALL] + [(n, False) for n in NOSTATE[:2]]


@pytest.mark.parametrize("name,chunk_size,with_states", GRAD_CASES,
                         ids=[f"{n}-L{L}-{'state' if s else 'nostate'}" for n, L, s in GRAD_CASES])  # fmt: skip
def test_gradients_match_oracle(name, chunk_size, with_states, check):
    cell = _cell(name)
    x, weights, grads, _, _ = _grad_case(name, chunk_size, with_states)
    x64, h_ref, states_ref = _oracle(x, cell, need_grad=True)
    grads_ref = torch.autograd.grad(_linear_loss(h_ref, states_ref, weights), list(x64.values()))
    assert all(g.dtype == jnp.float64 and g.shape == tuple(r.shape) for g, r in zip(grads, grads_ref))
    check(target=f"jax.grad of jax {name}(chunk_size={chunk_size})",
          baseline="autograd through reference.mlstm_recurrent(fp64)", dims=GRAD_SHAPE.dims(), dtype=torch.float64,
          pairs=_pairs([f"d{k}" for k in x], grads, grads_ref), limit=GRAD_LIMIT_FP64)  # fmt: skip


def _out_and_grad_names(cell: str, keys) -> list[str]:
    return ["h", *_state_names(cell), *(f"d{k}" for k in keys)]


@pytest.mark.parametrize("name", ALL)
def test_matches_torch_native(name, check):
    """Identical fp64 inputs and loss: the JAX kernel and the PyTorch kernel of the same name agree."""
    cell = _cell(name)
    x, weights, grads, h, states = _grad_case(name, CHUNK, True)
    xt = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    h_t, states_t = _fn(name, torch_api)(**xt, return_last_states=True, chunk_size=CHUNK)
    grads_t = torch.autograd.grad(_linear_loss(h_t, states_t, weights), list(xt.values()))
    names = _out_and_grad_names(cell, x)
    outputs = ["h", *_state_names(cell)]
    limit = {n: (LIMITS[torch.float64] if n in outputs else GRAD_LIMIT_FP64) for n in names}
    check(target=f"jax {name} (outputs and jax.grad)", baseline=f"torch {name} (outputs and autograd)",
          dims=GRAD_SHAPE.dims(), dtype=torch.float64,
          pairs=_pairs(names, (h, *states, *grads), (h_t, *states_t, *grads_t)), limit=limit)  # fmt: skip


@pytest.mark.parametrize("name,with_states", JIT_CASES,
                         ids=[f"{n}-{'state' if s else 'nostate'}" for n, s in JIT_CASES])  # fmt: skip
def test_jit_matches_eager(name, with_states, check):
    """jax.jit of the kernel call and its gradient (options and absent states closed over) equals the eager run."""
    cell = _cell(name)
    x, weights, grads, h, states = _grad_case(name, CHUNK, with_states)
    jitted = jax.jit(_grad_fn(name, list(x), [_jnp(w) for w in weights], CHUNK))
    grads_jit, (h_jit, states_jit) = jitted(*_to_jax(x).values())
    names = _out_and_grad_names(cell, x)
    check(target=f"jax.jit(jax.grad of jax {name})", baseline="the same, eager", dims=GRAD_SHAPE.dims(),
          dtype=torch.float64, pairs=_pairs(names, (h_jit, *states_jit, *grads_jit), (h, *states, *grads)),
          limit=JIT_LIMIT)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# 16-bit inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
@pytest.mark.parametrize("name", ALL)
def test_16bit_inputs(name, dtype, check):
    """bf16/fp16 q, k, v, i, f (float32 states): h in the input dtype is the float32 result rounded (relative error
    <= the unit roundoff), last states in float32 equal the float32 run on the same values; both near the oracle."""
    cell = _cell(name)
    shape = GRAD_SHAPE
    x = _inputs(shape, dtype, True, cell)
    h, states = _run(name, _to_jax(x))
    assert h.dtype == JNP[dtype]
    assert all(s.dtype == jnp.float32 for s in states), [s.dtype for s in states]
    h32, states32 = _run(name, _to_jax({k: v.float() for k, v in x.items()}))
    names = ["h", *_state_names(cell)]
    limit = {"h": UNIT_ROUNDOFF[dtype], **{n: LIMITS[torch.float32] for n in names[1:]}}
    check(target=f"jax {name} on {dtype} inputs", baseline="the same kernel on the values in float32",
          dims=shape.dims(), dtype=dtype, pairs=_pairs(names, (h, *states), (h32, *states32)), limit=limit)  # fmt: skip
    _, h_ref, states_ref = _oracle(x, cell)
    limit = conditioning_limits(dtype, _oracle_dict(names, cell), x)
    check(target=f"jax {name} on {dtype} inputs", baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(),
          dtype=dtype, pairs=_pairs(names, (h, *states), (h_ref, *states_ref)), limit=limit)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Step kernel
# ---------------------------------------------------------------------------------------------------------------


def _token(x: dict, t: int) -> dict:
    """The step kernel's inputs for token t of sequence inputs x (JAX arrays)."""
    return {"q": x["q"][:, :, t], "k": x["k"][:, :, t], "v": x["v"][:, :, t], "i": x["i"][:, :, t, None],
            "f": x["f"][:, :, t, None]}  # fmt: skip


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_step_loop_equals_sequence_and_oracle(cell, with_states, jit, check):
    """get_mlstm_step_kernel("native") token by token, states fed back (starting from None for the zero state),
    equals the sequence kernel and the fp64 oracle: h and the last states."""
    shape = SHAPES[1]
    x = _inputs(shape, torch.float64, with_states, cell)
    xj = _to_jax(x)
    step = functools.partial(jax_api.get_mlstm_step_kernel("native"), cell=cell)
    if jit:
        step = jax.jit(step)
    c, n, m = xj.get("c_initial"), xj.get("n_initial"), xj.get("m_initial")
    hs = []
    for t in range(shape.S):
        h, (c, n, m) = step(**_token(xj, t), c=c, n=n, m=m)
        hs.append(h)
    names = ["h", *_state_names(cell)]
    outs = (jnp.stack(hs, 2), c, n, m)[: len(names)]
    if cell == "sig":
        assert m is None, "the sig cell has no max state: m passes through"
    h_seq, states_seq = _fn(SEQ)(**xj, return_last_states=True, cell=cell)
    check(target=f"jax step kernel native x{shape.S} ({'jit' if jit else 'eager'})",
          baseline="jax native_sequence__native", dims=shape.dims(), dtype=torch.float64,
          pairs=_pairs(names, outs, (h_seq, *states_seq)), limit=LIMITS[torch.float64])  # fmt: skip
    _, h_ref, states_ref = _oracle(x, cell)
    check(target=f"jax step kernel native x{shape.S} ({'jit' if jit else 'eager'})",
          baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(), dtype=torch.float64,
          pairs=_pairs(names, outs, (h_ref, *states_ref)), limit=LIMITS[torch.float64])  # fmt: skip


def _run_form(form: str, x: dict, cell: str = "exp", **kwargs):
    """The step kernel on the first token of x, or the sequence kernel on all of x: (h, the cell's states)."""
    xj = _to_jax(x)
    if form == "step":
        step = jax_api.get_mlstm_step_kernel("native")
        h, states = step(**_token(xj, 0), c=xj["c_initial"], n=xj["n_initial"], m=xj.get("m_initial"), cell=cell,
                         **kwargs)  # fmt: skip
    else:
        h, states = _fn(SEQ)(**xj, return_last_states=True, cell=cell, **kwargs)
    return h, tuple(states[: len(_state_names(cell))])


def _form_oracle(form: str, x: dict, cell: str):
    """The oracle's (h, *states) for _run_form: the first token only for the step kernel."""
    if form == "step":
        x = {k: (v[:, :, :1] if k in ("q", "k", "v", "i", "f") else v) for k, v in x.items()}
    h, *states = _flat_oracle(x, cell)
    return x, (h[:, :, 0] if form == "step" else h, *states)


@pytest.mark.parametrize("cell", ["exp", "sig"])
@pytest.mark.parametrize("form", ["step", "sequence"])
def test_bf16_state(form, cell, check):
    """dtype_state=bfloat16 with float32 inputs keeps C and n in bfloat16 (m in float32), within bf16 accuracy of the
    oracle; the step's h and m (computed from the float32 update) within float32 accuracy."""
    shape = SHAPES[1]
    x = _inputs(shape, torch.float32, True, cell)
    h, states = _run_form(form, x, cell, dtype_state=jnp.bfloat16)
    names = ["h", *_state_names(cell)]
    expected = (jnp.float32, jnp.bfloat16, jnp.bfloat16, jnp.float32)[: len(names)]
    assert tuple(a.dtype for a in (h, *states)) == expected
    ref_x, refs = _form_oracle(form, x, cell)
    lim16 = conditioning_limits(torch.bfloat16, _oracle_dict(names, cell), ref_x)
    lim32 = conditioning_limits(torch.float32, _oracle_dict(names, cell), ref_x)
    limit = {**lim16, **({"h": lim32["h"]} if form == "step" else {}), **({"m": lim32["m"]} if cell == "exp" else {})}
    check(target=f"jax {form} kernel native ({cell} cell), dtype_state=bfloat16",
          baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(), dtype=torch.float32,
          pairs=_pairs(names, (h, *states), refs), limit=limit)  # fmt: skip


@pytest.mark.parametrize("form", ["step", "sequence"])
def test_fp64_inputs_keep_fp64_states(form, check):
    """float64 inputs give float64 states whatever dtype_state says (here bfloat16), at the float64 limit."""
    shape = SHAPES[1]
    x = _inputs(shape, torch.float64, True, "exp")
    h, states = _run_form(form, x, dtype_state=jnp.bfloat16)
    assert all(a.dtype == jnp.float64 for a in (h, *states)), [a.dtype for a in (h, *states)]
    _, refs = _form_oracle(form, x, "exp")
    check(target=f"jax {form} kernel native, dtype_state=bfloat16", baseline="reference.mlstm_recurrent(fp64)",
          dims=shape.dims(), dtype=torch.float64, pairs=_pairs(["h", "C", "n", "m"], (h, *states), refs),
          limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("dtype", HALF.values(), ids=HALF.keys())
def test_step_16bit_inputs(dtype, check):
    """16-bit step inputs: h in the input dtype (the float32 step's h rounded), new state in float32."""
    shape = SHAPES[1]
    x = _inputs(shape, dtype, True, "exp")
    h, states = _run_form("step", x)
    assert h.dtype == JNP[dtype] and all(s.dtype == jnp.float32 for s in states)
    h32, states32 = _run_form("step", {k: v.float() for k, v in x.items()})
    limit = {"h": UNIT_ROUNDOFF[dtype], "C": LIMITS[torch.float32], "n": LIMITS[torch.float32],
             "m": LIMITS[torch.float32]}  # fmt: skip
    check(target=f"jax step kernel native on {dtype} inputs", baseline="the same on the values in float32",
          dims=shape.dims(), dtype=dtype, pairs=_pairs(["h", "C", "n", "m"], (h, *states), (h32, *states32)),
          limit=limit)  # fmt: skip


def test_step_inplace_is_refused():
    x = _to_jax(_inputs(SHAPES[1], torch.float32, True, "exp"))
    step = jax_api.get_mlstm_step_kernel("native")
    with pytest.raises(MLSTMInputError, match=r"inplace"):
        step(**_token(x, 0), c=x["c_initial"], n=x["n_initial"], m=x["m_initial"], inplace=True)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    name: str
    cell: str  # "exp" | "sig"
    form: str  # "chunkwise" | "parallel" | "sequence" | "step"

    def fn(self) -> Callable:
        if self.form == "step":
            return jax_api.get_mlstm_step_kernel(self.name)
        if self.form == "sequence":
            return jax_api.get_mlstm_sequence_kernel(self.name)
        return jax_api.get_mlstm_kernel(self.name)


BAD_KERNELS = [
    Kernel("chunkwise--native_custbw", "exp", "chunkwise"),
    Kernel("parallel--native_stablef_custbw", "exp", "parallel"),
    Kernel("parallel--native_siging_custbw", "sig", "parallel"),
    Kernel("native_sequence__native", "exp", "sequence"),
    Kernel("native", "exp", "step"),
]
BAD_SHAPE = SHAPES[1]


def _valid(kernel: Kernel) -> dict:
    x = _to_jax(_inputs(BAD_SHAPE, torch.float64, True, kernel.cell))
    if kernel.form == "step":
        return {**_token(x, 0), "c": x["c_initial"], "n": x["n_initial"], "m": x["m_initial"]}
    return x


def _call(kernel: Kernel, x: dict):
    kw = dict(x)
    if kernel.form != "step":
        kw.setdefault("return_last_states", True)
        kw.setdefault("chunk_size", CHUNK)
    return kernel.fn()(**kw)


def _call_jit(kernel: Kernel, x: dict, lower_only: bool = False):
    """The call under jax.jit: JAX arrays are traced arguments, everything else is closed over."""
    arrays = {k: v for k, v in x.items() if isinstance(v, jax.Array)}
    static = {k: v for k, v in x.items() if k not in arrays}
    jitted = jax.jit(lambda a: _call(kernel, {**static, **a}))
    return jitted.lower(arrays) if lower_only else jitted(arrays)


def _slice_all(s: slice):
    """q, k, v, i, f cut to the tokens s along S."""

    def mutate(x: dict) -> None:
        for name in ("q", "k", "v", "i", "f"):
            x[name] = x[name][:, :, s]

    return mutate


def _resized(a, dim: int):
    shape = list(a.shape)
    shape[dim] += 1
    return jnp.ones(shape, a.dtype)


def _is_exp(kernel: Kernel) -> bool:
    return kernel.cell == "exp"


def _is_chunkwise(kernel: Kernel) -> bool:
    return kernel.form == "chunkwise"


def _is_sequence(kernel: Kernel) -> bool:
    return kernel.form == "sequence"


def _torch_tensor(a):
    return torch.tensor(np.asarray(a))


SEQUENCE_CASES = [
    Case("q-rank3", set_input("q", lambda a: a[..., 0]), r"^q\b.*4 dimensions"),
    Case("k-rank5", set_input("k", lambda a: a[None]), r"^k\b.*4 dimensions"),
    Case("v-rank3", set_input("v", lambda a: a[..., 0]), r"^v\b.*4 dimensions"),
    Case("i-rank4", set_input("i", lambda a: a[..., None]), r"^i\b.*3 dimensions"),
    Case("f-rank2", set_input("f", lambda a: a[..., 0]), r"^f\b.*3 dimensions"),
    Case("S0", _slice_all(slice(0, 0)), r"\bS\b.*>= 1"),
    Case("k-S+1", set_input("k", lambda a: _resized(a, 2)), r"^k\b.*shape"),
    Case("v-NH+1", set_input("v", lambda a: _resized(a, 1)), r"^v\b.*shape"),
    Case("i-S+1", set_input("i", lambda a: _resized(a, 2)), r"^i\b.*shape"),
    Case("f-B+1", set_input("f", lambda a: _resized(a, 0)), r"^f\b.*shape"),
    Case("q-int32", set_input("q", lambda a: a.astype(jnp.int32)), r"^q\b.*int32"),
    Case("i-int32", set_input("i", lambda a: a.astype(jnp.int32)), r"^i\b.*int32"),
    Case("v-bool", set_input("v", lambda a: a > 0), r"^v\b.*bool"),
    Case("k-fp32-q-fp64", set_input("k", lambda a: a.astype(jnp.float32)), r"k float32"),
    Case("f-fp32-i-fp64", set_input("f", lambda a: a.astype(jnp.float32)), r"f float32"),
    Case("q-torch", set_input("q", _torch_tensor), r"^q\b.*jax\.Array.*Tensor"),
    Case("k-numpy", set_input("k", np.asarray), r"^k\b.*jax\.Array.*ndarray"),
    Case("i-list", set_input("i", lambda a: np.asarray(a).tolist()), r"^i\b.*jax\.Array.*list"),
    Case("c-torch", set_input("c_initial", _torch_tensor), r"^c_initial\b.*jax\.Array.*Tensor"),
    Case("c-rank3", set_input("c_initial", lambda a: a[..., 0]), r"^c_initial\b.*4 dimensions"),
    Case("c-DHHV+1", set_input("c_initial", lambda a: _resized(a, 3)), r"^c_initial\b.*shape"),
    Case("n-DHQK+1", set_input("n_initial", lambda a: _resized(a, 2)), r"^n_initial\b.*shape"),
    Case("m-B.NH.2", set_input("m_initial", lambda a: _resized(a, 2)), r"^m_initial\b.*shape", _is_exp),
    Case("n-int32", set_input("n_initial", lambda a: a.astype(jnp.int32)), r"^n_initial\b.*int32"),
    Case("n-fp32-c-fp64", set_input("n_initial", lambda a: a.astype(jnp.float32)), r"c_initial and n_initial.*dtype"),
    Case("c-only", drop("n_initial", "m_initial"), r"c_initial, n_initial and m_initial", _is_exp),
    Case("c-n-no-m", drop("m_initial"), r"c_initial, n_initial and m_initial", _is_exp),
    Case("m-only", drop("c_initial", "n_initial"), r"c_initial, n_initial and m_initial", _is_exp),
    Case("sig-c-only", drop("n_initial"), r"c_initial and n_initial", lambda k: k.cell == "sig"),
    Case("eps-negative", set_kw("eps", -1e-3), r"\beps\b"),
    Case("eps-nan", set_kw("eps", math.nan), r"\beps\b"),
    Case("chunk_size-0", set_kw("chunk_size", 0), r"\bchunk_size\b", _is_chunkwise),
    Case("chunk_size-2.5", set_kw("chunk_size", 2.5), r"\bchunk_size\b", _is_chunkwise),
    Case("dtype_state-int32", set_kw("dtype_state", jnp.int32), r"\bdtype_state\b", _is_sequence),
]
STEP_CASES = [
    Case("q-rank4", set_input("q", lambda a: a[:, :, None]), r"^q\b.*3 dimensions"),
    Case("v-rank2", set_input("v", lambda a: a[0]), r"^v\b.*3 dimensions"),
    Case("k-DHQK+1", set_input("k", lambda a: _resized(a, 2)), r"^k\b.*shape"),
    Case("i-B.NH.2", set_input("i", lambda a: _resized(a, 2)), r"^i\b.*shape"),
    Case("q-int32", set_input("q", lambda a: a.astype(jnp.int32)), r"^q\b.*int32"),
    Case("f-int32", set_input("f", lambda a: a.astype(jnp.int32)), r"^f\b.*int32"),
    Case("v-fp32-q-fp64", set_input("v", lambda a: a.astype(jnp.float32)), r"v float32"),
    Case("q-torch", set_input("q", _torch_tensor), r"^q\b.*jax\.Array.*Tensor"),
    Case("c-numpy", set_input("c", np.asarray), r"^c\b.*jax\.Array.*ndarray"),
    Case("c-DHHV+1", set_input("c", lambda a: _resized(a, 3)), r"^c\b.*shape"),
    Case("m-NH+1", set_input("m", lambda a: _resized(a, 1)), r"^m\b.*shape"),
    Case("n-fp32-c-fp64", set_input("n", lambda a: a.astype(jnp.float32)), r"\bc and n\b.*dtype"),
    Case("c-only", drop("n", "m"), r"\bc, n and m\b"),
    Case("m-only", drop("c", "n"), r"\bc, n and m\b"),
    Case("eps-inf", set_kw("eps", math.inf), r"\beps\b"),
    Case("dtype_state-int32", set_kw("dtype_state", jnp.int32), r"\bdtype_state\b"),
    Case("inplace", set_kw("inplace", True), r"\binplace\b"),
]
BAD_CASES = [(k, c) for k in BAD_KERNELS if k.form != "step" for c in SEQUENCE_CASES if c.applies(k)]
BAD_CASES += [(k, c) for k in BAD_KERNELS if k.form == "step" for c in STEP_CASES]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("kernel", BAD_KERNELS, ids=[k.name for k in BAD_KERNELS])
def test_valid_baseline_runs(kernel, jit):
    """The unmutated inputs of the bad-input table are valid (under jit: they trace and lower), so each failure
    below comes from its one mutation."""
    x = _valid(kernel)
    if jit:
        _call_jit(kernel, x, lower_only=True)
        return
    h, states = _call(kernel, x)
    assert bool(jnp.isfinite(h).all())
    assert len([s for s in states if s is not None]) == (3 if kernel.cell == "exp" else 2)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("kernel,case", BAD_CASES, ids=[f"{k.name}-{c.id}" for k, c in BAD_CASES])
def test_bad_input_raises(kernel, case, jit):
    x = _valid(kernel)
    case.mutate(x)
    with pytest.raises(MLSTMInputError, match=case.match) as info:
        (_call_jit if jit else _call)(kernel, x)
    assert isinstance(info.value, ValueError)


REGISTRIES = {
    "kernel": (jax_api.get_mlstm_kernel, jax_api.get_available_mlstm_kernels),
    "step": (jax_api.get_mlstm_step_kernel, jax_api.get_available_mlstm_step_kernels),
    "sequence": (jax_api.get_mlstm_sequence_kernel, jax_api.get_available_mlstm_sequence_kernels),
}
UNKNOWN_NAMES = [
    ("kernel", "nope"),
    ("kernel", "chunkwise--nope"),
    ("kernel", "chunkwise--native_custbw--x"),
    ("kernel", "native_custbw"),
    ("kernel", None),
    ("step", "Native"),
    ("step", "chunkwise--native_custbw"),
    ("step", None),
    ("sequence", "native"),
    ("sequence", ["native_sequence__native"]),
]


@pytest.mark.parametrize("registry,name", UNKNOWN_NAMES, ids=[f"{r}-{n!r}" for r, n in UNKNOWN_NAMES])
def test_unknown_kernel_name(registry, name):
    getter, available = REGISTRIES[registry]
    known = available()
    assert known, f"the {registry} registry is empty"
    with pytest.raises(ValueError) as info:
        getter(name)
    missing = [n for n in known if n not in str(info.value)]
    assert not missing, f"the message does not list {missing}: {info.value}"


# ---------------------------------------------------------------------------------------------------------------
# The compensated prefix sum of the non-stable-f parallel kernels
# ---------------------------------------------------------------------------------------------------------------


def test_compensated_prefix_sum():
    """_prefix_sum on 65536 float32 log forget gates (log-sigmoid of N(2, 1)) against a float64 cumulative sum: the
    pair (hi, lo) holds each prefix sum F_t to far below a float32 ulp, and segment sums F_t - F_j formed from the
    pairs in float32 (as the kernels form them) are within 1-2 ulps of the segment, while the same segments from a
    plain float32 cumulative sum are off by thousands of ulps."""
    rng = np.random.default_rng(2024)
    z = rng.normal(2.0, 1.0, 65536)
    x = (-np.logaddexp(0.0, -z)).astype(np.float32)
    exact = np.cumsum(x.astype(np.float64))
    hi, lo = jax.jit(_prefix_sum)(jnp.asarray(x))
    assert hi.dtype == lo.dtype == jnp.float32
    hi, lo = np.asarray(hi), np.asarray(lo)
    plain = np.asarray(jnp.cumsum(jnp.asarray(x)))

    def ulps(approx, ref):
        return np.abs(approx.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)

    assert ulps(hi.astype(np.float64) + lo, exact).max() <= 1e-2
    assert ulps(plain, exact).max() >= 0.5  # no single float32 holds every prefix sum exactly
    for width in (1, 64):
        segment = exact[width:] - exact[:-width]
        compensated = (hi[width:] - hi[:-width]) + (lo[width:] - lo[:-width])
        assert compensated.dtype == np.float32
        assert ulps(compensated, segment).max() <= 2.0, width
        assert ulps(plain[width:] - plain[:-width], segment).max() >= 1000.0, width
