"""One declarative spec per kernel family: what a template renders, what it can be launched with, and what may not
be combined.

A family is one Jinja template. Its spec says:
- ``axes``: the structural (Jinja) parameters; every combination is one generated module (autotune.variants);
- ``knobs``: the launch parameters, each with a one-line meaning, the values the search tries, how to read it in
  entries written before it existed (``fill``) or before it was renamed (``old``);
- ``default``: the configuration a variant runs with when no database entry applies;
- ``rules``: named constraints. A rule ``at_launch`` is a hard error when a launch asks for it (a configuration the
  kernels cannot run); the others are search-time estimates and measured faults (autotune.space prunes and records
  them; a user may still force such a point);
- ``seeds`` (multi-knob starting points for the search) and ``inert`` knobs (ones a variant's kernels never read).

Adding a knob to a family is an edit of its spec (here) and of its template: a knob that is one kernel constexpr
names it (Knob.constexpr, Knob.kernels) and reaches the kernels through ``bind``; autotune.space, the launchers'
checks, the dispatcher's override checks and the database reader all read this module.
Knob names say what they set; kernel constexprs keep short names (LI, LO, BK, BV, ...), mapped by the launchers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .checks import MLSTMInputError

TILES = (16, 32, 64, 128)
WARPS = (2, 4, 8)
STAGES = (1, 2, 3)
CELLS = ("exp", "sig")
# "input": states stored (two-pass) or multiplied (fused) in the inputs' dtype, i.e. bf16 for bf16 inputs
STATE_DTYPES = ("float32", "input")
# the two-pass forward also stores them as "planes": two tiles of the inputs' dtype per state, hi = C rounded and
# lo = what that rounding left out, which its products read as they read 16-bit states (no split in registers)
TWOPASS_STATES = STATE_DTYPES + ("planes",)
_NOT_SET = object()


def next_pow2(x: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (max(1, x) - 1).bit_length())


@dataclass(frozen=True)
class Knob:
    """One launch parameter. ``tile``: any power of two >= 16 runs (``choices`` are what the search tries);
    ``count``: a warp or stage count (warps a power of two up to 32, stages 1 to 32); otherwise the value must be
    one of ``choices``."""

    name: str
    meaning: str
    choices: tuple
    tile: bool = False
    count: bool = False
    old: str | None = None  # its name in databases written before the rename
    fill: object = _NOT_SET  # its value in entries written before it existed: a constant or fill(config)
    # a knob that is one kernel constexpr: its name there and the kernels that take it; such a knob reaches the
    # kernels without a launcher edit (bind)
    constexpr: str | None = None
    kernels: tuple[str, ...] = ()

    def check(self, value) -> str | None:
        """Why ``value`` cannot be launched, or None."""
        if self.tile:
            if type(value) is not int or value < 16 or value & (value - 1):
                return f"launch parameter {self.name} must be a power of two >= 16, got {value!r}"
        elif self.count:
            stages = self.name == "num_stages"
            ok = type(value) is int and 1 <= value <= 32 and (stages or not value & (value - 1))
            if not ok:
                what = "an integer from 1 to 32" if stages else "a power of two from 1 to 32"
                return f"launch parameter {self.name} must be {what}, got {value!r}"
        elif value not in self.choices:
            return f"launch parameter {self.name} must be one of {self.choices}, got {value!r}"
        return None


@dataclass(frozen=True)
class Point:
    """What a rule sees: the variant's structural parameters, a configuration (every knob present, current names),
    the head dims, their padded powers of two, the inputs' bytes per element and the device's limits."""

    params: dict
    config: dict
    DHQK: int
    DHHV: int
    dtype_bytes: int = 2
    limits: Limits | None = None

    @property
    def BK(self) -> int:
        return next_pow2(self.DHQK)

    @property
    def BV(self) -> int:
        return next_pow2(self.DHHV)

    def __getitem__(self, knob: str):
        return self.config[knob]


@dataclass(frozen=True)
class Rule:
    """A named constraint: ``broken(point)`` says why a point breaks it, or None."""

    name: str
    broken: Callable[[Point], str | None]
    at_launch: bool = False


@dataclass(frozen=True)
class Limits:
    """What a device allows one program: shared memory in bytes, 32-bit registers per thread."""

    shared_bytes: int = 227 * 1024  # H100/H200: 227 KB opt-in per block
    registers_per_thread: int = 255


H100_LIMITS = Limits()  # also the H200's


@dataclass(frozen=True)
class Family:
    template: str  # file name under templates/
    op: str  # the op family the variants serve, e.g. "chunkwise_fw"
    meaning: str
    axes: dict  # Jinja parameter -> its values
    knobs: tuple[Knob, ...]
    default: Callable[[dict, int, int], dict]  # (structural params, DHQK, DHHV) -> configuration
    rules: tuple[Rule, ...] = ()
    seeds: tuple[tuple[dict, dict], ...] = ()
    inert: dict = field(default_factory=dict)  # (axis, value) -> knobs the kernels of such variants never read
    retired: dict = field(default_factory=dict)  # knob -> the one value old entries may carry (read, then dropped)

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise KeyError(f"{self.template} has no launch parameter {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def choices(self) -> dict[str, tuple]:
        """Knob name -> the values the search tries."""
        return {k.name: k.choices for k in self.knobs}


# ---------------------------------------------------------------------------------------------------------------
# rules shared by several families


def _fits_dims(*pairs: tuple[str, str]) -> Rule:
    """No tile wider than the head dim it tiles, padded to a power of two. ``pairs``: (knob, "k" or "v")."""

    def broken(p: Point) -> str | None:
        for knob, dim in pairs:
            limit = p.BK if dim == "k" else p.BV
            if p[knob] > limit:
                return f"{knob}={p[knob]} wider than {'DHQK' if dim == 'k' else 'DHHV'} padded ({limit})"
        return None

    return Rule("tiles_within_head_dims", broken, at_launch=False)


def _per_thread(n: float, warps: int) -> float:
    return n / (warps * 32)


def _registers(what: str, values: Callable[[Point], float], warps: str) -> Rule:
    """fp32 values a program keeps live, per thread, at most 80% of the register file (else it spills badly)."""

    def broken(p: Point) -> str | None:
        regs = _per_thread(values(p), p[warps])
        if p.limits and regs > 0.8 * p.limits.registers_per_thread:
            return f"~{regs:.0f} fp32 values per thread in registers ({what}, {p[warps]} warps)"
        return None

    return Rule(f"registers_{what.replace(' ', '_')}", broken)


def _shared(what: str, nbytes: Callable[[Point], float]) -> Rule:
    def broken(p: Point) -> str | None:
        need = nbytes(p)
        if p.limits and need > p.limits.shared_bytes:
            return f"~{need:.0f} B of shared memory > {p.limits.shared_bytes} ({what})"
        return None

    return Rule(f"shared_memory_{what.replace(' ', '_')}", broken)


def _multiple(big: str, small: str) -> Rule:
    def broken(p: Point) -> str | None:
        return f"{big}={p[big]} not a multiple of {small}={p[small]}" if p[big] % p[small] else None

    return Rule(f"{big}_multiple_of_{small}", broken, at_launch=True)


def _n_dot_needs_weights_on_k(p: Point) -> str | None:
    # the weights as a product operand built in registers faulted (illegal memory access) on the H200, Triton 3.6
    if p["states_n"] == "dot" and p["states_weighting"] == "v":
        return 'states_n "dot" needs states_weighting "k" or "kT" (the weights on k), not "v"'
    return None


N_DOT_NEEDS_WEIGHTS_ON_K = Rule("n_dot_needs_weights_on_k", _n_dot_needs_weights_on_k, at_launch=True)


def _planes_need_16_bit_inputs(p: Point) -> str | None:
    # planes are the two 16-bit parts of an fp32 state; of fp32 inputs they are the state and a plane of zeros: twice
    # the bytes and one more product for nothing (the launch still computes the right thing)
    planes = p.params.get("state") == "planes" or p.config.get("state_buffers") == "planes"
    if planes and p.dtype_bytes != 2:
        return f"states as planes need 16-bit inputs, not {p.dtype_bytes}-byte ones"
    return None


PLANES_NEED_16_BIT_INPUTS = Rule("planes_need_16_bit_inputs", _planes_need_16_bit_inputs)

# knobs of the states recurrence (the two-pass forward's first kernel, also run by the backward to recompute states)
STATES_WEIGHTING = Knob(
    "states_weighting",
    "the states kernel's product: k weighted by the tokens' weights and transposed in registers (k), k^T loaded "
    "as such with v weighted (v), or k^T loaded as such and weighted there (kT)",
    ("k", "v", "kT"), fill="k")  # fmt: skip
STATES_N = Knob(
    "states_n",
    "how the states kernel forms n: a reduction across threads (sum), or the weighted k^T times a column of ones "
    "on the tensor cores, each term rounded to the inputs' dtype (dot)",
    ("sum", "dot"), fill="sum")  # fmt: skip
STATES_STORE = Knob(
    "states_store",
    "how the states kernel stores each chunk's C: plain stores from registers (plain), or bulk stores of the whole "
    "tile by the copy engine through a tensor descriptor (tma)",
    ("plain", "tma"), fill="plain")  # fmt: skip


def _tma_store_rows(knob: str, form: Callable[[Point], str]) -> Rule:
    """A store through a tensor descriptor (``knob`` "tma") of per-chunk state tiles in ``form(point)`` ("float32",
    "input" or "planes"): rows must start 16-byte aligned (DHHV elements of the stored dtype), and planes, two tiles
    per chunk, keep plain stores. The launchers check their buffers themselves."""

    def broken(p: Point) -> str | None:
        if p[knob] != "tma":
            return None
        if form(p) == "planes":
            return f'{knob} "tma" stores one tile per chunk, not planes'
        elem = 4 if form(p) == "float32" else p.dtype_bytes
        if p.DHHV * elem % 16:
            return f'{knob} "tma" needs rows of 16-byte multiples: DHHV={p.DHHV} of {elem}-byte elements'
        return None

    return Rule(f"tma_store_rows_{knob}", broken)


def _warps(name: str, meaning: str, choices=WARPS, old: str | None = None) -> Knob:
    return Knob(name, meaning, choices, count=True, old=old)


STAGES_KNOB = Knob("num_stages", "software-pipelining depth of the kernels' loops (Triton num_stages)", STAGES,
                   count=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# chunkwise forward, fused single pass


def _fused_fw_default(params: dict, DHQK: int, DHHV: int) -> dict:
    BK = next_pow2(DHQK)
    # the whole of DHQK x dhhv_tile of C lives in registers: narrower value tiles for wider keys
    tile = 64 if BK <= 128 else (32 if BK <= 256 else 16)
    return {"chunk": 64 if BK <= 256 else 32, "dhhv_tile": min(tile, next_pow2(DHHV)), "num_warps": 4,
            "num_stages": 1}  # fmt: skip


# fmt: off
CHUNKWISE_FUSED_FW = Family(
    template="chunkwise_fused_fw.py.j2",
    op="chunkwise_fw",
    meaning="one pass that carries (C, n, m) on chip across chunks and writes no per-chunk states",
    axes={"cell": CELLS, "state": STATE_DTYPES},
    knobs=(
        Knob("chunk", "tokens per chunk (the [chunk, chunk] within-chunk products)", (16, 32, 64, 128), tile=True,
             old="L"),
        Knob("dhhv_tile", "value columns per program (each program carries a DHQK x dhhv_tile slice of C)", TILES,
             tile=True, old="BV"),
        _warps("num_warps", "warps per program"),
        STAGES_KNOB,
    ),  # fmt: skip
    default=_fused_fw_default,
    rules=(
        _fits_dims(("dhhv_tile", "v")),
        # the state C [BK, dhhv_tile] fp32 lives in registers, with the q k^T and decay tiles [chunk, chunk]
        _registers("state and chunk tiles",
                   lambda p: p.BK * p["dhhv_tile"] + 2 * p["chunk"] ** 2 + p["chunk"] * p["dhhv_tile"], "num_warps"),
        _shared("pipelined q k v tiles and C",
                lambda p: p["num_stages"] * (2 * p["chunk"] * p.BK + p["chunk"] * p["dhhv_tile"]) * p.dtype_bytes
                + p.BK * p["dhhv_tile"] * 4),
    ),  # fmt: skip
)
# fmt: on


# ---------------------------------------------------------------------------------------------------------------
# chunkwise forward, two passes (states, then outputs)


def _twopass_fw_default(params: dict, DHQK: int, DHHV: int) -> dict:
    # the best two-pass point of sweeps on an H200 (docs/performance.md): wide value tiles, 4 warps, software
    # pipelining (2 stages: 3 would need ~210 KB of shared memory for fp32 inputs), one program per chunk for the
    # outputs, so q k^T and the gate matrix are formed once per chunk, and a states kernel whose sequential loop
    # keeps only loads, the products and the max-state chain (gates first, k^T loaded as such and weighted there,
    # n on the tensor cores)
    BK, BV = next_pow2(DHQK), next_pow2(DHHV)
    return {"chunk_inter": 64, "chunk_intra": 64, "states_dhqk_tile": min(64, BK), "states_dhhv_tile": min(128, BV),
            "out_dhqk_tile": min(64, BK), "out_dhhv_tile": min(128, BV), "states_warps": 4, "out_warps": 4,
            "num_stages": 2, "out_values": "loop", "states_gates": "pre", "states_weighting": "kT",
            "states_n": "dot", "states_store": "plain"}  # fmt: skip


def _lo128_at_8_warps(p: Point) -> str | None:
    # H200, bf16, Triton 3.6: every such candidate of a study was 4-100x less accurate than at chunk_intra 64 (gate
    # errors median 0.013-0.024, up to 0.38, against 0.003), a GPU-only fault: the same configurations are exact on
    # the CPU (docs/performance.md)
    if p.dtype_bytes == 2 and p["chunk_intra"] >= 128 and p["out_warps"] >= 8:
        return f"chunk_intra={p['chunk_intra']} at {p['out_warps']} output warps in 16 bits: inaccurate on the H200"
    return None


# fmt: off
CHUNKWISE_TWOPASS_FW = Family(
    template="chunkwise_twopass_fw.py.j2",
    op="chunkwise_fw",
    meaning="a states kernel walks the chunk borders and stores the state before every chunk; an output kernel then "
            "computes every chunk in parallel from its stored state",
    axes={"cell": CELLS, "state": TWOPASS_STATES},
    knobs=(
        Knob("chunk_inter", "tokens per step of the states kernel's sequential loop", (16, 32, 64, 128), tile=True,
             old="LI"),
        Knob("chunk_intra", "tokens per output chunk, the stride of the stored states (a multiple of chunk_inter)",
             (16, 32, 64, 128, 256), tile=True, old="LO"),
        # 256: one program over the whole of a 256-wide key, k and v read once per value tile
        Knob("states_dhqk_tile", "rows of C (key dims) per states program", TILES + (256,), tile=True, old="BKS"),
        Knob("states_dhhv_tile", "columns of C (value dims) per states program", TILES, tile=True, old="BVS"),
        Knob("out_dhqk_tile", "key dims per step of the output kernel's loop over DHQK", TILES, tile=True, old="BKO"),
        Knob("out_dhhv_tile", "value columns per output tile", TILES, tile=True, old="BVO"),
        _warps("states_warps", "warps per states program", (4, 8), old="num_warps_states"),
        _warps("out_warps", "warps per output program", (4, 8), old="num_warps_out"),
        STAGES_KNOB,
        Knob("out_values", "output programs: one per value tile, each forming q k^T and the gate matrix again "
             "(tiles), or one per chunk looping over the value tiles (loop)", ("tiles", "loop"), fill="tiles"),
        Knob("states_gates", "the states kernel's gate weights: computed in its sequential loop (inline), or for "
             "every sub-chunk first by a parallel kernel (pre)", ("inline", "pre"), fill="inline"),
        STATES_WEIGHTING,
        STATES_N,
        STATES_STORE,
    ),  # fmt: skip
    default=_twopass_fw_default,
    rules=(
        _multiple("chunk_intra", "chunk_inter"),
        N_DOT_NEEDS_WEIGHTS_ON_K,
        _tma_store_rows("states_store", lambda p: p.params.get("state", "input")),
        _fits_dims(("states_dhqk_tile", "k"), ("out_dhqk_tile", "k"), ("states_dhhv_tile", "v"),
                   ("out_dhhv_tile", "v")),
        _registers("states tile", lambda p: p["states_dhqk_tile"] * p["states_dhhv_tile"], "states_warps"),
        Rule("chunk_intra_128_at_8_warps_16_bit", _lo128_at_8_warps),
        _registers("output chunk",
                   lambda p: 2 * p["chunk_intra"] ** 2 + p["chunk_intra"] * p["out_dhhv_tile"], "out_warps"),
        # per stage: q and k tiles, and the C tile (two of them, hi and lo, as planes)
        _shared("pipelined output tiles",
                lambda p: p["num_stages"] * (2 * p["chunk_intra"] * p["out_dhqk_tile"]
                                             + (1 + (p.params.get("state") == "planes"))
                                             * p["out_dhqk_tile"] * p["out_dhhv_tile"]) * p.dtype_bytes
                + p["chunk_intra"] * p["out_dhhv_tile"] * 2),
        PLANES_NEED_16_BIT_INPUTS,
    ),  # fmt: skip
    # the best output point of an H200 sweep at the 7B layout (1.01 ms against 1.17 at 2 stages), and the
    # per-value-tile output kernel, best at head 128 (docs/performance.md): each is two or more one-knob moves away
    # from the default
    seeds=(({}, {"out_values": "loop", "out_dhqk_tile": 64, "out_dhhv_tile": 128, "num_stages": 3}),
           ({}, {"out_values": "tiles"})),  # fmt: skip
)
# fmt: on


# ---------------------------------------------------------------------------------------------------------------
# parallel forward


def _parallel_fw_default(params: dict, DHQK: int, DHHV: int) -> dict:
    return {"query_tile": 64, "kv_tile": 64 if DHQK <= 128 else 32, "dhqk_tile": min(128, next_pow2(DHQK)),
            "dhhv_tile": min(64, next_pow2(DHHV)), "num_warps": 4, "num_stages": 1}  # fmt: skip


# fmt: off
PARALLEL_FW = Family(
    template="parallel_fw.py.j2",
    op="parallel_fw",
    meaning="flash-attention-like tiles over queries and keys, with an online max state",
    axes={"cell": CELLS},
    knobs=(
        Knob("query_tile", "queries per program", (16, 32, 64, 128), tile=True, old="BQ"),
        Knob("kv_tile", "keys per step of a program's loop over the sequence", (16, 32, 64, 128), tile=True,
             old="BKV"),
        Knob("dhqk_tile", "key dims per step of the q k^T product", (16, 32, 64, 128, 256), tile=True, old="BK"),
        Knob("dhhv_tile", "value columns per program", TILES, tile=True, old="BV"),
        _warps("num_warps", "warps per program"),
        STAGES_KNOB,
    ),  # fmt: skip
    default=_parallel_fw_default,
    rules=(
        _multiple("query_tile", "kv_tile"),
        _fits_dims(("dhqk_tile", "k"), ("dhhv_tile", "v")),
        _registers("score tiles", lambda p: 3 * p["query_tile"] * p["kv_tile"] + p["query_tile"] * p["dhhv_tile"],
                   "num_warps"),
        _shared("pipelined q k v tiles",
                lambda p: p["num_stages"] * (p["query_tile"] + p["kv_tile"]) * p["dhqk_tile"] * p.dtype_bytes
                + p["kv_tile"] * p["dhhv_tile"] * 2),
    ),  # fmt: skip
)
# fmt: on


# ---------------------------------------------------------------------------------------------------------------
# chunkwise backward


def _chunkwise_bw_default(params: dict, DHQK: int, DHHV: int) -> dict:
    # measured on an H200 (docs/performance.md): state tiles 64 x 128 beat 64 x 64; the split kernels' dv value
    # tile (unread by the fused kernel): 128 took 1.15 ms against 1.98 at 64 (7B layout). Per-chunk buffers in fp32,
    # though those in the inputs' dtype halve the state traffic: rounded to 16 bits, dC gave dv up to 2.3x the
    # trusted kernel's error on two adversarial draws of six at the 7B layout on an H100 (docs/hazards.md)
    BK, BV, wide = min(64, next_pow2(DHQK)), min(64, next_pow2(DHHV)), min(128, next_pow2(DHHV))
    return {"chunk": 64, "dhqk_tile": BK, "dhhv_tile": BV, "dv_dhhv_tile": wide, "states_dhqk_tile": BK,
            "states_dhhv_tile": wide, "num_warps": 4, "states_warps": 4, "num_stages": 1, "states": "recompute",
            "state_buffers": "float32", "states_weighting": "v", "dstate_gates": "inline",
            "states_n": "sum", "state_stores": "plain"}  # fmt: skip


# fmt: off
CHUNKWISE_BW = Family(
    template="chunkwise_bw.py.j2",
    op="chunkwise_bw",
    meaning="exact gradients: a reverse recurrence over chunk borders, then the chunks in parallel, either one "
            "program per chunk for dq, dk, dv and the gate gradients (kernels fused), or programs per key tile "
            "and per value tile that each recompute q k^T and the gate matrix (kernels split)",
    axes={"cell": CELLS, "kernels": ("fused", "split")},
    knobs=(
        Knob("chunk", "tokens per chunk", (32, 64, 128), tile=True, old="L"),
        Knob("dhqk_tile", "key dims per tile of the within-chunk kernels", TILES, tile=True, old="BK"),
        Knob("dhhv_tile", "value columns per tile of the within-chunk kernels", TILES, tile=True, old="BV"),
        # its programs recompute q k^T: wide tiles amortise that
        Knob("dv_dhhv_tile", "value columns per program of the split dv kernel", TILES, tile=True, old="BVD",
             fill=lambda config: config["dhhv_tile"]),
        # 256: one program over the whole of a 256-wide key, k and v read once per value tile
        Knob("states_dhqk_tile", "rows of dC per program of the reverse recurrence (and of recomputed states)",
             TILES + (256,), tile=True, old="BKS"),
        Knob("states_dhhv_tile", "columns of dC per program of the reverse recurrence", TILES, tile=True,
             old="BVS"),
        _warps("num_warps", "warps per within-chunk program", (4, 8)),
        _warps("states_warps", "warps per program of the recurrences", (4, 8), old="num_warps_state"),
        # 3: the split kernels' best at the 7B layout (docs/performance.md)
        STAGES_KNOB,
        Knob("states", "the states before every chunk: recomputed by the backward, or the ones a two-pass forward "
             "stored, kept in memory from forward to backward (reuse)", ("recompute", "reuse"), fill="recompute"),
        Knob("state_buffers", "form of the per-chunk state buffers: fp32, whose tiles enter the products with "
             "16-bit tiles in two 16-bit parts split in registers; the inputs' dtype (half the bytes for 16-bit "
             "inputs, rounded once); or planes, those two parts stored (for 16-bit inputs fp32's bytes, no split in "
             "registers). The recurrences run in fp32 either way; with states reuse, the states before the chunks "
             "come in the forward's form", ("float32", "input", "planes"), fill="float32"),
        STATES_WEIGHTING,
        STATES_N,
        Knob("dstate_gates", "the reverse recurrence's per-chunk weights: computed in its sequential loop (inline), "
             "or first for all chunks in parallel (pre)", ("inline", "pre"), fill="inline"),
        Knob("state_stores", "how the recurrences store each chunk's tile of dC (and of recomputed states): plain "
             "stores from registers (plain), or bulk stores of the whole tile by the copy engine through a tensor "
             "descriptor (tma)", ("plain", "tma"), fill="plain"),
    ),  # fmt: skip
    default=_chunkwise_bw_default,
    rules=(
        N_DOT_NEEDS_WEIGHTS_ON_K,
        _tma_store_rows("state_stores", lambda p: p["state_buffers"]),
        PLANES_NEED_16_BIT_INPUTS,
        _fits_dims(("dhqk_tile", "k"), ("states_dhqk_tile", "k"), ("dhhv_tile", "v"), ("states_dhhv_tile", "v"),
                   ("dv_dhhv_tile", "v")),
        _registers("state gradient tile",
                   lambda p: p["states_dhqk_tile"] * p["states_dhhv_tile"]
                   + p["chunk"] * (p["states_dhqk_tile"] + p["states_dhhv_tile"]), "states_warps"),
        # the within-chunk kernels hold several [chunk, chunk] fp32 matrices: past the registers they spill (slow,
        # which the timing shows) but run; shared memory is the hard limit, fitted to the compiler's figures for the
        # fused kernel (bf16 chunk 64: 40 KiB; fp32 chunk 128: 288 KiB, which does not fit an H200): about
        # chunk^2 (4 x dtype bytes + 2) bytes per pipeline stage
        _shared("within-chunk blocks", lambda p: p["num_stages"] * p["chunk"] ** 2 * (4 * p.dtype_bytes + 2)),
    ),  # fmt: skip
    seeds=(
        # the best forced training step at the 7B layout on an H200: 7.84 ms against 8.30 without dv_dhhv_tile 128
        # and dstate_gates "pre"; four knobs that each lost or tied alone (docs/performance.md)
        ({"kernels": "split"}, {"states": "reuse", "dhhv_tile": 64, "num_stages": 3, "dv_dhhv_tile": 128,
                                "dstate_gates": "pre"}),
        # one key tile at head 128 (dP formed once per chunk), 8 warps: by ptxas its dq/dk kernel spills 524 bytes
        # per thread against the fused kernel's 2924 at its default. dhhv_tile 64, not 32: value tiles of 16 and 32
        # miscomputed or faulted on the H200 in bf16
        ({"kernels": "split"}, {"states": "reuse", "dhqk_tile": 128, "dhhv_tile": 64, "num_warps": 8,
                                "dv_dhhv_tile": 128}),
    ),  # fmt: skip
    inert={("kernels", "fused"): ("dv_dhhv_tile",)},
    retired={"states_every": 1},
)
# fmt: on


# ---------------------------------------------------------------------------------------------------------------
# parallel backward


def _parallel_bw_default(params: dict, DHQK: int, DHHV: int) -> dict:
    return {"token_tile": 64, "dhqk_tile": min(64, next_pow2(DHQK)), "dhhv_tile": min(64, next_pow2(DHHV)),
            "num_warps": 4, "num_stages": 1}  # fmt: skip


# fmt: off
PARALLEL_BW = Family(
    template="parallel_bw.py.j2",
    op="parallel_bw",
    meaning="exact gradients of the parallel form: flash-attention-like tiles over queries and keys, no chunk "
            "states",
    axes={"cell": CELLS},
    knobs=(
        Knob("token_tile", "queries (or keys) per program and per step of its loop", (16, 32, 64, 128), tile=True,
             old="BT"),
        Knob("dhqk_tile", "key dims per tile", TILES, tile=True, old="BK"),
        Knob("dhhv_tile", "value columns per tile", TILES, tile=True, old="BV"),
        _warps("num_warps", "warps per program", (4, 8)),
        Knob("num_stages", "software-pipelining depth of the kernels' loops (Triton num_stages)", (1, 2),
             count=True),
    ),  # fmt: skip
    default=_parallel_bw_default,
    rules=(
        _fits_dims(("dhqk_tile", "k"), ("dhhv_tile", "v")),
        # as for the chunkwise backward's [chunk, chunk] blocks
        _shared("token blocks", lambda p: p["num_stages"] * p["token_tile"] ** 2 * (4 * p.dtype_bytes + 2)),
    ),
)
# fmt: on


# ---------------------------------------------------------------------------------------------------------------
# recurrent step and sequence


def _step_default(params: dict, DHQK: int, DHHV: int) -> dict:
    return {"dhqk_tile": min(64, next_pow2(DHQK)), "dhhv_tile": min(64, next_pow2(DHHV)), "num_warps": 4,
            "k_tiles": "loop"}  # fmt: skip


# fmt: off
RECURRENT_STEP = Family(
    template="recurrent_step.py.j2",
    op="step_fw",
    meaning="one token: the state update and the output, optionally in place",
    axes={"cell": CELLS},
    knobs=(
        Knob("dhqk_tile", "rows of C per step of a program's loop (or per program, k_tiles programs)",
             (16, 32, 64, 128, 256), tile=True, old="BK"),
        Knob("dhhv_tile", "columns of C per program", (16, 32, 64, 128), tile=True, old="BV"),
        _warps("num_warps", "warps per program", (1, 2, 4, 8)),
        Knob("k_tiles", "the key tiles: walked in sequence by each value tile's program (loop), or one program per "
             "tile of C with a second pass summing their shares (programs)", ("loop", "programs"), fill="loop"),
    ),  # fmt: skip
    default=_step_default,
    rules=(
        _fits_dims(("dhqk_tile", "k"), ("dhhv_tile", "v")),
        _registers("state tile", lambda p: p["dhqk_tile"] * p["dhhv_tile"], "num_warps"),
    ),
)
# fmt: on


def _sequence_default(params: dict, DHQK: int, DHHV: int) -> dict:
    return {"dhhv_tile": min(64 if next_pow2(DHQK) <= 128 else 32, next_pow2(DHHV)), "num_warps": 4}


# fmt: off
RECURRENT_SEQUENCE = Family(
    template="recurrent_sequence.py.j2",
    op="sequence_fw",
    meaning="a whole sequence step by step in one launch, the state on chip",
    axes={"cell": CELLS},
    knobs=(
        Knob("dhhv_tile", "columns of C per program (each carries a DHQK x dhhv_tile slice)", (16, 32, 64),
             tile=True, old="BV"),
        _warps("num_warps", "warps per program", (1, 2, 4, 8)),
    ),
    default=_sequence_default,
    rules=(
        _fits_dims(("dhhv_tile", "v")),
        _registers("state slice", lambda p: p.BK * p["dhhv_tile"], "num_warps"),
    ),
)
# fmt: on

FAMILIES: tuple[Family, ...] = (CHUNKWISE_TWOPASS_FW, CHUNKWISE_FUSED_FW, CHUNKWISE_BW, PARALLEL_BW, PARALLEL_FW,
                                RECURRENT_STEP, RECURRENT_SEQUENCE)  # fmt: skip
_BY_TEMPLATE = {f.template: f for f in FAMILIES}


def of(template: str) -> Family:
    try:
        return _BY_TEMPLATE[template]
    except KeyError:
        raise KeyError(f"no kernel family for template {template!r}") from None


# ---------------------------------------------------------------------------------------------------------------
# reading, checking and judging configurations


def canonical(template: str, config: dict) -> dict:
    """``config`` in current knob names: old names renamed, knobs added since an entry was written filled with the
    value it ran with, retired knobs at their one remaining value dropped. Unknown names and both spellings of one
    knob raise MLSTMInputError; missing knobs without a fill are left missing (see ``problems``)."""
    family = of(template)
    out = {}
    renames = {k.old: k.name for k in family.knobs if k.old}
    for name, value in config.items():
        if name in family.retired:
            if value != family.retired[name]:
                raise MLSTMInputError(f"launch parameter {name}={value!r} of {template} is retired (only "
                                      f"{family.retired[name]!r} is still read)")  # fmt: skip
            continue
        new = renames.get(name, name)
        if new in out:
            former = name if new != name else next(o for o, n in renames.items() if n == new and o in config)
            raise MLSTMInputError(f"launch parameter {new} given twice (as {new} and its former name {former})")
        out[new] = value
    for knob in family.knobs:
        if knob.name not in out and knob.fill is not _NOT_SET:
            try:
                out[knob.name] = knob.fill(out) if callable(knob.fill) else knob.fill
            except KeyError:  # filled from a knob that is missing too: reported as missing
                pass
    return out


def problems(template: str, config: dict) -> list[str]:
    """What stops ``config`` (current names) from being launched: unknown or missing knobs, values a knob does not
    take, broken launch rules."""
    family = of(template)
    unknown = sorted(set(config) - set(family.names))
    missing = [k for k in family.names if k not in config]
    out = []
    if unknown:
        out.append(f"unknown launch parameters {unknown}")
    if missing:
        out.append(f"missing launch parameters {missing}")
    if out:
        return out
    out = [why for knob in family.knobs if (why := knob.check(config[knob.name]))]
    if out:
        return out
    point = Point({}, config, 16, 16)
    return [why for rule in family.rules if rule.at_launch and (why := rule.broken(point))]


_CHECKED: dict[tuple, dict] = {}


def checked(template: str, config: dict) -> dict:
    """``config`` in current names (a new dict), or MLSTMInputError naming every problem and the family's knobs.
    Configurations that passed are remembered, so a repeated launch (the step kernel's, say) costs one lookup."""
    try:
        key = (template, *config.items())
        hit = _CHECKED.get(key)
    except TypeError:  # an unhashable value: checked below, which names it
        key, hit = None, None
    if hit is not None:
        return dict(hit)
    out = canonical(template, config)
    found = problems(template, out)
    if found:
        names = ", ".join(of(template).names)
        raise MLSTMInputError(f"{template}: {'; '.join(found)} (its launch parameters: {names})")
    if key is not None and len(_CHECKED) < 4096:
        _CHECKED[key] = out
    return dict(out)


def default_config(variant, DHQK: int, DHHV: int) -> dict:
    """The configuration ``variant`` (an autotune.variants.Variant) runs with when no database entry applies."""
    return of(variant.template).default(variant.params, DHQK, DHHV)


def invalid(variant, config: dict, DHQK: int, DHHV: int, dtype_bytes: int, limits: Limits) -> str | None:
    """Why (variant, config) cannot or should not run for these head dims on this device (the first broken rule,
    prefixed with its name), or None."""
    try:
        config = canonical(variant.template, config)
    except MLSTMInputError as err:
        return str(err)
    found = problems(variant.template, config)
    if found:
        return found[0]
    point = Point(variant.params, config, DHQK, DHHV, dtype_bytes, limits)
    for rule in of(variant.template).rules:
        why = rule.broken(point)
        if why:
            return f"{rule.name}: {why}"
    return None


class _WithConstexprs:
    """A kernel whose launches get the spec's constexprs for it (bind)."""

    def __init__(self, kernel, constexprs: dict):
        self._kernel, self._constexprs = kernel, constexprs

    def __getitem__(self, grid):
        launch = self._kernel[grid]
        return lambda *args, **kwargs: launch(*args, **self._constexprs, **kwargs)

    def __getattr__(self, name):
        return getattr(self._kernel, name)


class _Bound:
    def __init__(self, module, constexprs: dict[str, dict]):
        self._module, self._constexprs = module, constexprs

    def __getattr__(self, name):
        kernel = getattr(self._module, name)
        return _WithConstexprs(kernel, self._constexprs[name]) if name in self._constexprs else kernel


_WIRED: dict[str, tuple[Knob, ...]] = {}  # template -> its knobs that declare a kernel constexpr


def bind(module, template: str, config: dict):
    """``module`` (a generated module) whose kernels get, at every launch, the constexprs of the knobs that declare
    one (Knob.constexpr, Knob.kernels), from ``config``: adding such a knob is an edit of the spec and the template
    only. ``module`` itself when the family has none."""
    wired = _WIRED.get(template)
    if wired is None:
        wired = _WIRED[template] = tuple(k for k in of(template).knobs if k.constexpr)
    if not wired:  # every family now: a dict hit per launch
        return module
    constexprs: dict[str, dict] = {}
    for knob in wired:
        for kernel in knob.kernels:
            constexprs.setdefault(kernel, {})[knob.constexpr] = config[knob.name]
    return _Bound(module, constexprs)


def inert(variant) -> tuple[str, ...]:
    """The knobs of ``variant``'s template that its kernels do not read."""
    family = of(variant.template)
    return tuple(k for (axis, value), knobs in family.inert.items() if variant.params.get(axis) == value
                 for k in knobs)  # fmt: skip
