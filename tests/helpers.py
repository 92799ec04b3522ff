"""Test helpers: error metric, per-dtype limits (docs/math.md §7), shapes, and the comparison log.

Every numerical comparison prints one line naming what it compares, e.g.
    Test tests/test_x.py::test[..] target=chunkwise--native_custbw vs baseline=reference.mlstm_recurrent(fp64)
    with S=65, B=1, NH=2, DHQK=48, DHHV=96, dtype=torch.float32
and appends its per-tensor errors to test_outputs/<timestamp>/<test>.json, so a failure leaves evidence to read.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# docs/math.md §7: relative Frobenius error limits by compute dtype.
LIMITS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}
GRAD_LIMIT_FP64 = 1e-8
# h = C^T q / max(|n^T q|, exp(-m)) is ill-conditioned where |n^T q| is small: there no float32 algorithm reaches
# 1e-5 (measured on the S=500 shape: one row with |h| = 158 carries an error of 7e-3 in all three native forms, while
# the states agree to 3e-8). So a reduced-precision result passes when it is within the dtype's limit OR within
# CONDITION_FACTOR x the change that rounding the inputs to the dtype's unit roundoff causes in the float64 oracle
# (a backward-error bound: conditioning_limits below).
CONDITION_FACTOR = 10.0
# fp16 represents 6e-8 .. 65504: gate outliers of -20 give true outputs of ~1e-8, which no fp16 tensor can hold, so
# fp16 tests draw outliers up to +-8 (the +-20 of docs/math.md §7 runs in the fp32/fp64 tests).
MAX_OUTLIER = {torch.float16: 8.0}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@dataclass(frozen=True)
class Shape:
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int

    @property
    def id(self) -> str:
        return f"B{self.B}-NH{self.NH}-S{self.S}-DQK{self.DHQK}-DV{self.DHHV}"

    def dims(self):
        return (self.B, self.NH, self.S, self.DHQK, self.DHHV)


# docs/math.md §7 shape list: S not a multiple of any tile (1, 7, 63, 65, 500), S >= 2 x the largest chunk (64),
# head dims that are not powers of two (48, 96, 192), DHQK != DHHV.
SHAPES = [
    Shape(1, 1, 1, 16, 16),
    Shape(1, 2, 7, 48, 96),
    Shape(2, 1, 63, 96, 48),
    Shape(1, 2, 65, 32, 32),
    Shape(1, 1, 130, 192, 64),
    Shape(1, 1, 500, 48, 24),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has NaN/Inf or the shapes differ."""
    if out is None or ref is None or tuple(out.shape) != tuple(ref.shape):
        return math.inf
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


class ComparisonLog:
    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def for_session(cls) -> ComparisonLog:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        return cls(REPO / "test_outputs" / stamp)

    def check(self, *, test_id, target, baseline, dims, dtype, pairs: dict, limit: float | dict[str, float]):
        B, NH, S, DHQK, DHHV = dims
        line = (
            f"Test {test_id} target={target} vs baseline={baseline} with S={S}, B={B}, NH={NH}, DHQK={DHQK}, "
            f"DHHV={DHHV}, dtype={dtype}"
        )
        print(line)
        errors = {name: rel_err(out, ref) for name, (out, ref) in pairs.items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id)[-180:]
        limits = limit if isinstance(limit, dict) else {name: limit for name in errors}
        record = {"test": line, "limits": limits, "errors": {k: (v if math.isfinite(v) else "inf") for k, v in
                                                             errors.items()}}  # fmt: skip
        with open(self.folder / f"{safe}.json", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        failing = {k: f"{v:.3g} > {limits[k]:.3g}" for k, v in errors.items() if not v <= limits[k]}
        assert not failing, f"{line}: errors above the limit: {failing} (all errors: {errors})"


def conditioning_limits(dtype: torch.dtype, oracle, x: dict, draws: int = 2) -> dict[str, float]:
    """Per-tensor limits for a reduced-precision check: max(LIMITS[dtype], CONDITION_FACTOR x the largest error the
    float64 ``oracle(x) -> {name: tensor}`` shows when every input is perturbed relatively by the unit roundoff of
    ``dtype``). The perturbation is random and independent of the kernel under test."""
    u = UNIT_ROUNDOFF[dtype]
    gen = torch.Generator().manual_seed(1234)
    x64 = {k: v.detach().double().cpu() for k, v in x.items()}
    exact = oracle(x64)
    worst = dict.fromkeys(exact, 0.0)
    for _ in range(draws):
        perturbed = {k: v * (1 + u * torch.randn(v.shape, generator=gen, dtype=torch.float64)) for k, v in x64.items()}
        for name, out in oracle(perturbed).items():
            err = rel_err(out, exact[name])
            worst[name] = max(worst[name], err if math.isfinite(err) else 0.0)
    return {name: max(LIMITS[dtype], CONDITION_FACTOR * err) for name, err in worst.items()}


def widened_by(limits: dict[str, float], baseline: dict, ref: dict) -> dict[str, float]:
    """``limits``, each raised to CONDITION_FACTOR x a trusted baseline's error against ``ref`` on the same inputs (a
    baseline with NaN or Inf leaves its limit as it was)."""
    out = {}
    for name, limit in limits.items():
        err = rel_err(baseline[name], ref[name])
        out[name] = max(limit, CONDITION_FACTOR * err) if math.isfinite(err) else limit
    return out


def chunkwise_bw_config(variant, DHQK: int, DHHV: int, L: int, states: str = "recompute", tile: int = 32) -> dict:
    """The chunkwise backward's default configuration for these head dims with chunks of L tokens and every tile
    (within-chunk, dv and state tiles) ``tile`` wide."""
    from autotune import families

    tiles = ("dhqk_tile", "dhhv_tile", "dv_dhhv_tile", "states_dhqk_tile", "states_dhhv_tile")
    return {**families.default_config(variant, DHQK, DHHV), "chunk": L, "states": states, **dict.fromkeys(tiles, tile)}


# Bad input: a case is a mutation of valid inputs and a pattern the MLSTMInputError message must contain
# (tests/test_bad_input.py for PyTorch, tests/test_jax_native.py for JAX)


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[dict], None]
    match: str  # regular expression the MLSTMInputError message must contain
    applies: Callable[[object], bool] = lambda kernel: True


def set_input(name: str, make: Callable):
    """The mutation that replaces input ``name`` by ``make(it)``."""

    def mutate(x: dict) -> None:
        x[name] = make(x[name])

    return mutate


def set_kw(name: str, value):
    """The mutation that sets argument ``name`` to ``value``."""

    def mutate(x: dict) -> None:
        x[name] = value

    return mutate


def drop(*names: str):
    """The mutation that passes None for ``names``."""

    def mutate(x: dict) -> None:
        for name in names:
            x[name] = None

    return mutate


def compiled(code: list[str]) -> str:
    """stdout of ``python *code`` in the repository with TRITON_INTERPRET unset (the tests set it: nothing compiles)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, *code], capture_output=True, text=True, env=env, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout
