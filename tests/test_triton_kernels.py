"""Every generated Triton variant against the float64 oracle, under Triton's interpreter on the CPU (fp32 and fp16:
the interpreter mis-computes bf16 dots, docs/math.md §7), on the §7 shape list; outputs and last states. Outputs are
NaN-poisoned before each launch (MLSTM_AUTOTUNE_POISON=1), so an element a kernel forgets fails the check.
On a machine with a GPU the same tests run the compiled kernels on the GPU."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from helpers import MAX_OUTLIER, SHAPES, conditioning_limits, widened_by

from autotune import families
from autotune.launch import chunkwise, parallel, recurrent
from autotune.load import load_variant
from autotune.reference import mlstm_recurrent, random_inputs
from autotune.variants import VARIANTS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# small tiles keep the interpreter quick and make the S = 130 and 500 shapes span many chunks (S >= 2 x chunk)
CONFIGS = {
    "chunkwise_fused_fw.py.j2": {"chunk": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1},
    "chunkwise_twopass_fw.py.j2": {
        "chunk_inter": 16,
        "chunk_intra": 32,
        "states_dhqk_tile": 16,
        "states_dhhv_tile": 32,
        "out_dhqk_tile": 32,
        "out_dhhv_tile": 16,
        "states_warps": 4,
        "out_warps": 4,
        "num_stages": 1,
    },  # fmt: skip
    "parallel_fw.py.j2": {
        "query_tile": 32,
        "kv_tile": 16,
        "dhqk_tile": 32,
        "dhhv_tile": 16,
        "num_warps": 4,
        "num_stages": 1,
    },
    "recurrent_sequence.py.j2": {"dhhv_tile": 16, "num_warps": 4},
    "recurrent_step.py.j2": {"dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4},
}
SEQUENCE_VARIANTS = [v for v in VARIANTS if v.family in ("chunkwise_fw", "parallel_fw", "sequence_fw")]


def _configs(variant) -> list[dict]:
    """The test configuration; for the two-pass structure five times, pairing the states kernel's gates (in its
    loop, or computed first), product (k weighted, v weighted, or k^T weighted where it is loaded), n (a
    reduction, or a product on the tensor cores) and store of C (plain, or through a tensor descriptor) with the
    output kernels (per value tile, per chunk looping over value tiles). k^T weighted with n reduced runs in
    test_n_on_the_tensor_cores_stays_at_the_16_bit_level and in the backward's recomputed states
    (tests/test_backward_kernels.py)."""
    config = CONFIGS[variant.template]
    if variant.template == chunkwise.TWOPASS:
        points = (
            ("tiles", "inline", "k", "sum", "plain"),
            ("loop", "pre", "k", "dot", "plain"),
            ("tiles", "pre", "v", "sum", "tma"),
            ("loop", "inline", "kT", "dot", "plain"),
            ("tiles", "pre", "kT", "dot", "tma"),
        )
        return [dict(config, out_values=o, states_gates=g, states_weighting=w, states_n=n, states_store=t)
                for o, g, w, n, t in points]  # fmt: skip
    return [config]


# every variant's first configuration with and without initial states on every shape; the two-pass structure's other
# four knob points with initial states only (their kernels then run every path the no-state call runs, and the
# state's too), on the shapes of up to LONGEST_EXTRA_POINT tokens: those span several chunks and key and value tiles
# with partial last ones, which is every path of their kernels (the longer shapes took 200 s of CI's CPU for them)
LONGEST_EXTRA_POINT = 65


def _runs(variant, j: int, with_states: bool, shape) -> bool:
    """Whether knob point j of ``variant`` runs on ``shape`` (above). The planes variants: with initial states on
    those shorter shapes, at the first point (output tiles) and, for the exp cell, the second (output loop); they
    differ from the fp32 variants only where those store and read the states, which tests/test_state_planes.py
    checks bit for bit."""
    extra = with_states and shape.S <= LONGEST_EXTRA_POINT
    if variant.params.get("state") == "planes":
        return extra and j < (2 if variant.params["cell"] == "exp" else 1)
    return j == 0 or extra


SEQUENCE_CASES = [(v, c, s, shape) for v in SEQUENCE_VARIANTS for j, c in enumerate(_configs(v)) for s in (False, True)
                  for shape in SHAPES if _runs(v, j, s, shape)]  # fmt: skip
SEQUENCE_IDS = [
    v.name
    + (f"-{c['out_values']}-{c['states_gates']}-{c['states_weighting']}-n{c['states_n']}" if "out_values" in c else "")
    + ("-tma" if c.get("states_store") == "tma" else "")
    + ("-state" if s else "-nostate")
    + f"-{shape.id}"
    for v, c, s, shape in SEQUENCE_CASES
]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MLSTM_AUTOTUNE_POISON", "1")


def _states(x: dict, cell: str):
    if "c_initial" not in x:
        return (None, None, None)
    return (x["c_initial"], x["n_initial"], x["m_initial"] if cell == "exp" else None)


def _run_sequence(variant, config: dict, x: dict, cell: str):
    launcher = {"chunkwise_fw": chunkwise.chunkwise_fw, "parallel_fw": parallel.parallel_fw,
                "sequence_fw": recurrent.sequence_fw}[variant.family]  # fmt: skip
    args = [x[n].to(DEVICE) for n in "qkvif"]
    states = [s.to(DEVICE) if s is not None else None for s in _states(x, cell)]
    return launcher(*args, *states, variant=variant, config=config, return_last_states=True)


def _oracle(x: dict, cell: str, dtype: torch.dtype = torch.float64):
    h, states = mlstm_recurrent(**{k: v.to(dtype) for k, v in x.items()}, cell=cell, return_last_states=True)
    return {"h": h, "C": states[0], "n": states[1]} | ({"m": states[2]} if cell == "exp" else {})


def _limits(x: dict, cell: str, dtype: torch.dtype, reference: dict) -> dict:
    """conditioning_limits; for fp32 also CONDITION_FACTOR x the error of the recurrent definition run in fp32 on the
    same inputs (a trusted reference): a token whose normaliser cancels sets the fp32 error of every kernel, and a
    perturbation of the inputs by fp32's unit roundoff can miss it in the norm over all tokens."""
    limits = conditioning_limits(dtype, lambda x64: _oracle(x64, cell), x)
    if dtype == torch.float32:
        limits = widened_by(limits, _oracle(x, cell, torch.float32), reference)
    return limits


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("variant,config,with_states,shape", SEQUENCE_CASES, ids=SEQUENCE_IDS)
def test_sequence_variant_matches_oracle(variant, config, shape, with_states, dtype, check):
    cell = variant.params["cell"]
    x = random_inputs(
        *shape.dims(),
        dtype=dtype,
        gate_dtype=torch.float32,
        with_states=with_states,
        max_outlier=MAX_OUTLIER.get(dtype, 20.0),
    )
    if cell == "sig":
        x.pop("m_initial", None)
    h, last = _run_sequence(variant, config, x, cell)
    assert h.dtype == dtype
    outputs = {"h": h, "C": last[0], "n": last[1]} | ({"m": last[2]} if cell == "exp" else {})
    reference = _oracle(x, cell)
    limits = _limits(x, cell, dtype, reference)
    check(target=f"{variant.name} {config}", baseline="reference.mlstm_recurrent(fp64)",
          dims=shape.dims(), dtype=dtype, pairs={k: (outputs[k], reference[k]) for k in reference},
          limit=limits)  # fmt: skip


@pytest.mark.parametrize("weighting", ["kT", "k"])
def test_n_on_the_tensor_cores_stays_at_the_16_bit_level(weighting, monkeypatch):
    """ "states_n": "dot" rounds each weighted key to the inputs' 16 bits before summing on the tensor cores, so n's
    error against the fp64 oracle is that rounding (fp16: 2^-11 relative per term), above the fp32 reduction's
    ("sum") but no more. fp16 inputs, 200 tokens over 13 sub-chunks, two key and two value tiles. Seen through the
    last state, which a forward otherwise sums in fp32 (launch.chunkwise.LAST_STATE_N)."""
    monkeypatch.setattr(chunkwise, "LAST_STATE_N", "dot")
    variant = next(
        v
        for v in SEQUENCE_VARIANTS
        if v.template == chunkwise.TWOPASS and v.params == {"cell": "exp", "state": "input"}
    )
    x = random_inputs(1, 2, 200, 32, 64, dtype=torch.float16, gate_dtype=torch.float32, with_states=False)
    ref = _oracle(x, "exp")["n"]
    errors = {}
    for n in ("sum", "dot"):
        config = dict(CONFIGS[chunkwise.TWOPASS], states_gates="pre", states_weighting=weighting, states_n=n)
        _, last = _run_sequence(variant, config, x, "exp")
        errors[n] = ((last[1].double().cpu() - ref).norm() / ref.norm()).item()
    assert errors["sum"] < errors["dot"] <= 2**-11, errors


