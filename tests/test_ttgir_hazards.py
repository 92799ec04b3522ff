"""autotune.hazards on kernels compiled for sm_90 without a GPU: both hazards are found in the minimal reproducers'
hazardous forms and not in their safe ones, in no shipped database entry and in no built-in default; and the gate
fails a candidate the static check flags."""

from __future__ import annotations

import json

import pytest
from helpers import compiled

from autotune import hazards, measure

REPRODUCER = """
import json, sys, torch
from triton.backends.compiler import GPUTarget
from autotune import compile_check, hazards
sys.path.insert(0, "tests/gpu")
import test_gpu_hazards as r
P, L, D, BV = 4, 64, 256, 128
bf16 = dict(dtype=torch.bfloat16)
args = [torch.zeros(P, L, D, **bf16), torch.zeros(P, L, D, **bf16), torch.zeros(P, D, BV, **bf16), torch.zeros(P, D),
        torch.zeros(P, L, L), torch.zeros(P, L, BV), torch.zeros(P, L)]
out = {}
for split in (0, 1):
    for stages in (1, 2, 3):
        kw = dict(D=D, L=L, BK=64, BV=BV, SPLIT=split, num_warps=4, num_stages=stages)
        ttgir = compile_check._compile(r.mixed_use_kernel, args, kw, GPUTarget("cuda", 90, 32)).asm["ttgir"]
        out[f"{split}-{stages}"] = hazards.shallow_mixed_use_rings(ttgir, stages)
P, L, D = 4, 64, 128
args = [torch.zeros(P, L, D, **bf16) for _ in range(4)] + [torch.zeros(P, L, D), torch.zeros(P, L, D)]
for form in (0, 1):
    kw = dict(D=D, DV=D, L=L, BK=64, TRANSPOSED_OUTPUT=form, num_warps=4, num_stages=1)
    ttgir = compile_check._compile(r.transposed_dot_kernel, args, kw, GPUTarget("cuda", 90, 32)).asm["ttgir"]
    out[f"trans-{form}"] = hazards.transposed_accumulators(ttgir)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reproducer_rings() -> dict:
    return json.loads(compiled(["-c", REPRODUCER]))


@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_the_detector_finds_the_reproducers_hazard_and_only_it(reproducer_rings, num_stages):
    assert reproducer_rings[f"1-{num_stages}"] == []  # q . n in a loop of its own
    if num_stages == 1:  # nothing is pipelined: no ring at all
        assert reproducer_rings["0-1"] == []
    else:  # q's ring is one buffer shallower than the others, and read by the dot and by registers
        (ring,) = reproducer_rings[f"0-{num_stages}"]
        assert ring.startswith("%b_q")


def test_the_detector_finds_the_transposed_accumulator_and_only_it(reproducer_rings):
    assert len(reproducer_rings["trans-0"]) == 1  # dk = dot(trans(dA), q): dA's transpose goes to shared memory
    assert reproducer_rings["trans-1"] == []  # dk^T = dot(trans(q), dA)


def test_no_shipped_entry_or_default_has_the_hazard():
    points = json.loads(compiled(["-m", "autotune.hazards"]))
    assert len(points) >= 14  # every default at two head layouts, and the entries
    assert [(p["key"], p["variant"], p["hazards"]) for p in points if p["hazards"]] == []


def test_the_gate_fails_a_candidate_the_static_check_flags(monkeypatch):
    config = {"query_tile": 32, "kv_tile": 16, "dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}
    job = measure.Job("parallel_fw__cell-exp", config, B=1, NH=2, S=40, DHQK=16, DHHV=16, dtype="float32",
                      device="cpu")  # fmt: skip
    assert measure.gate_verdict(job).passed
    monkeypatch.setattr(measure, "hazard_arch", lambda job: 90)
    monkeypatch.setattr(hazards, "check_point", lambda *a, **k: ["mixed-use pipelining hazard in a kernel"])
    verdict = measure.gate_verdict(job)
    assert not verdict.passed and "mixed-use" in verdict.reasons[0]
