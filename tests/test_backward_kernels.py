"""The generated chunkwise backward (templates/chunkwise_bw.py.j2) against autograd through the float64 recurrent
oracle (docs/math.md §6-§7): a random linear loss on h and on the last states, every input's gradient, fresh random
inputs, outputs poisoned with NaN before the kernels run. On the CPU this runs under Triton's interpreter, in fp32
(and fp16 on a few shapes).

Limits: those of docs/math.md, widened where the problem is ill-conditioned. Besides the input-rounding estimate of
helpers.conditioning_limits, an fp32 check allows 10x the error of the same exact gradient formulas evaluated by
the native PyTorch backward in fp32 (itself checked to 1e-10 in fp64 by test_native_kernels), and 10x the error of
the kernels' own decomposition evaluated in PyTorch fp32 (tests/backward_decomposition.py; checked here to equal
the native backward in fp64). Examples: with |s_t| >= floor the output is invariant to scaling q_t, so for S=1 dq is
of order eps and is the difference of two O(1) terms, in any fp32 evaluation (measured: 4e-2 relative)."""

from __future__ import annotations

import pytest
import torch
from backward_decomposition import decomposed_backward
from helpers import (
    GRAD_LIMIT_FP64,
    MAX_OUTLIER,
    SHAPES,
    Shape,
    chunkwise_bw_config,
    conditioning_limits,
    rel_err,
    widened_by,
)

from autotune import families
from autotune.launch import chunkwise as launch_fw
from autotune.launch import chunkwise_bw as launch_bw
from autotune.launch import parallel as launch_parallel
from autotune.launch import parallel_bw as launch_pbw
from autotune.reference import mlstm_recurrent, random_inputs
from autotune.torch.native.chunkwise import _chunkwise_kernel
from autotune.variants import VARIANTS, find

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKWARD = [v for v in VARIANTS if v.family in ("chunkwise_bw", "parallel_bw")]
NAMES = ("q", "k", "v", "i", "f", "c_initial", "n_initial", "m_initial")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MLSTM_AUTOTUNE_POISON", "1")


def _inputs(shape: Shape, cell: str, with_states: bool, dtype=torch.float32):
    x = random_inputs(*shape.dims(), dtype=dtype, with_states=with_states, max_outlier=MAX_OUTLIER.get(dtype, 20.0))
    if cell == "sig":
        x.pop("m_initial", None)
    return {k: v.to(DEVICE) for k, v in x.items()}


def _weights(shape: Shape, cell: str, with_last: bool):
    B, NH, S, DHQK, DHHV = shape.dims()
    w = {"h": torch.randn(B, NH, S, DHHV, dtype=torch.float64)}
    if with_last:
        w.update(C=torch.randn(B, NH, DHQK, DHHV, dtype=torch.float64), n=torch.randn(B, NH, DHQK, dtype=torch.float64))
        if cell == "exp":
            w["m"] = torch.randn(B, NH, 1, dtype=torch.float64)
    return w


def _oracle_grads(cell: str, weights: dict):
    """x (float64) -> gradients of sum(out * weight) over h and the last states, by autograd through the oracle."""

    def grads(x64):
        x64 = {k: v.double().cpu().requires_grad_(True) for k, v in x64.items()}
        h, states = mlstm_recurrent(**x64, cell=cell, return_last_states=True)
        outs = dict(zip(("h", "C", "n", "m"), (h, *states)))
        loss = sum((outs[k] * w).sum() for k, w in weights.items())
        return {f"d{k}": g for k, g in zip(x64, torch.autograd.grad(loss, list(x64.values())))}

    return grads