@pytest.mark.parametrize(
    "state,dtype", [("input", torch.float16), ("float32", torch.float16), ("input", torch.float32)]
)
def test_states_stored_through_a_descriptor_equal_plain_stores(state, dtype):
    """ "states_store": "tma" stores each chunk's C through a tensor descriptor: the same bits as the plain stores,
    every element written (the buffers start at a sentinel), with DHQK = 40 and DHHV = 24 not multiples of the state
    tiles (the descriptor's bounds clip the last tiles, where the plain stores mask them)."""
    variant = chunkwise.find(chunkwise.TWOPASS, cell="exp", state=state)
    x = random_inputs(1, 2, 100, 40, 24, dtype=dtype, gate_dtype=torch.float32, with_states=True)
    k, v, i, f = (x[n].to(DEVICE) for n in "kvif")
    C0, n0, m0 = (s.to(DEVICE) for s in _states(x, "exp"))
    NC = 4  # chunks of 32 tokens
    stored = {}
    for store in ("plain", "tma"):
        config = chunkwise.check_config(variant, dict(CONFIGS[chunkwise.TWOPASS], states_gates="pre",
                                                      states_weighting="kT", states_store=store))  # fmt: skip
        Cb = torch.full((1, 2, NC, 40, 24), 7.0, dtype=torch.float32 if state == "float32" else dtype, device=DEVICE)
        nb, mb = torch.zeros(1, 2, NC, 40, device=DEVICE), torch.zeros(1, 2, NC, device=DEVICE)
        dummy = torch.empty(1, device=DEVICE)
        module = families.bind(load_variant(variant), variant.template, config)
        chunkwise._launch_states(module, k, v, i, f, C0, n0, m0.reshape(1, 2), True, (Cb, nb, mb), (dummy,) * 3,
                                 S=100, NC=NC, config=config, store_borders=True, prec="ieee")  # fmt: skip
        stored[store] = (Cb, nb, mb)
    assert not (stored["tma"][0] == 7.0).any()
    for plain, tma in zip(stored["plain"], stored["tma"]):
        assert torch.equal(plain, tma)


def test_a_descriptor_store_of_misaligned_rows_is_refused():
    """A descriptor's rows start at 16-byte multiples: DHHV = 6 fp16 values (12 bytes) are refused with the reason,
    before anything is launched."""
    from autotune.checks import MLSTMInputError

    variant = chunkwise.find(chunkwise.TWOPASS, cell="exp", state="input")
    x = random_inputs(1, 1, 40, 16, 6, dtype=torch.float16, gate_dtype=torch.float32)
    config = dict(CONFIGS[chunkwise.TWOPASS], states_dhhv_tile=16, out_dhhv_tile=16, states_store="tma")
    with pytest.raises(MLSTMInputError, match='states_store "tma" needs one state tile per chunk in rows of 16-byte'):
        chunkwise.chunkwise_fw(*(x[n].to(DEVICE) for n in "qkvif"), variant=variant, config=config)


STEP_VARIANTS = [v for v in VARIANTS if v.family == "step_fw"]


