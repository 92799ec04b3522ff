"""The correctness gate: one check, run by the GPU tests, by the tuner on every candidate, and by
``mlstm-tune validate`` on every database entry and built-in default.

A candidate is a function from an input draw (q, k, v, i, f and a cotangent dh, dict of tensors) to its named
outputs (h; or dq, dk, dv, di, df for a training step). It passes when, on every draw:

  determinism  ``runs`` calls on the same inputs return bitwise-equal outputs (each call allocates its own outputs),
               and one call more does too after all memory it could be handed unwritten was filled with NaN: the
               CUDA caching allocator's free blocks, and every ``torch.empty*`` made during the call. A race, or a
               read of memory never written, gives other bits.
  accuracy     for each output separately, its relative Frobenius error against the float64 oracle is at most
               FACTOR (1.5) x the error of a trusted kernel on the same inputs (never only a maximum over the
               outputs), or under the dtype's FLOOR (where the trusted kernel is exact to a few fp32 roundings,
               summation order alone moves the error by more than 1.5x); every output finite. The trusted kernel
               is itself held to determinism and to an absolute limit (ABSOLUTE_LIMITS, from docs/math.md §7).
               Draws of one ``pool`` are judged together, as one input of their combined size: the errors are
               taken over all their elements at once, so a draw weighs by its errors' size, a fault that is large
               on any draw still shows, and one draw's luck is not a verdict.

Draws (``draw_inputs``): "adversarial" (input gate 3 N(0, 1) with a spike of +18 at S/3 and of -15 at S/2, forget
gate U(-6, 8): the stabiliser's extremes) and "model" (input gate N(0, 1), forget gate 3 + 1.5 N(0, 1): what a
trained model feeds). fp16 spikes are +8 / -8: fp16 holds no output of a -15 spike. Every token of a draw keeps its
normaliser |n^T q| at least KINK_MARGIN (5%) away from the floor of h's denominator max(|n^T q|, floor) (docs/math.md
§7): there the gradient jumps, and which side a kernel lands on is decided by its rounding, not by its correctness
(one such token of 4,000 gave a correct bf16 backward 100x the trusted kernel's dq error on the H200). And no token
whose denominator is n^T q lets it cancel by more than condition_limit (1 / (8 u): bf16 32, fp16 256; fp32 84):
beyond, every kernel's error at that token is carried by its rounding of n^T q, the token's large |h| lets it carry a
whole draw's error, and which of two correct kernels is closer is chance (one token of condition 289 gave the
trusted kernel a third of the error its own rounding points give on average, and a correct head-128 backward 2.8x
its di; in fp32 one token of condition 322 gave the fused forward 6.5x the trusted kernel's h error; docs/hazards.md).

Determinism contract, the same for every generated kernel: the same bits on the same inputs, launch configuration
and GPU. Each output element is written by one program, and no atomic takes part in the arithmetic. Where programs
meet (the step kernel's arrival counter, which picks the program that finishes a head), the shares are summed in a
fixed order, and every program computes the values it may write identically. The gate checks exactly this contract.
It says nothing across GPUs or configurations, whose rounding differs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

DRAWS = ("adversarial", "model")
# the gate's draws on a GPU, (kind, seed): four adversarial ones judged as one pool, and the model one alone
GPU_DRAWS = (("adversarial", 1), ("model", 2), ("adversarial", 3), ("adversarial", 4), ("adversarial", 5))
FACTOR = 1.5
# errors under these are rounding-order noise, not a faulty kernel (fp32: the true-fp32 limit of docs/math.md §7)
FLOORS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-4, torch.bfloat16: 5e-4}
# what the trusted kernel must meet on its own: the limits of docs/math.md §7 for 16-bit and fp64; for fp32 10x §7's
# 1e-5, the allowance §7 gives an ill-conditioned h (the adversarial draw's spikes make it so)
ABSOLUTE_LIMITS = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
RUNS = 5

Outputs = dict[str, torch.Tensor]
Kernel = Callable[[dict], Outputs]


def draw_inputs(kind: str, B: int, NH: int, S: int, DHQK: int, DHHV: int, *, dtype: torch.dtype, device,
                seed: int = 0, cell: str = "exp") -> dict:  # fmt: skip
    """One input draw of the gate: q, k, v ~ N(0, 1) in ``dtype``, gates i, f in fp32 (see the module docstring),
    and a cotangent dh ~ N(0, 1) of h for gradients. Drawn by a generator of ``device``; tokens whose normaliser
    cancels beyond the limit get their q turned (well_conditioned), then tokens near the kink of the ``cell``'s
    denominator get their q moved off it (off_the_kink)."""
    if kind not in DRAWS:
        raise ValueError(f"unknown draw {kind!r}: one of {DRAWS}")
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)

    x = {"q": randn(B, NH, S, DHQK), "k": randn(B, NH, S, DHQK), "v": randn(B, NH, S, DHHV)}
    if kind == "adversarial":
        x["i"] = 3.0 * randn(B, NH, S)
        up, down = (8.0, -8.0) if dtype == torch.float16 else (18.0, -15.0)
        x["i"][..., S // 3] = up
        x["i"][..., S // 2] = down
        x["f"] = torch.rand(B, NH, S, generator=gen, device=device) * 14.0 - 6.0
    else:
        x["i"] = randn(B, NH, S)
        x["f"] = 3.0 + 1.5 * randn(B, NH, S)
    x["dh"] = randn(B, NH, S, DHHV)
    x = {name: t.to(dtype) if name in ("q", "k", "v", "dh") else t for name, t in x.items()}
    return off_the_kink(well_conditioned(x, cell), cell)


KINK_MARGIN = 0.05
MOVES = 8  # tries of off_the_kink


def _normaliser(x: dict, cell: str = "exp") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, sum of |terms|, floor, a) per token, in float64 from the inputs as given (docs/math.md §1-§3, no initial
    state: the gate's draws have none): s_t = sum_j w_tj (q_t . k_j) / sqrt(DHQK) = q_t . a_t / sqrt(DHQK) with the
    stabilised weights w_tj = D_tj e^-m_t and the weighted keys a_t = sum_j w_tj k_j; the floor of h's denominator is
    e^-m_t for the exp cell and 1 for the (normalised) sig cell."""
    q, k = x["q"].double(), x["k"].double()
    lf = torch.nn.functional.logsigmoid(x["f"].double())
    i_log = x["i"].double() if cell == "exp" else torch.nn.functional.logsigmoid(x["i"].double())
    F = lf.cumsum(-1)
    S = F.shape[-1]
    causal = torch.ones(S, S, dtype=torch.bool, device=F.device).tril()
    log_D = torch.where(causal, F[..., :, None] - F[..., None, :] + i_log[..., None, :], -torch.inf)
    m = torch.maximum(log_D.amax(-1), F) if cell == "exp" else torch.zeros_like(F)  # F_t: the zero initial state
    w = torch.exp(log_D - m[..., None])
    terms = (q @ k.transpose(-1, -2)) * w * q.shape[-1] ** -0.5
    floor = torch.exp(-m) if cell == "exp" else torch.ones_like(m)
    return terms.sum(-1), terms.abs().sum(-1), floor, w @ k


