"""The registry entries served by generated kernels, through the public API (interpreter on the CPU): outputs and
last states against the oracle, exact gradients (the generated backward), pieces with states handed along."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_LIMIT_FP64, SHAPES, conditioning_limits

from autotune.checks import MLSTMInputError
from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch import get_available_mlstm_kernels, get_mlstm_kernel, registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = [n for n in get_available_mlstm_kernels() if "--triton" in n]
SHAPE = SHAPES[3]  # B1-NH2-S65-DQK32-DV32


def _inputs(name, dtype, with_states=True, S=None):
    dims = list(SHAPE.dims())
    if S is not None:
        dims[2] = S
    x = random_inputs(*dims, dtype=dtype, with_states=with_states, max_outlier=8.0 if dtype == torch.float16 else 20.0)
    if registry.kernel_cell(name) == "sig":
        x.pop("m_initial", None)
    return {k: v.to(DEVICE) for k, v in x.items()}


def _oracle(x, cell):
    h, states = mlstm_recurrent(**{k: v.double().cpu() for k, v in x.items()}, cell=cell, return_last_states=True)
    return dict(zip(["h", "C", "n", "m"], (h, *states)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", TRITON)
def test_entry_forward(name, dtype, check):
    cell = registry.kernel_cell(name)
    x = _inputs(name, dtype)
    h, states = get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=16)
    assert h.dtype == dtype and len(states) == (3 if cell == "exp" else 2)
    ref = _oracle(x, cell)
    out = dict(zip(["h", "C", "n", "m"], (h, *states)))
    check(target=name, baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(), dtype=dtype,
          pairs={k: (out[k], ref[k]) for k in ref},
          limit=conditioning_limits(dtype, lambda x64: _oracle(x64, cell), x))  # fmt: skip


@pytest.mark.parametrize("name", TRITON)
def test_entry_gradients_fp32(name, check):
    """fp32 inputs: Triton forward, exact backward; gradients of a random linear loss on h and the last states."""
    cell = registry.kernel_cell(name)
    x = _inputs(name, torch.float32)
    xk = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    h, states = get_mlstm_kernel(name)(**xk, return_last_states=True, chunk_size=16)
    weights = [torch.randn_like(h)] + [torch.randn_like(s) for s in states]
    loss = (h * weights[0]).sum() + sum((s * w).sum() for s, w in zip(states, weights[1:]))
    grads = torch.autograd.grad(loss, list(xk.values()))

    def oracle_grads(x64):
        x64 = {k: v.double().cpu().requires_grad_(True) for k, v in x64.items()}
        ref = _oracle(x64, cell)
        refs = [ref["h"], ref["C"], ref["n"]] + ([ref["m"]] if cell == "exp" else [])
        loss = sum((r * w.double().cpu()).sum() for r, w in zip(refs, weights))
        return {f"d{k}": g for k, g in zip(x64, torch.autograd.grad(loss, list(x64.values())))}

    ref = oracle_grads(x)
    check(target=f"{name} backward", baseline="autograd through reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float32, pairs={f"d{k}": (g, ref[f"d{k}"]) for k, g in zip(xk, grads)},
          limit=conditioning_limits(torch.float32, oracle_grads, x))  # fmt: skip


@pytest.mark.parametrize("name", [n for n in TRITON if n.startswith("chunkwise")][:2])
def test_entry_fp64_falls_back_to_exact_native(name, check):
    x = _inputs(name, torch.float64)
    h, states = get_mlstm_kernel(name)(**x, return_last_states=True, chunk_size=16)
    ref = _oracle(x, "exp")
    check(target=f"{name} (fp64 -> native)", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
          dtype=torch.float64, pairs={k: (o, ref[k]) for k, o in zip(["h", "C", "n", "m"], (h, *states))},
          limit=GRAD_LIMIT_FP64)  # fmt: skip


@pytest.mark.parametrize("name", TRITON)
def test_entry_pieces_equal_one_call(name, check):
    x = _inputs(name, torch.float32, S=70)
    init = {k: x.pop(k) for k in list(x) if k.endswith("initial")}
    fn = get_mlstm_kernel(name)
    h_one, states_one = fn(**x, **init, return_last_states=True, chunk_size=16)
    hs, states, start = [], tuple(init.values()), 0
    for size in (33, 1, 36):
        piece = {k: v[:, :, start : start + size] for k, v in x.items()}
        h, states = fn(**piece, **dict(zip(["c_initial", "n_initial", "m_initial"], states)), return_last_states=True,
                       chunk_size=16)  # fmt: skip
        hs.append(h)
        start += size
    check(target=f"{name} over pieces 33+1+36", baseline=f"{name} in one call", dims=(1, 2, 70, 32, 32),
          dtype=torch.float32, pairs=dict(zip(["h", "C", "n", "m"], zip((torch.cat(hs, 2), *states),
                                                                         (h_one, *states_one)))),
          limit=1e-5)  # fmt: skip


@pytest.mark.parametrize("chunk_size", [0, 8, 48, 100])
def test_entry_rejects_chunk_sizes_triton_cannot_tile(chunk_size):
    x = _inputs("chunkwise--triton_xl_chunk", torch.float32)
    with pytest.raises(MLSTMInputError, match="chunk_size"):
        get_mlstm_kernel("chunkwise--triton_xl_chunk")(**x, chunk_size=chunk_size)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_entry_without_gpu_or_interpreter_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = _inputs("chunkwise--triton_fused", torch.float32)
    with pytest.raises(MLSTMInputError, match="CUDA"):
        get_mlstm_kernel("chunkwise--triton_fused")(**x)


@pytest.fixture
def user_db(tmp_path, monkeypatch):
    """A fresh user database directory for the process-wide dispatcher."""
    from autotune.dispatch import dispatcher

    monkeypatch.setenv("MLSTM_AUTOTUNE_DB", str(tmp_path))
    dispatcher().reset()
    yield tmp_path
    dispatcher().reset()


def _record_launches(monkeypatch):
    from autotune.launch import chunkwise as launch_chunkwise

    calls, real = [], launch_chunkwise.chunkwise_fw

    def recording(*args, **kwargs):
        calls.append((kwargs["variant"].name, dict(kwargs["config"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(launch_chunkwise, "chunkwise_fw", recording)
    return calls


def _tuned_entry(variant: str, config: dict, S=65, BNH=2):
    from autotune import db as tdb

    key = tdb.Key("chunkwise:exp", "fw", "float32", 32, 32, tdb.bucket(S), tdb.bucket(BNH), variant.split("__")[0])
    return tdb.Entry(key, variant, config, {"p50_ms": 1.0})


def test_entries_follow_the_tuning_database(user_db, monkeypatch, check):
    from autotune import db as tdb

    chosen = {"chunk": 32, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}
    tdb.upsert(user_db / tdb.file_name("cpu-interpreter"), "cpu-interpreter", (0, 0),
               [_tuned_entry("chunkwise_fused_fw__cell-exp_state-input", chosen)])  # fmt: skip
    calls = _record_launches(monkeypatch)
    x = _inputs("chunkwise--triton_auto", torch.float32)
    h = get_mlstm_kernel("chunkwise--triton_auto")(**x, chunk_size=16)
    assert calls == [("chunkwise_fused_fw__cell-exp_state-input", chosen)]
    # a named two-pass entry ignores the fused winner and keeps to its structure (its default here)
    get_mlstm_kernel("chunkwise--triton_xl_chunk")(**x, chunk_size=16)
    assert calls[-1][0].startswith("chunkwise_twopass_fw") and calls[-1][1]["chunk_intra"] == 16
    ref = _oracle(x, "exp")
    check(target="chunkwise--triton_auto (database choice)", baseline="reference.mlstm_recurrent(fp64)",
          dims=SHAPE.dims(), dtype=torch.float32, pairs={"h": (h, ref["h"])},
          limit=conditioning_limits(torch.float32, lambda x64: {"h": _oracle(x64, "exp")["h"]}, x))  # fmt: skip


def test_a_bad_database_entry_falls_back_to_the_default(user_db, monkeypatch):
    from autotune import db as tdb

    bad = {"chunk": 24, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}  # 24 is not a power of two
    tdb.upsert(user_db / tdb.file_name("cpu-interpreter"), "cpu-interpreter", (0, 0),
               [_tuned_entry("chunkwise_fused_fw__cell-exp_state-input", bad)])  # fmt: skip
    calls = _record_launches(monkeypatch)
    x = _inputs("chunkwise--triton_auto", torch.float32)
    with pytest.warns(UserWarning, match="built-in default"):
        h = get_mlstm_kernel("chunkwise--triton_auto")(**x, chunk_size=16)
    assert bool(torch.isfinite(h).all()) and calls[-1][1] != bad


def test_dispatch_can_be_switched_off(user_db, monkeypatch):
    from autotune import db as tdb

    tdb.upsert(user_db / tdb.file_name("cpu-interpreter"), "cpu-interpreter", (0, 0),
               [_tuned_entry("chunkwise_fused_fw__cell-exp_state-input",
                             {"chunk": 32, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1})])  # fmt: skip
    monkeypatch.setenv("MLSTM_AUTOTUNE_DISPATCH", "0")
    calls = _record_launches(monkeypatch)
    get_mlstm_kernel("chunkwise--triton_auto")(**_inputs("chunkwise--triton_auto", torch.float32), chunk_size=16)
    assert calls[-1][0].startswith("chunkwise_twopass_fw")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_untuned_entries_keep_16_bit_states_in_two_parts(dtype, user_db, monkeypatch, check):
    """With no database entry, a chunkwise entry runs its built-in default: for 16-bit inputs the two-pass forward
    stores its chunk states as planes and the fused forward reads its fp32 state in two 16-bit parts (16-bit
    states every 64 tokens failed the gate on an H100, docs/hazards.md §4); fp32 inputs keep states in their own
    dtype. Each run is within the fp64 oracle's conditioning limit."""
    calls = _record_launches(monkeypatch)
    x = _inputs("chunkwise--triton_auto", dtype)
    expected = {"chunkwise--triton_auto": "chunkwise_twopass_fw", "chunkwise--triton_fused": "chunkwise_fused_fw"}
    state = {"chunkwise_twopass_fw": "planes", "chunkwise_fused_fw": "float32"} if dtype == torch.float16 else {}
    ref = _oracle(x, "exp")
    for name, structure in expected.items():
        h = get_mlstm_kernel(name)(**x, chunk_size=16)
        assert calls[-1][0] == f"{structure}__cell-exp_state-{state.get(structure, 'input')}"
        check(target=f"{name} (built-in default)", baseline="reference.mlstm_recurrent(fp64)", dims=SHAPE.dims(),
              dtype=dtype, pairs={"h": (h, ref["h"])},
              limit=conditioning_limits(dtype, lambda x64: {"h": _oracle(x64, "exp")["h"]}, x))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_untuned_fp32_calls_take_chunks_of_at_most_64_tokens(dtype, user_db, monkeypatch, check):
    """A chunk_size above 64 sets the built-in default's chunk for 16-bit inputs only: fp32 within-chunk products run
    on the FMA path, where a 128-token chunk took 30-110 s to compile for sm_90 (triton_choice.FMA_CHUNK). The call
    runs the 64-token configuration and stays within the oracle's limit."""
    from autotune.torch.triton_kernels import explain

    want = 64 if dtype == torch.float32 else 128
    for name, key in (("chunkwise--triton_xl_chunk", "chunk_intra"), ("chunkwise--triton_fused", "chunk")):
        _, choice = explain(name, dtype=dtype, B=1, NH=2, S=300, DHQK=32, DHHV=32, chunk_size=128,
                            gpu="cpu-interpreter", capability=(0, 0))  # fmt: skip
        assert choice.config[key] == want, (name, choice.config)
        if key == "chunk_intra":  # xl_chunk's states every 64 tokens, whatever the chunk
            assert choice.config["chunk_inter"] == 64, choice.config
    calls = _record_launches(monkeypatch)
    x = _inputs("chunkwise--triton_xl_chunk", dtype, S=200)
    h = get_mlstm_kernel("chunkwise--triton_xl_chunk")(**x, chunk_size=128)
    assert calls[-1][1]["chunk_intra"] == want
    check(target="chunkwise--triton_xl_chunk (chunk_size=128)", baseline="reference.mlstm_recurrent(fp64)",
          dims=(1, 2, 200, 32, 32), dtype=dtype, pairs={"h": (h, _oracle(x, "exp")["h"])},
          limit=conditioning_limits(dtype, lambda x64: {"h": _oracle(x64, "exp")["h"]}, x))  # fmt: skip


@pytest.mark.parametrize("dtype, state", [(torch.bfloat16, "planes"), (torch.float32, "input")], ids=["bf16", "fp32"])
def test_show_names_the_default_a_call_of_that_dtype_runs(dtype, state, user_db):
    """`mlstm-tune show` (triton_kernels.explain) answers with the built-in default of the call's dtype: planes for
    16-bit inputs, the inputs' dtype for fp32 (where planes are not a valid variant)."""
    from autotune.torch.triton_kernels import explain

    request, choice = explain("chunkwise--triton_auto", dtype=dtype, B=1, NH=2, S=65, DHQK=32, DHHV=32,
                              gpu="cpu-interpreter", capability=(0, 0))  # fmt: skip
    assert (choice.rung, choice.variant) == ("default", f"chunkwise_twopass_fw__cell-exp_state-{state}")