K_TILES = families.RECURRENT_STEP.knob("k_tiles").choices
STEP_CASES = [(shape, k_tiles) for shape in SHAPES[1:4] for k_tiles in K_TILES]
# under the interpreter the step runs the first STEP_TOKENS_CPU tokens of a shape (every token is the same kernel on
# the state the one before left; at 63 tokens each case took 12-18 s of CI's CPU); on a GPU, all of them
STEP_TOKENS_CPU = 16


@pytest.mark.parametrize("shape,k_tiles", STEP_CASES, ids=[f"{s.id}-{k}" for s, k in STEP_CASES])
@pytest.mark.parametrize("inplace", [False, True], ids=["new-state", "inplace"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=[v.name for v in STEP_VARIANTS])
def test_step_variant_token_by_token(variant, shape, dtype, inplace, k_tiles, check):
    """The step kernel over a sequence, token by token with the state fed back (or updated in place); its key tiles
    walked by each value tile's program, or one program per tile of C with the shares combined by the last one."""
    _check_step_sequence(variant, shape, dtype, inplace, dict(CONFIGS[variant.template], k_tiles=k_tiles), check)


@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=[v.name for v in STEP_VARIANTS])
def test_step_with_one_key_tile_in_place(variant, check):
    """The in-place step whose one key tile covers DHQK (BK >= DHQK): its last program per head stores the new n
    from registers rather than recomputing it from memory."""
    shape = SHAPES[1]  # DHQK 48 in one 64-wide key tile, six value tiles arriving
    config = dict(CONFIGS[variant.template], dhqk_tile=triton.next_power_of_2(shape.DHQK), k_tiles="loop")
    _check_step_sequence(variant, shape, torch.float32, True, config, check)


def _check_step_sequence(variant, shape, dtype, inplace, config, check):
    """Runs the step kernel over shape's tokens one at a time and checks h and the last state against the oracle."""
    k_tiles = config["k_tiles"]
    cell = variant.params["cell"]
    B, NH, S, DHQK, DHHV = shape.dims()
    S = S if DEVICE != "cpu" else min(S, STEP_TOKENS_CPU)
    x = random_inputs(B, NH, S, DHQK, DHHV, dtype=dtype, gate_dtype=torch.float32, with_states=True,
                      max_outlier=MAX_OUTLIER.get(dtype, 20.0))  # fmt: skip
    if cell == "sig":
        x.pop("m_initial")
    # clones: the in-place kernel must not touch the initial state the oracle reads
    C = x["c_initial"].float().to(DEVICE).clone()
    n = x["n_initial"].float().to(DEVICE).clone()
    m = x["m_initial"].float().reshape(B, NH).to(DEVICE).clone() if cell == "exp" else None
    hs = []
    for t in range(S):
        q, k, v, i, f = (x[name][:, :, t].to(DEVICE) for name in "qkvif")
        out = (C, n, m) if inplace else (torch.empty_like(C), torch.empty_like(n), torch.empty_like(m) if m is not None
                                         else None)  # fmt: skip
        hs.append(recurrent.step_fw(q, k, v, i, f, C, n, m, variant=variant, config=config, out=out))
        C, n, m = out
    reference = _oracle(x, cell)
    outputs = {"h": torch.stack(hs, 2), "C": C, "n": n} | ({"m": m.reshape(B, NH, 1)} if cell == "exp" else {})
    limits = conditioning_limits(dtype, lambda x64: _oracle(x64, cell), x)
    state = "in place" if inplace else "new state"
    check(target=f"{variant.name} {k_tiles} dhqk_tile={config['dhqk_tile']} x{S} ({state})",
          baseline="reference.mlstm_recurrent(fp64)", dims=(B, NH, S, DHQK, DHHV), dtype=dtype,
          pairs={k: (outputs[k], reference[k]) for k in reference}, limit=limits)  # fmt: skip