def normaliser_ratio(x: dict, cell: str = "exp") -> torch.Tensor:
    """|n_t^T q_t| / floor_t per token (B, NH, S): h's denominator max(|n^T q|, floor) has its kink where the ratio
    is 1 (_normaliser)."""
    s, _, floor, _ = _normaliser(x, cell)
    return s.abs() / floor


def condition_limit(dtype: torch.dtype) -> float:
    """The largest condition of s_t a draw in ``dtype`` keeps at a token whose denominator is s_t. 16-bit: 1 / (8 u),
    u the unit roundoff (bf16 32, fp16 256). fp32 and fp64: FLOORS[dtype] / (2 u) (fp32 84, fp64 about 4,500). Their
    kernels round in the inputs' own precision, so a token of condition k carries about k u of relative error and,
    its |h| growing with k, can carry a whole draw's: with k u at most half the floor, such a token alone cannot put
    a correct kernel past it. (An fp32 draw on an H100: one token of condition 322 carried 85-100% of every kernel's
    h error, the fused forward's 1.5e-5 against the trusted kernel's 2.3e-6; docs/hazards.md.)"""
    eps = torch.finfo(dtype).eps  # 2 u
    return 0.25 / eps if dtype in (torch.bfloat16, torch.float16) else FLOORS[dtype] / eps