def _run(x: dict, weights: dict, *, cell: str, forward: str, fw_config: dict, bw_variant, bw_config: dict,
         fw_state: str = "float32"):  # fmt: skip
    """Generated forward (keeping what the backward needs; a chunkwise one storing states in the form ``fw_state``),
    then the generated backward."""
    args = [x.get(n) for n in NAMES]
    B, NH = x["q"].shape[:2]
    reuse = bw_config.get("states") == "reuse"
    saved = {"borders_at": families.canonical(launch_bw.TEMPLATE, bw_config)["chunk"]} if reuse else {}
    with_last = "C" in weights
    if forward == "parallel":
        variant = find("parallel_fw.py.j2", cell=cell)
        h, last = launch_parallel.parallel_fw(*args, variant=variant, config=fw_config, return_last_states=with_last,
                                              saved=saved)  # fmt: skip
    else:
        variant = find(forward, cell=cell, state=fw_state)
        h, last = launch_fw.chunkwise_fw(*args, variant=variant, config=fw_config, return_last_states=with_last,
                                         saved=saved)  # fmt: skip
    dh = weights["h"].to(x["q"].dtype).to(DEVICE)
    dlast = [None, None, None]
    if with_last:
        m = weights["m"].float() if cell == "exp" else torch.zeros(B, NH, 1)
        dlast = [weights["C"].float().to(DEVICE), weights["n"].float().to(DEVICE), m.to(DEVICE)]
    borders = (saved["Cb"], saved["nb"], saved["mb"]) if "Cb" in saved else None
    launcher = launch_bw.chunkwise_bw if bw_variant.family == "chunkwise_bw" else launch_pbw.parallel_bw
    grads = launcher(
        *args, h, saved["s"], saved["mt"], dh, *dlast, last if with_last else None, variant=bw_variant,
        config=bw_config, borders=borders,
    )  # fmt: skip
    return {f"d{n}": g for n, g in zip(NAMES, grads) if n in x}


def _native_fp32_grads(x: dict, weights: dict, cell: str, normalize: bool = True):
    """The exact gradient formulas in PyTorch fp32 (native chunkwise backward): the rounding baseline."""
    x32 = {k: v.detach().float().cpu().requires_grad_(True) for k, v in x.items()}
    h, states = _chunkwise_kernel(*(x32.get(n) for n in NAMES), True, 1e-6, 16, cell=cell, normalize=normalize,
                                  custom_backward=True)  # fmt: skip
    outs = dict(zip(("h", "C", "n", "m"), (h, *states)))
    loss = sum((outs[k].double() * w).sum() for k, w in weights.items())
    return {f"d{k}": g for k, g in zip(x32, torch.autograd.grad(loss, list(x32.values())))}


def _decomposed(x: dict, weights: dict, cell: str, dtype, normalize: bool = True):
    """The kernels' decomposition in PyTorch (tests/backward_decomposition.py) in ``dtype``, with chunks of 16."""
    xd = {k: v.detach().cpu().to(dtype) for k, v in x.items()}
    B, NH, S, DHQK = xd["q"].shape
    DHHV = xd["v"].shape[-1]
    zeros = torch.zeros(B, NH, DHQK, DHHV, dtype=dtype), torch.zeros(B, NH, DHQK, dtype=dtype)
    states = (xd.get("c_initial", zeros[0]), xd.get("n_initial", zeros[1]),
              xd.get("m_initial", torch.zeros(B, NH, 1, dtype=dtype)))  # fmt: skip
    last = [weights[n].to(dtype) if n in weights else z for n, z in zip("Cnm", (*zeros, states[2] * 0))]
    grads = decomposed_backward(*(xd[n] for n in "qkvif"), *states, weights["h"].to(dtype), *last, L=16, cell=cell,
                                normalize=normalize)  # fmt: skip
    return {f"d{n}": g for n, g in zip(NAMES, grads) if n in x}


def _limits(dtype, oracle, x, weights, cell, ref, normalize=True):
    limits = conditioning_limits(dtype, oracle, x)
    if dtype == torch.float32:
        for baseline in (_native_fp32_grads(x, weights, cell, normalize),
                         _decomposed(x, weights, cell, torch.float32, normalize)):  # fmt: skip
            limits = widened_by(limits, baseline, ref)
    return limits