@pytest.mark.parametrize("k_tiles", K_TILES)
def test_inplace_step_leaves_counters_at_zero(k_tiles):
    """The step's per-head arrival counters (the in-place step's, and the split step's in both modes) are reset by
    the kernel, ready for the next call."""
    variant = next(v for v in STEP_VARIANTS if v.params["cell"] == "exp")
    x = random_inputs(2, 3, 1, 16, 40, dtype=torch.float32, with_states=True)
    C, n = x["c_initial"].to(DEVICE).contiguous(), x["n_initial"].to(DEVICE).contiguous()
    m = x["m_initial"].reshape(2, 3).to(DEVICE).contiguous()
    q, k, v, i, f = (x[name][:, :, 0].to(DEVICE) for name in "qkvif")
    config = dict(CONFIGS[variant.template], k_tiles=k_tiles)
    recurrent.step_fw(q, k, v, i, f, C, n, m, variant=variant, config=config, out=(C, n, m))
    counters = recurrent._arrival_counters(6, q)
    assert counters.tolist() == [0] * 6
    new = (torch.empty_like(C), torch.empty_like(n), torch.empty_like(m))
    recurrent.step_fw(q, k, v, i, f, C, n, m, variant=variant, config=config, out=new)
    assert counters.tolist() == [0] * 6


_logsigmoid = load_variant(STEP_VARIANTS[0])._logsigmoid  # the gate helper every generated module shares