def well_conditioned(x: dict, cell: str = "exp") -> dict:
    """``x`` with the q of every token whose denominator is its normaliser s_t (normaliser ratio above
    1 - KINK_MARGIN) and whose s_t cancels by more than condition_limit(q's dtype) turned toward its weighted keys
    a_t: q_t + beta |q_t| sign(s_t) a_t / |a_t|, beta 0.25 first and larger on each later try, until the condition
    is at most half the limit (so rounding q later cannot put it back over). Only token t reads q_t. At such a token
    every 16-bit kernel's gradient is carried by its rounding of s_t (up to condition x u relative), so which of two
    correct kernels is closer there is chance, and the token's large |h| lets it decide a whole draw's error
    (docs/hazards.md: one token of condition 289 put a correct backward at 2.8x the trusted kernel's di)."""
    limit = condition_limit(x["q"].dtype)

    def cancelling(s, abs_sum, floor, bound):  # tokens whose denominator is s_t and whose s_t cancels beyond bound
        return (abs_sum > bound * s.abs()) & (s.abs() > (1.0 - KINK_MARGIN) * floor)

    moved = None
    for attempt in range(MOVES):
        s, abs_sum, floor, a = _normaliser(x, cell)
        bad = cancelling(s, abs_sum, floor, limit)
        if moved is not None:
            bad |= moved & cancelling(s, abs_sum, floor, limit / 2)
        if not bool(bad.any()):
            return x
        moved = bad if moved is None else moved | bad
        q = x["q"].double()
        beta = 0.25 * (attempt + 1)
        toward = beta * q.norm(dim=-1, keepdim=True) * torch.sign(s)[..., None] * a / a.norm(dim=-1, keepdim=True)
        x = dict(x, q=torch.where(bad[..., None], q + toward, q).to(x["q"].dtype))
    if bool(cancelling(*_normaliser(x, cell)[:3], limit).any()):
        raise RuntimeError(
            f"a token's normaliser still cancels by more than {limit:g} after moving its q {MOVES} times"
        )
    return x


def off_the_kink(x: dict, cell: str = "exp") -> dict:
    """``x`` with the q of every token whose normaliser ratio is within KINK_MARGIN of 1 scaled up (ratio below 1)
    or down (at or above): by 1.25 / 0.8 first, and further on each later try (1.5 / 0.67, ...). In exact arithmetic
    the ratio is linear in q_t and nothing else depends on q_t, so one try moves such a token 20-25% off the kink and
    no other token moves; but q is stored in the draw's dtype, and where n^T q is a small difference of large terms,
    rounding the scaled q moves the ratio more than the scaling does: such a token is measured again and moved
    again."""
    for attempt in range(MOVES):
        ratio = normaliser_ratio(x, cell)
        near = (ratio - 1.0).abs() < KINK_MARGIN
        if not bool(near.any()):
            return x
        up = 1.0 + 0.25 * (attempt + 1)
        factor = torch.where(near, torch.where(ratio < 1.0, up, 1.0 / up), 1.0)[..., None]
        x = dict(x, q=(x["q"].double() * factor).to(x["q"].dtype))
    if bool(((normaliser_ratio(x, cell) - 1.0).abs() < KINK_MARGIN).any()):
        raise RuntimeError(
            f"a token stays within KINK_MARGIN of the normaliser's kink after moving its q {MOVES} times"
        )
    return x


