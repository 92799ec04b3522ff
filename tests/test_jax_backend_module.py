"""``autotune.jax.backend_module`` (the Flax module): config validation, every mode against the fp64 oracle, state
dtypes, prefill followed by steps, gradients through train mode, the same results as the PyTorch module, and
``import autotune`` without JAX."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import GRAD_LIMIT_FP64, LIMITS, REPO, Shape

from autotune.reference import mlstm_recurrent, random_inputs

jax = pytest.importorskip("jax", reason="autotune.jax needs the jax extra (CI installs it: .ci/run)")
pytest.importorskip("flax", reason="the Flax module needs the jax extra (CI installs it: .ci/run)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from autotune.jax.backend_module import mLSTMBackend, mLSTMBackendConfig  # noqa: E402
from autotune.torch import backend_module as torch_backend  # noqa: E402

CHUNK = 16
KERNELS = {"chunkwise--native_custbw": "exp", "parallel--native_stablef_custbw": "exp",
           "parallel--native_siging_custbw": "sig"}  # fmt: skip
MODES = ["train", "train_with_padding", "inference"]
SEQ_LENS = [1, 7, 40]  # one token; shorter than a chunk; two chunks and a tail


def shape(S: int) -> Shape:
    return Shape(B=1, NH=2, S=S, DHQK=8, DHHV=12)


def inputs(cell: str, S: int, *, with_states: bool = False) -> dict[str, torch.Tensor]:
    x = random_inputs(*shape(S).dims(), dtype=torch.float64, with_states=with_states)
    if cell == "sig":
        x.pop("m_initial", None)
    return x


def to_jax(x: dict) -> dict:
    return {k: jnp.asarray(v.detach().numpy()) for k, v in x.items()}


def to_torch(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a.astype(jnp.float64) if a.dtype != jnp.float64 else a).copy())


def oracle(x: dict, cell: str):
    return mlstm_recurrent(**{k: t.detach().double() for k, t in x.items()}, cell=cell, return_last_states=True)


def module(name: str, **config) -> mLSTMBackend:
    return mLSTMBackend(mLSTMBackendConfig(chunkwise_kernel=name, chunk_size=CHUNK, **config))


def state_names(cell: str) -> list[str]:
    return ["C_last", "n_last", "m_last"] if cell == "exp" else ["C_last", "n_last"]


BAD_CONFIGS = [
    ("chunkwise_kernel", "chunkwise--nope"),
    ("chunkwise_kernel", "native"),
    ("sequence_kernel", "nope"),
    ("step_kernel", "nope"),
    ("mode", "eval"),
    ("chunk_size", 0),
    ("chunk_size", True),
    ("autocast_kernel_dtype", "float64"),
    ("inference_state_dtype", "int8"),
    ("inference_state_dtype", None),
    ("eps", -1.0),
    ("eps", float("nan")),
    ("return_last_states", 1),
    ("normalize_siging", "no"),
]


@pytest.mark.parametrize("field,value", BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v in BAD_CONFIGS])
def test_bad_config_raises_at_construction(field, value):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        mLSTMBackendConfig(**{field: value})


def test_module_needs_a_config_and_a_known_mode():
    with pytest.raises(ValueError, match="mLSTMBackendConfig"):
        mLSTMBackend({"chunkwise_kernel": "chunkwise--native_custbw"})
    x = to_jax(inputs("exp", 7))
    with pytest.raises(ValueError, match=r"\bmode\b"):
        module("chunkwise--native_custbw").apply({}, **x, mode="eval")


MODE_CASES = [(n, mode, s, S) for n in KERNELS for mode in MODES for s in (False, True) for S in SEQ_LENS]


@pytest.mark.parametrize("name,mode,with_states,S", MODE_CASES,
                         ids=[f"{n}-{m}-{'state' if s else 'nostate'}-S{S}" for n, m, s, S in MODE_CASES])  # fmt: skip
def test_mode_matches_oracle(name, mode, with_states, S, check):
    cell = KERNELS[name]
    x = inputs(cell, S, with_states=with_states)
    h, states = module(name, mode=mode).apply({}, **to_jax(x))
    h_ref, states_ref = oracle(x, cell)
    assert len(states) == len(states_ref), f"{cell} cell returns {len(states_ref)} states, got {len(states)}"
    assert h.dtype == jnp.float64 and all(s.dtype == jnp.float64 for s in states)
    pairs = {"h": (to_torch(h), h_ref), **dict(zip(state_names(cell), zip(map(to_torch, states), states_ref)))}
    check(target=f"jax mLSTMBackend({name}, mode={mode})", baseline="reference.mlstm_recurrent(fp64)",
          dims=shape(S).dims(), dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("name", list(KERNELS))
def test_prefill_then_steps_under_jit(name, check):
    """Inference as a generation loop runs it: a jitted prefill of 33 tokens (two chunks, then the sequence kernel
    for one), then jitted one-token steps carrying the state; equal to the oracle over the whole sequence."""
    cell = KERNELS[name]
    S = 40
    x = inputs(cell, S, with_states=True)
    xj = to_jax(x)
    mod = module(name, mode="inference")
    keys = ["q", "k", "v", "i", "f"]
    prefill = jax.jit(lambda seq, states: mod.apply({}, *seq, *states))
    step = jax.jit(lambda tok, states: mod.apply({}, *tok, *states))
    init = [xj[k] for k in ("c_initial", "n_initial", "m_initial") if k in xj]
    h, states = prefill([xj[k][:, :, :33] for k in keys], init)
    hs = [h]
    for t in range(33, S):
        h, states = step([xj[k][:, :, t : t + 1] for k in keys], list(states))
        hs.append(h)
    h_ref, states_ref = oracle(x, cell)
    pairs = {"h": (to_torch(jnp.concatenate(hs, axis=2)), h_ref),
             **dict(zip(state_names(cell), zip(map(to_torch, states), states_ref)))}  # fmt: skip
    check(target=f"jax mLSTMBackend({name}) prefill + steps", baseline="reference.mlstm_recurrent(fp64)",
          dims=shape(S).dims(), dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float32"])
def test_inference_state_dtypes(state_dtype):
    """16-bit inputs: C and n come back in inference_state_dtype, m in float32, h in the input dtype."""
    x = {k: v.astype(jnp.bfloat16) for k, v in to_jax(inputs("exp", 40)).items()}
    for S in (1, 40):
        xs = {k: v[:, :, :S] for k, v in x.items()}
        h, (C, n, m) = module("chunkwise--native_custbw", inference_state_dtype=state_dtype).apply(
            {}, **xs, mode="inference"
        )
        assert h.dtype == jnp.bfloat16 and h.shape == (1, 2, S, 12)
        assert C.dtype == n.dtype == jnp.dtype(state_dtype) and m.dtype == jnp.float32 and m.shape == (1, 2, 1)


@pytest.mark.parametrize("name", list(KERNELS))
def test_train_gradients_match_oracle(name, check):
    """jax.grad through the module in train mode: every input and initial state, against torch autograd through
    the fp64 oracle for the same random linear loss on h and the last states."""
    cell = KERNELS[name]
    S = 40
    x = inputs(cell, S, with_states=True)
    h_ref, states_ref = mlstm_recurrent(**{k: v.requires_grad_(True) for k, v in x.items()}, cell=cell,
                                        return_last_states=True)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in (h_ref, *states_ref)]
    loss_ref = sum((t * w).sum() for t, w in zip((h_ref, *states_ref), weights))
    grads_ref = torch.autograd.grad(loss_ref, list(x.values()))
    mod = module(name, mode="train")
    wj = [jnp.asarray(w.numpy()) for w in weights]

    def loss(xj):
        h, states = mod.apply({}, **xj)
        return sum((t * w).sum() for t, w in zip((h, *states), wj))

    grads = jax.jit(jax.grad(loss))(to_jax(x))
    pairs = {f"d{k}": (to_torch(grads[k]), g) for k, g in zip(x, grads_ref)}
    check(target=f"jax.grad through jax mLSTMBackend({name})", baseline="autograd through reference.mlstm_recurrent"
          "(fp64)", dims=shape(S).dims(), dtype=torch.float64, pairs=pairs, limit=GRAD_LIMIT_FP64)  # fmt: skip


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_same_results_as_the_pytorch_module(mode, check):
    x = inputs("exp", 40, with_states=True)
    cfg = dict(chunkwise_kernel="chunkwise--native_custbw", chunk_size=CHUNK, mode=mode)
    h, states = mLSTMBackend(mLSTMBackendConfig(**cfg)).apply({}, **to_jax(x))
    h_t, states_t = torch_backend.mLSTMBackend(torch_backend.mLSTMBackendConfig(**cfg))(**x)
    pairs = {"h": (to_torch(h), h_t), **dict(zip(state_names("exp"), zip(map(to_torch, states), states_t)))}
    check(target=f"jax mLSTMBackend(mode={mode})", baseline="autotune.torch mLSTMBackend", dims=shape(40).dims(),
          dtype=torch.float64, pairs=pairs, limit=LIMITS[torch.float64])  # fmt: skip


def test_autotune_imports_without_jax():
    """``import autotune`` and the PyTorch API never need JAX; autotune.jax without it names the extra."""
    code = (
        "import sys\n"
        "for name in ('jax', 'flax', 'jax_triton'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import autotune, autotune.torch, autotune.dispatch, autotune.cli\n"
        "try:\n"
        "    import autotune.jax\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        "else:\n"
        "    raise SystemExit('autotune.jax imported without jax')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'mlstm-autotune[jax]'" in out.stdout, out.stdout


def test_the_jax_kernels_refuse_packed_sequences():
    """autotune.jax has no cu_seqlens yet: a kernel says so instead of ignoring it (its **kwargs would take it)."""
    import jax.numpy as jnp

    from autotune.jax import MLSTMInputError, get_mlstm_kernel

    x = jnp.ones((1, 2, 8, 4))
    for name in ("chunkwise--native_custbw", "parallel--native_custbw"):
        with pytest.raises(MLSTMInputError, match="cu_seqlens"):
            get_mlstm_kernel(name)(x, x, x, x[..., 0], x[..., 0], cu_seqlens=jnp.array([0, 8]))