@triton.jit
def _logsigmoid_kernel(x_ptr, o_ptr, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(o_ptr + o, _logsigmoid(tl.load(x_ptr + o)))


def test_logsigmoid_keeps_the_digits_of_gates_near_one():
    """log sigmoid(x) against float64 over [-87, 87] in fp32: for large x it is about -exp(-x), which log(1 + y)
    rounds away (it returned 0 for x > 17); the helper's log1p keeps it to a few ulps."""
    x = torch.linspace(-87.0, 87.0, 4096, dtype=torch.float32, device=DEVICE)
    out = torch.empty_like(x)
    _logsigmoid_kernel[(1,)](x, out, N=4096)
    ref = torch.nn.functional.logsigmoid(x.double())
    rel = ((out.double() - ref).abs() / ref.abs()).max().item()
    assert rel < 1e-6, f"largest relative error {rel:.3g}"


def test_split_step_scratch_grows_and_is_reused():
    """The split step's scratch: views of one buffer per device that grows for a larger batch (older buffers kept
    for CUDA graphs that hold them), and is reused, not reallocated, for smaller ones. (A meta or fake tensor, as a
    recorded or traced launch has, gets fresh buffers every call.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dev = torch.device("cpu")
    like = torch.empty(0, device=dev)
    recurrent._SCRATCH.pop(str(dev), None)
    part, parts = recurrent._split_scratch(2, 4, 24, like)
    assert part.shape == (2, 4, 24) and parts.shape == (2, 4)
    part, parts = recurrent._split_scratch(8, 4, 24, like)
    assert part.shape == (8, 4, 24) and parts.shape == (8, 4)
    held = recurrent._SCRATCH[str(dev)]
    assert len(held) == 2 and held[-1][0].numel() == 8 * 4 * 24
    recurrent._split_scratch(3, 4, 24, like)
    assert len(held) == 2  # fits: no new buffer
    recurrent._SCRATCH.pop(str(dev), None)
    recurrent._split_scratch(2, 4, 24, torch.empty(0, device="meta"))
    assert "meta" not in recurrent._SCRATCH
    with FakeTensorMode():
        part, _ = recurrent._split_scratch(2, 4, 24, torch.empty(0, device=dev))
    assert str(dev) not in recurrent._SCRATCH and part.shape == (2, 4, 24)


def test_unknown_launch_choices_are_clear_errors():
    """A configuration naming an option that does not exist (a hand-written MLSTM_AUTOTUNE_FORCE, say) is refused by
    the launcher with the choices, before anything is launched."""
    from autotune.checks import MLSTMInputError

    x = random_inputs(1, 2, 8, 16, 16, dtype=torch.float32, with_states=True)
    q, k, v, i, f = (x[n][:, :, 0].to(DEVICE) for n in "qkvif")
    C, n, m = x["c_initial"].to(DEVICE), x["n_initial"].to(DEVICE), x["m_initial"].reshape(1, 2).to(DEVICE)
    step = STEP_VARIANTS[0]
    with pytest.raises(MLSTMInputError, match="k_tiles must be one of"):
        recurrent.step_fw(q, k, v, i, f, C, n, m, variant=step, config=dict(CONFIGS[step.template], k_tiles="split"))
    twopass = next(v for v in SEQUENCE_VARIANTS if v.template == chunkwise.TWOPASS)
    bad = dict(CONFIGS[twopass.template], states_weighting="q")
    with pytest.raises(MLSTMInputError, match="states_weighting must be one of"):
        chunkwise.chunkwise_fw(*(x[n].to(DEVICE) for n in "qkvif"), variant=twopass, config=bad)
    bad = dict(CONFIGS[twopass.template], states_weighting="v", states_n="dot")  # faulted on the H200
    with pytest.raises(MLSTMInputError, match='states_n "dot" needs'):
        chunkwise.chunkwise_fw(*(x[n].to(DEVICE) for n in "qkvif"), variant=twopass, config=bad)
    from autotune.launch import chunkwise_bw
    from autotune.variants import find

    backward = find(chunkwise_bw.TEMPLATE, cell="exp", kernels="fused")
    with pytest.raises(MLSTMInputError, match="dstate_gates must be one of"):
        chunkwise_bw.check_config(backward, dict(families.default_config(backward, 16, 16), dstate_gates="post"))


@pytest.mark.parametrize("entry", ["chunkwise--triton_fused", "chunkwise--triton_auto", "chunkwise--triton_xl_chunk"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_a_training_step_runs_the_forward_its_backward_was_checked_behind(entry, training):
    """With ``saved`` (a training step) a chunkwise entry runs launch.chunkwise.training_forward at its backward's
    chunk, whatever structure and configuration it runs for inference: the two-pass structure with fp32 states, the
    weights on v and n summed in fp32, the forward the gate's training-step candidates run behind (its 16-bit-state
    forms made gradients 1.5-5x the trusted kernel's error, docs/hazards.md). Without, the entry's own choice."""
    from autotune.launch.trace import meta_like, record
    from autotune.torch.triton_choice import backward_plan
    from autotune.torch.triton_kernels import SEQUENCE_ENTRIES

    run = SEQUENCE_ENTRIES[entry].run(chunk_size=32, eps=1e-6, normalize=True)
    shapes = [(1, 2, 256, 64), (1, 2, 256, 64), (1, 2, 256, 64), (1, 2, 256), (1, 2, 256)]
    inputs = [meta_like(s, torch.float16 if len(s) == 4 else torch.float32) for s in shapes]

    def forward(q, k, v, i, f):
        return run(q, k, v, i, f, None, None, None, return_last_states=False, saved={} if training else None)[0]

    trace = record(forward, inputs)
    launched = {e.name: e for e in trace.launches()}
    if not training:
        fused = entry == "chunkwise--triton_fused"
        assert ("chunkwise_fused_fw_kernel" in launched) is fused
        if not fused:
            states = {a.name: a.value for a in launched["chunkwise_states_kernel"].args}
            assert states["N_DOT"] is True and states["WEIGHT_V"] is False  # the tuned-for-speed defaults
        return
    assert "chunkwise_fused_fw_kernel" not in launched
    states = {a.name: a for a in launched["chunkwise_states_kernel"].args}
    assert states["WEIGHT_V"].value is True and states["N_DOT"].value is False
    assert trace.buffers[states["Cb_ptr"].value][1] == torch.float32
    L = backward_plan(inputs[0], inputs[2], "chunkwise", "exp")[1]["chunk"]
    output = next(e for name, e in launched.items() if name.startswith("chunkwise_output"))
    assert {a.name: a.value for a in output.args}["LO"] == L


def _float64_s(x: dict, mt: torch.Tensor) -> torch.Tensor:
    """s_t = sum_j scale (q_t . k_j) D_tj e^(-mt_t) in float64 on the 16-bit inputs, [B, NH, S]."""
    q, k = x["q"].double(), x["k"].double()
    lf, li = torch.nn.functional.logsigmoid(x["f"].double()), x["i"].double()
    F = torch.cumsum(lf, -1)
    S = q.shape[-2]
    log_D = (F[..., :, None] - F[..., None, :] + li[..., None, :]).masked_fill(
        ~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))  # fmt: skip
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * torch.exp(log_D - mt.double()[..., None])).sum(-1)


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's fp16 arithmetic; tests/gpu covers bf16 on a GPU")
def test_a_forward_before_a_backward_keeps_s_as_accurate_as_the_parallel_forward():
    """The normaliser's argument s_t that a forward keeps for a backward (``saved``) cancels, on the gate's adversarial
    draw, by up to hundreds; a backward reads it with h_t, so its error reaches the gradients. The chunkwise forwards
    form the decay matrix from segment sums then (launch.chunkwise.segment_sums): differences of prefix sums made s
    of one token at S=130 15x the parallel forward's error, and the 7B layout's dq 1.7x the trusted kernel's on an
    H100. Judged token by token: the relative error of every token's s within twice the parallel forward's, or an
    eighth of fp16's unit roundoff (the two-pass form's state terms add fp32 rounding of that order), and over all
    tokens within 2.5x (the two-pass form measured 1.9x; with prefix differences 11x)."""
    from autotune import gate

    x = gate.draw_inputs("adversarial", 1, 2, 130, 128, 128, dtype=torch.float16, device="cpu", seed=1)
    args = [x[n] for n in "qkvif"]
    pfw = next(v for v in VARIANTS if v.template == "parallel_fw.py.j2" and v.params["cell"] == "exp")
    par = {}
    parallel.parallel_fw(*args, variant=pfw, config=families.default_config(pfw, 128, 128), saved=par)
    s64 = _float64_s(x, par["mt"])
    par_err = ((par["s"].double() - s64) / s64).abs()
    for variant, config in (chunkwise.training_forward("exp", 128, 128, 64),
                            (chunkwise.find(chunkwise.FUSED, cell="exp", state="input"), None)):  # fmt: skip
        saved = {}
        chunkwise.chunkwise_fw(*args, variant=variant, config=config, saved=saved)
        assert torch.allclose(saved["mt"], par["mt"], rtol=0, atol=1e-5)
        err = ((saved["s"].double() - s64) / s64).abs()
        worst = (err - 2 * par_err).argmax()
        assert (err <= 2 * par_err + 2**-14).all(), (variant.name, err.flatten()[worst], par_err.flatten()[worst])
        assert err.norm() <= 2.5 * par_err.norm(), (variant.name, err.norm().item(), par_err.norm().item())


@pytest.mark.parametrize("weighting", ["k", "kT"])
def test_a_forward_returning_its_last_state_sums_n_in_fp32(weighting, monkeypatch):
    """A two-pass configuration that forms n on the tensor cores ("states_n": "dot") rounds every weighted key to the
    inputs' dtype; a forward that returns its last state sums n in fp32 instead (launch.chunkwise.LAST_STATE_N), so
    the n a decoding loop carries on is as accurate as fp32 (fp16 inputs: 1e-4 relative error with the rounding)."""
    torch.manual_seed(5)
    x = random_inputs(1, 2, 100, 32, 32, dtype=torch.float64)
    half = [x[n].to(torch.float16) if x[n].dim() == 4 else x[n].float() for n in ("q", "k", "v", "i", "f")]
    _, (_, n_ref, _) = mlstm_recurrent(*(t.double() for t in half), return_last_states=True)
    variant = chunkwise.find(chunkwise.TWOPASS, cell="exp", state="float32")
    config = dict(families.default_config(variant, 32, 32), states_n="dot", states_weighting=weighting)
    _, (_, n_S, _) = chunkwise.chunkwise_fw(*half, variant=variant, config=config, return_last_states=True)
    assert (n_S.double() - n_ref).norm() <= 1e-5 * n_ref.norm()
    monkeypatch.setattr(chunkwise, "LAST_STATE_N", "dot")  # the tensor cores' n: the check above can fail
    _, (_, n_dot, _) = chunkwise.chunkwise_fw(*half, variant=variant, config=config, return_last_states=True)
    assert (n_dot.double() - n_ref).norm() > 1e-5 * n_ref.norm()