class _PoisonEmpty(TorchFunctionMode):
    """Every torch.empty* made while active comes back filled with NaN (floats) or -1 (integers)."""

    MAKERS = (torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.MAKERS and isinstance(out, torch.Tensor) and out.dtype != torch.bool:
            out.fill_(float("nan") if out.is_floating_point() else -1)
        return out


def _fill_free_cuda_blocks() -> None:
    """Fill the CUDA caching allocator's free blocks with 0xFF bytes (NaN in every float type): allocate each free
    block's size, largest first (the allocator fits a request into the smallest free block that holds it), fill,
    free."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    device = torch.cuda.current_device()
    sizes = sorted((b["size"] for seg in torch.cuda.memory_snapshot() if seg["device"] == device
                    for b in seg["blocks"] if b["state"] == "inactive"), reverse=True)  # fmt: skip
    held = []
    for size in sizes:
        held.append(torch.empty(size, dtype=torch.uint8, device=f"cuda:{device}"))
        held[-1].fill_(0xFF)
    torch.cuda.synchronize()
    del held


@contextmanager
def poisoned_memory():
    """Memory handed out unwritten inside the block holds NaN (see the module docstring)."""
    _fill_free_cuda_blocks()
    with _PoisonEmpty():
        yield


def _bits(outputs: Outputs) -> tuple:
    return tuple(t.detach().contiguous().flatten().view(torch.uint8).cpu().numpy().tobytes() for t in outputs.values())


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (Frobenius); inf when got holds NaN or Inf."""
    return _pooled_error([(got, ref)])


def determinism(kernel: Kernel, x: dict, runs: int = RUNS) -> tuple[Outputs, int]:
    """The first call's outputs and how many bitwise-distinct results ``runs`` plain calls and one poisoned call
    gave."""
    first = kernel(x)
    seen = {_bits(first)}
    for _ in range(runs - 1):
        seen.add(_bits(kernel(x)))
    with poisoned_memory():
        seen.add(_bits(kernel(x)))
    return first, len(seen)


@dataclass
class Verdict:
    """The gate's result for one candidate over all draws (errors: the worst draw's, per output)."""

    runs: int
    distinct_outputs: int = 1
    error_by_output: dict = field(default_factory=dict)
    reference_error_by_output: dict = field(default_factory=dict)
    limit_by_output: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def _worst(self) -> str | None:
        ratios = {k: e / self.limit_by_output[k] for k, e in self.error_by_output.items()}
        return max(ratios, key=ratios.get) if ratios else None

    @property
    def error(self) -> float | None:
        """The error of the output nearest its limit."""
        worst = self._worst()
        return None if worst is None else self.error_by_output[worst]

    @property
    def reference_error(self) -> float | None:
        """The trusted kernel's error on that same output."""
        worst = self._worst()
        return None if worst is None else self.reference_error_by_output[worst]

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else f"passed ({self.runs + 1} runs, 1 distinct output)"


@dataclass
class Draw:
    """One input draw with what the candidate is judged against: the float64 truth and the trusted kernel's
    outputs (computed once per draw; the tuner keeps them for every candidate of a shape)."""

    x: dict
    truth: Outputs
    reference: Outputs
    pool: str = ""  # draws of one non-empty pool are judged together (module docstring); "" judges a draw alone


class UntrustedReference(RuntimeError):
    """The trusted kernel itself gave different bits twice: no candidate can be judged against it."""


def prepare(x: dict, oracle: Kernel, trusted: Kernel, pool: str = "") -> Draw:
    """A Draw of ``x``: the oracle's outputs, and the trusted kernel's, which must give the same bits twice."""
    reference = trusted(x)
    if _bits(trusted(x)) != _bits(reference):
        raise UntrustedReference("the trusted kernel gave different bits on the same inputs")
    return Draw(x, oracle(x), reference, pool)


def _squares(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(||got - ref||^2, ||ref||^2) in float64; inf when got holds NaN or Inf."""
    ref = ref.double()
    if not bool(torch.isfinite(got).all()):
        return float("inf"), (ref.norm() ** 2).item()
    return ((got.double() - ref).norm() ** 2).item(), (ref.norm() ** 2).item()


def _pooled_error(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The relative Frobenius error of several (got, ref) pairs taken together."""
    err2, ref2 = (sum(parts) for parts in zip(*(_squares(g, r) for g, r in pairs), strict=True))
    return err2**0.5 / max(ref2**0.5, 1e-300)


def judge(candidate: Kernel, draws: list[Draw], dtype: torch.dtype, runs: int = RUNS,
          factor: float = FACTOR) -> Verdict:  # fmt: skip
    """Run the gate (module docstring) on ``draws``."""
    verdict = Verdict(runs=runs)
    floor, absolute = FLOORS[dtype], ABSOLUTE_LIMITS[dtype]
    label = {n: f"draw {n}" if len(draws) > 1 else "the draw" for n in range(len(draws))}
    groups: dict[str, list[int]] = {}  # a pool's draws, or one draw alone
    got_by_draw = []
    for n, draw in enumerate(draws):
        got, distinct = determinism(candidate, draw.x, runs)
        got_by_draw.append(got)
        verdict.distinct_outputs = max(verdict.distinct_outputs, distinct)
        if distinct > 1:
            verdict.reasons.append(f"nondeterministic: {distinct} distinct outputs in {runs + 1} runs on {label[n]}")
        if set(got) != set(draw.truth):
            raise ValueError(f"the candidate returned {sorted(got)}, the oracle {sorted(draw.truth)}")
        for name, ref64 in draw.truth.items():
            ref_err = relative_error(draw.reference[name], ref64)
            if not ref_err <= absolute:
                verdict.reasons.append(
                    f"the trusted kernel's {name} is off on {label[n]}: {ref_err:.3g} > {absolute:g}"
                )
        groups.setdefault(draw.pool or f"#{n}", []).append(n)
    for pool, members in groups.items():
        where = label[members[0]] if len(members) == 1 else f"the {len(members)} {pool} draws together"
        for name in draws[members[0]].truth:
            err = _pooled_error([(got_by_draw[n][name], draws[n].truth[name]) for n in members])
            ref_err = _pooled_error([(draws[n].reference[name], draws[n].truth[name]) for n in members])
            if err > verdict.error_by_output.get(name, -1.0):
                verdict.error_by_output[name] = err
                verdict.reference_error_by_output[name] = ref_err
                verdict.limit_by_output[name] = max(factor * ref_err, floor)
            if ref_err <= absolute and not err <= max(factor * ref_err, floor):
                verdict.reasons.append(f"{name}: relative error {err:.3g} > {factor:g} x the trusted kernel's "
                                       f"{ref_err:.3g} on {where}")  # fmt: skip
    return verdict