def _check(check, x, weights, cell, *, target, dims, dtype=torch.float32, **run):
    got = _run(x, weights, cell=cell, **run)
    oracle = _oracle_grads(cell, weights)
    ref = oracle(x)
    check(target=target, baseline="autograd through reference.mlstm_recurrent(fp64)", dims=dims, dtype=dtype,
          pairs={k: (got[k], ref[k]) for k in ref}, limit=_limits(dtype, oracle, x, weights, cell, ref))  # fmt: skip


def _twopass_config(cell: str, chunk_inter: int, chunk_intra: int, *, tile: int | None = 32, dims=(1, 1)) -> dict:
    """The two-pass forward's default configuration (for head dims ``dims``) at these chunks, every tile ``tile``."""
    config = dict(families.default_config(find(launch_fw.TWOPASS, cell=cell, state="float32"), *dims),
                  chunk_inter=chunk_inter, chunk_intra=chunk_intra)  # fmt: skip
    if tile:
        config.update(states_dhqk_tile=tile, states_dhhv_tile=tile, out_dhqk_tile=tile, out_dhhv_tile=tile)
    return config


def _bw_config(variant, DHQK, DHHV, L, states="recompute", tile=32):
    """A backward configuration with chunks (chunkwise) or query/key tiles (parallel) of L tokens."""
    if variant.family == "parallel_bw":
        return dict(families.default_config(variant, DHQK, DHHV), token_tile=L, dhqk_tile=tile, dhhv_tile=tile)
    return chunkwise_bw_config(variant, DHQK, DHHV, L, states, tile)


@pytest.mark.parametrize("case", ["plain", "states"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=[s.id for s in SHAPES[1:]])
def test_decomposition_is_exact_in_fp64(shape, cell, case):
    """The algorithm the kernels implement, in float64, equals autograd through the oracle to 1e-10."""
    x = _inputs(shape, cell, case == "states")
    weights = _weights(shape, cell, case == "states")
    ref = _oracle_grads(cell, weights)(x)
    got = _decomposed(x, weights, cell, torch.float64)
    errors = {k: rel_err(got[k], ref[k]) for k in ref}
    assert all(e <= GRAD_LIMIT_FP64 for e in errors.values()), errors


@pytest.mark.parametrize("case", ["plain", "states"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
@pytest.mark.parametrize("variant", BACKWARD, ids=[v.name for v in BACKWARD])
def test_backward_matches_oracle(variant, shape, case, check):
    """Every backward variant on the docs/math.md §7 shapes: two-pass forward with inter chunks (16) < intra chunks
    (32), backward chunks of 16 with recomputed states (the parallel backward: tiles of 64, several per sequence from
    S=65 on; the interpreter is slow on many small tiles); "plain": no initial state, loss on h only; "states":
    initial states and a loss on the last states too."""
    cell = variant.params["cell"]
    with_states = case == "states"
    x = _inputs(shape, cell, with_states)
    fw_config = _twopass_config(cell, 16, 32)
    L = 16 if variant.family == "chunkwise_bw" else 64
    _check(check, x, _weights(shape, cell, with_states), cell, target=f"{variant.name} L{L}", dims=shape.dims(),
           forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
           bw_config=_bw_config(variant, shape.DHQK, shape.DHHV, L))  # fmt: skip


@pytest.mark.parametrize("states", ["recompute", "reuse"])
@pytest.mark.parametrize("L", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("kernels", ["fused", "split"])
def test_backward_chunk_sizes(kernels, L, states, check):
    """Chunks of 16 ... 256 with S >= 2 x chunk + a partial chunk; the forward's inter chunks (16) < its intra chunks
    (L); "reuse" takes the forward's states before every chunk instead of recomputing them."""
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
    shape = Shape(1, 2, 2 * L + 5, 16, 32)
    x = _inputs(shape, "exp", True)
    fw_config = _twopass_config("exp", 16, L, tile=None, dims=(16, 32))
    _check(check, x, _weights(shape, "exp", True), "exp", target=f"{variant.name} L{L} {states}", dims=shape.dims(),
           forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
           bw_config=_bw_config(variant, 16, 32, L, states, tile=16))  # fmt: skip


@pytest.mark.parametrize("states_n", ["sum", "dot"])
@pytest.mark.parametrize("kernels", ["fused", "split"])
def test_backward_recomputes_states_with_k_transposed_weighted(kernels, states_n, check):
    """A backward recomputing its states with "states_weighting": "kT" (k^T weighted where it is loaded; two value
    tiles: with n reduced only the first one's programs form it, with n on the tensor cores every program does):
    S = 37 ends in a partial chunk, with initial states and a loss on the last states."""
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels)
    shape = Shape(1, 2, 37, 16, 32)
    x = _inputs(shape, "exp", True)
    fw_config = _twopass_config("exp", 16, 16, tile=None, dims=(16, 32))
    bw_config = dict(_bw_config(variant, 16, 32, 16, "recompute", tile=16), states_weighting="kT", states_n=states_n)
    _check(check, x, _weights(shape, "exp", True), "exp", target=f"{variant.name} recompute kT n {states_n}",
           dims=shape.dims(),
           forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant, bw_config=bw_config)  # fmt: skip


@pytest.mark.parametrize("case", ["plain", "states"])
@pytest.mark.parametrize("cell", ["exp", "sig"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[4]], ids=[SHAPES[2].id, SHAPES[4].id])
def test_reverse_recurrence_with_its_weights_computed_first(shape, cell, case, check):
    """ "dstate_gates": "pre": every chunk's weights of the reverse recurrence (D0 scale r, D0 scale ds, decay) come
    from bw_dstate_weights_kernel before the sequential loop; S = 63 and 130 end in a partial chunk, and "states"
    has initial states and a loss on the last states (the recurrence then starts from their gradient)."""
    variant = find(launch_bw.TEMPLATE, cell=cell, kernels="fused")
    with_states = case == "states"
    x = _inputs(shape, cell, with_states)
    fw_config = _twopass_config(cell, 16, 32)
    bw_config = dict(_bw_config(variant, shape.DHQK, shape.DHHV, 16), dstate_gates="pre")
    _check(check, x, _weights(shape, cell, with_states), cell, target=f"{variant.name} dstate_gates pre",
           dims=shape.dims(), forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
           bw_config=bw_config)  # fmt: skip


@pytest.mark.parametrize("buffers,dtype", [("float32", torch.float16), ("input", torch.float32)])
def test_state_tiles_stored_through_a_descriptor_give_the_same_gradients(buffers, dtype):
    """ "state_stores": "tma" stores the reverse recurrence's dC tiles and the recomputed states through tensor
    descriptors: every gradient the same bits as with plain stores (which the oracle tests above check), with
    DHQK = 40 and DHHV = 24 not multiples of the 32-wide state tiles (the descriptors' bounds clip the last tiles),
    initial states and a loss on the last state."""
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels="fused")
    shape = Shape(1, 2, 70, 40, 24)
    x = _inputs(shape, "exp", True, dtype)
    weights = _weights(shape, "exp", True)
    fw_config = _twopass_config("exp", 16, 32)
    grads = {}
    for store in ("plain", "tma"):
        bw_config = dict(_bw_config(variant, 40, 24, 32), state_buffers=buffers, state_stores=store)
        grads[store] = _run(x, weights, cell="exp", forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
                            bw_config=bw_config)  # fmt: skip
    for name, plain in grads["plain"].items():
        assert torch.equal(plain, grads["tma"][name]), name


@pytest.mark.parametrize("cell,states,L", [("exp", "recompute", 16), ("sig", "recompute", 64), ("exp", "reuse", 16),
                                           ("sig", "reuse", 16), ("exp", "reuse", 64)])  # fmt: skip
def test_backward_at_another_chunk_than_the_forwards(cell, states, L, check):
    """A two-pass forward at chunks of 32 and a backward at chunks of L: its per-token statistics serve any L
    ("recompute"); a backward reusing states makes the forward store them every L tokens instead
    (launch.chunkwise.states_every), and the backward gets states at its own chunks."""
    variant = find(launch_bw.TEMPLATE, cell=cell, kernels="fused")
    shape = SHAPES[3]  # S=65: two chunks of 32 and one token
    x = _inputs(shape, cell, True)
    fw_config = _twopass_config(cell, 16, 32)
    used = []
    real = launch_bw.chunkwise_bw

    def spy(*args, **kwargs):
        used.append(kwargs["borders"][0].shape[2])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch_bw, "chunkwise_bw", spy)
        _check(check, x, _weights(shape, cell, True), cell, target=f"{variant.name} L{L} {states} after chunks of 32",
               dims=shape.dims(), forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
               bw_config=_bw_config(variant, shape.DHQK, shape.DHHV, L, states))  # fmt: skip
    # the forward's stored states: at the backward's chunks when it reuses them, else at the forward's own (unread)
    assert used == [-(-shape.S // (L if states == "reuse" else 32))]


@pytest.mark.parametrize("BVD", [16, 64])
def test_split_dv_kernel_takes_its_own_value_tile(BVD, check):
    """The split kernels' dv programs run on their own value tile BVD, narrower or wider than the dq/dk kernel's BV
    (32): DHHV=96 in 6 tiles of 16, or 2 of 64 with the second half masked."""
    variant = find(launch_bw.TEMPLATE, cell="exp", kernels="split")
    shape = SHAPES[1]  # S=7, DHQK=48, DHHV=96
    x = _inputs(shape, "exp", True)
    fw_config = _twopass_config("exp", 16, 16)
    bw_config = dict(_bw_config(variant, shape.DHQK, shape.DHHV, 16), dv_dhhv_tile=BVD)
    _check(check, x, _weights(shape, "exp", True), "exp", target=f"{variant.name} BV 32 BVD {BVD}", dims=shape.dims(),
           forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant, bw_config=bw_config)  # fmt: skip


@pytest.mark.parametrize("forward,states", [(launch_fw.FUSED, "recompute"), (launch_fw.FUSED, "reuse"),
                                            ("parallel", "recompute"), ("parallel", "parallel")])  # fmt: skip
@pytest.mark.parametrize("cell", ["exp", "sig"])
def test_backward_after_other_forwards(forward, states, cell, check):
    """The statistics of the fused single-pass and of the parallel forward serve the backward as well; the fused
    forward keeps its states for a backward that reuses them."""
    shape = SHAPES[4]  # S=130, DHQK=192, DHHV=64
    x = _inputs(shape, cell, True)
    if forward == "parallel":
        fw_config = families.default_config(find("parallel_fw.py.j2", cell=cell), shape.DHQK, shape.DHHV)
    else:
        fw_config = dict(families.default_config(find(forward, cell=cell, state="float32"), shape.DHQK, shape.DHHV),
                         chunk=32)  # fmt: skip
    if states == "parallel":  # the parallel backward
        variant, states = find(launch_pbw.TEMPLATE, cell=cell), "recompute"
    else:
        variant = find(launch_bw.TEMPLATE, cell=cell, kernels="fused")
    _check(check, x, _weights(shape, cell, True), cell, target=f"{variant.name} after {forward} {states}",
           dims=shape.dims(), forward=forward, fw_config=fw_config, bw_variant=variant,
           bw_config=_bw_config(variant, shape.DHQK, shape.DHHV, 32, states))  # fmt: skip


def _fp16_representable_draw(shape: Shape, tries: int = 8):
    """fp16 inputs with initial states and loss weights whose exact gradients fit fp16 (|g| < 60,000): at a token
    whose normaliser nearly cancels, dq and dk of the random draw can exceed fp16's range, which no fp16 kernel can
    return. Redrawn until they fit."""
    for _ in range(tries):
        x, weights = _inputs(shape, "exp", True, dtype=torch.float16), _weights(shape, "exp", True)
        if all(g.abs().max() < 6e4 for g in _oracle_grads("exp", weights)(x).values()):
            return x, weights
    raise AssertionError(f"no draw of {tries} has gradients within fp16's range")


BUFFER_FORMS = {"16bit-buffers": ("input", "recompute"), "planes": ("planes", "recompute"),
                "planes-reuse": ("planes", "reuse")}  # fmt: skip


@pytest.mark.parametrize("kernels", ["fused", "split", "parallel"]
                         + [f"{k}-{form}" for form in BUFFER_FORMS for k in ("fused", "split")])  # fmt: skip
@pytest.mark.parametrize("shape", SHAPES[2:4], ids=[s.id for s in SHAPES[2:4]])
def test_backward_fp16(shape, kernels, check):
    """16-bit inputs: tensor-core dots in fp16 with fp32 accumulation, limit 2e-2 (bf16 is checked on the GPU); the
    chunkwise kernels also with their per-chunk state buffers in fp16 (state_buffers="input") and as planes, the
    states before the chunks recomputed as planes or stored so by the forward ("planes-reuse")."""
    if kernels == "parallel":
        variant = find(launch_pbw.TEMPLATE, cell="exp")
    else:
        variant = find(launch_bw.TEMPLATE, cell="exp", kernels=kernels.split("-")[0])
    x, weights = _fp16_representable_draw(shape)
    fw_config = _twopass_config("exp", 16, 32)
    form = kernels.split("-", 1)[1] if "-" in kernels else None
    bw_config = _bw_config(variant, shape.DHQK, shape.DHHV, 32)
    if form:
        buffers, states = BUFFER_FORMS[form]
        bw_config.update(state_buffers=buffers, states=states)
    fw_state = "planes" if form == "planes-reuse" else "float32"
    _check(check, x, weights, "exp", target=f"{variant.name} fp16 {bw_config} after {fw_state}",
           dims=shape.dims(), dtype=torch.float16, forward=launch_fw.TWOPASS, fw_config=fw_config, bw_variant=variant,
           bw_config=bw_config, fw_state=fw_state)  # fmt: skip


def test_sig_without_normalizer(check):
    """The sig cell with normalize=False: h = C^T q, no denominator."""
    shape = SHAPES[3]
    variant = find(launch_bw.TEMPLATE, cell="sig", kernels="fused")
    x = _inputs(shape, "sig", True)
    weights = _weights(shape, "sig", True)
    fw_variant = find(launch_fw.TWOPASS, cell="sig", state="float32")
    saved = {}
    args = [x.get(n) for n in NAMES]
    h, last = launch_fw.chunkwise_fw(*args, variant=fw_variant, normalize=False, return_last_states=True, saved=saved)
    dl = (weights["C"].float(), weights["n"].float(), torch.zeros(1, 2, 1))
    config = _bw_config(variant, 32, 32, 16)
    grads = launch_bw.chunkwise_bw(*args, h, saved["s"], saved["mt"], weights["h"].float(), *dl, last,
                                   variant=variant, config=config, normalize=False)  # fmt: skip

    def oracle(x64):
        x64 = {k: v.double().cpu().requires_grad_(True) for k, v in x64.items()}
        out, (C, n) = mlstm_recurrent(**x64, cell="sig", normalize=False, return_last_states=True)
        loss = (out * weights["h"]).sum() + (C * weights["C"]).sum() + (n * weights["n"]).sum()
        return {f"d{k}": g for k, g in zip(x64, torch.autograd.grad(loss, list(x64.values())))}

    ref = oracle(x)
    got = {f"d{n}": g for n, g in zip(NAMES, grads) if n in x}
    check(target=f"{variant.name} normalize=False", baseline="autograd through reference.mlstm_recurrent(fp64)",
          dims=shape.dims(), dtype=torch.float32, pairs={k: (got[k], ref[k]) for k in ref},
          limit=_limits(torch.float32, oracle, x, weights, "sig", ref, normalize=False))  # fmt: skip


@pytest.mark.parametrize("backward_states", ["", "recompute"], ids=["as-configured", "env-recompute"])
@pytest.mark.parametrize("name", ["chunkwise--triton_fused", "chunkwise--triton_xl_chunk"])
def test_entry_with_a_forced_reusing_backward(name, backward_states, monkeypatch, check):
    """Through the registry with MLSTM_AUTOTUNE_FORCE on the "fwbw" key: a split backward reusing the forward's states
    (the fused forward keeps them because the backward asks at the forward); with
    MLSTM_AUTOTUNE_BACKWARD_STATES=recompute the forward keeps nothing and the backward recomputes them."""
    import json

    from autotune.dispatch import dispatcher
    from autotune.torch import get_mlstm_kernel

    variant = find(launch_bw.TEMPLATE, cell="exp", kernels="split")
    config = _bw_config(variant, 32, 32, 16, "reuse", tile=16)
    monkeypatch.setenv("MLSTM_AUTOTUNE_FORCE", json.dumps({"chunkwise:exp/fwbw": {"variant": variant.name,
                                                                                  "config": config}}))  # fmt: skip
    monkeypatch.setenv("MLSTM_AUTOTUNE_BACKWARD_STATES", backward_states)
    dispatcher().reset()
    used = []

    def spy(*args, **kwargs):
        used.append((kwargs["variant"].name, kwargs["config"]["states"], kwargs["borders"] is not None))
        return real(*args, **kwargs)

    real = launch_bw.chunkwise_bw
    monkeypatch.setattr(launch_bw, "chunkwise_bw", spy)
    try:
        shape = SHAPES[3]
        x = _inputs(shape, "exp", True)
        weights = _weights(shape, "exp", True)
        xk = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        h, states = get_mlstm_kernel(name)(**xk, return_last_states=True, chunk_size=16)
        outs = dict(zip(("h", "C", "n", "m"), (h, *states)))
        loss = sum((outs[k].double() * w.to(outs[k].device)).sum() for k, w in weights.items())
        got = dict(zip((f"d{k}" for k in xk), torch.autograd.grad(loss, list(xk.values()))))
    finally:
        monkeypatch.delenv("MLSTM_AUTOTUNE_FORCE")
        dispatcher().reset()
    reused = not backward_states
    assert used == ([(variant.name, "reuse", True)] if reused else [(variant.name, "recompute", False)])
    oracle = _oracle_grads("exp", weights)
    ref = oracle(x)
    check(target=f"{name} with a forced reusing split backward", baseline="autograd through the oracle (fp64)",
          dims=shape.dims(), dtype=torch.float32, pairs={k: (got[k], ref[k]) for k in ref},
          limit=_limits(torch.float32, oracle, x, weights, "exp", ref))  # fmt: skip


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's numpy: floor = exp(100) = inf
def test_prep_does_not_overflow_where_the_floor_does():
    """m_t < -88 (input gates far below -88): floor = exp(-m) is inf in fp32. The floor's share of the max state's
    gradient must stay finite (computed naively it is inf / inf = NaN in dm0)."""
    shape = Shape(1, 1, 40, 16, 16)
    x = _inputs(shape, "exp", True)
    x["i"] = torch.full_like(x["i"], -100.0)
    x["f"] = torch.full_like(x["f"], -6.0)
    x["m_initial"] = torch.zeros_like(x["m_initial"])
    weights = _weights(shape, "exp", True)
    for variant in (find(launch_bw.TEMPLATE, cell="exp", kernels="fused"), find(launch_pbw.TEMPLATE, cell="exp")):
        got = _run(x, weights, cell="exp", forward=launch_fw.TWOPASS,
                   fw_config=families.default_config(find(launch_fw.TWOPASS, cell="exp", state="float32"), 16, 16),
                   bw_variant=variant, bw_config=_bw_config(variant, 16, 16, 16, tile=16))  # fmt: skip
        assert all(bool(torch.isfinite(g).all()) for g in got.values()), variant.name


def test_too_many_heads_for_one_launch_is_a_clear_error():
    from autotune.checks import MLSTMInputError
    from autotune.launch.common import MAX_GRID_HEADS, check_heads

    check_heads(1, MAX_GRID_HEADS)
    with pytest.raises(MLSTMInputError, match="split the batch"):
        check_heads(2, MAX_GRID_HEADS)
