"""autotune.measure: the correctness gate and timing of one candidate (interpreter on the CPU), and the worker
process that may die without taking the search with it."""

from __future__ import annotations

import os
import time

import pytest

from autotune import measure
from autotune.measure import IsolatedRunner, Job
from autotune.search import Outcome

DEVICE = "cuda" if __import__("torch").cuda.is_available() else "cpu"
PARALLEL = {"query_tile": 32, "kv_tile": 16, "dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}
STEP = {"dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4}


@pytest.mark.parametrize(
    "variant,config",
    [
        ("chunkwise_twopass_fw__cell-exp_state-float32", {"chunk_inter": 16, "chunk_intra": 32,
                                                          "states_dhqk_tile": 16, "states_dhhv_tile": 16,
                                                          "out_dhqk_tile": 16, "out_dhhv_tile": 16, "states_warps": 4,
                                                          "out_warps": 4, "num_stages": 1}),
        ("chunkwise_fused_fw__cell-sig_state-input", {"chunk": 32, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1}),
        ("parallel_fw__cell-exp", {"query_tile": 32, "kv_tile": 16, "dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4,
                                   "num_stages": 1}),
        ("recurrent_sequence__cell-exp", {"dhhv_tile": 16, "num_warps": 4}),
        ("recurrent_step__cell-exp", {"dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4}),
    ],
)  # fmt: skip
def test_evaluate_passes_the_gate_and_times(variant, config):
    out = measure.evaluate_here(Job(variant, config, B=1, NH=2, S=40, DHQK=16, DHHV=24, dtype="float32",
                                    device=DEVICE))  # fmt: skip
    assert out.ok, out.reason
    assert out.error is not None and out.error <= 1e-4
    assert 0 < out.p20_ms <= out.p50_ms <= out.p80_ms < float("inf")
    assert out.gate_s > 0 and out.timing_s > 0  # where the time went, for the tuner's progress line


CURRENT_NAMES = {
    "chunk": 16,
    "dhqk_tile": 16,
    "dhhv_tile": 16,
    "dv_dhhv_tile": 16,
    "states_dhqk_tile": 16,
    "states_dhhv_tile": 16,
    "num_warps": 4,
    "states_warps": 4,
}
# as databases written before the knobs' renames hold them, with "states_every" (retired at its one value, 1) and
# without "dv_dhhv_tile" and "dstate_gates" (filled as the entry ran: the dhhv_tile, "inline")
OLD_NAMES = {"L": 16, "BK": 16, "BV": 16, "BKS": 16, "BVS": 16, "num_warps": 4, "num_warps_state": 4, "states_every": 1}


@pytest.mark.parametrize("names", [CURRENT_NAMES, OLD_NAMES], ids=["current-names", "old-names"])
def test_a_backward_reusing_the_forwards_states_passes_the_gate(names):
    """A training step's candidate with states="reuse" gets the forward's states at its own chunks, not a buffer of
    another stride; a configuration in the names older databases use runs the same way."""
    config = dict(names, num_stages=1, states="reuse", state_buffers="float32", states_weighting="v")
    out = measure.evaluate_here(Job("chunkwise_bw__cell-exp_kernels-split", config, B=1, NH=2, S=40, DHQK=16,
                                    DHHV=24, dtype="float32", device=DEVICE))  # fmt: skip
    assert out.ok, out.reason


def test_a_wrong_kernel_fails_the_gate(monkeypatch):
    real = measure._runner

    def off_by_a_bit(job, timing=False):
        run = real(job, timing)
        if job.config.get("query_tile") != 32:  # the trusted kernel (query_tile 64) stays exact
            return run
        return lambda x: run(x) * 1.01  # a 1% error: what a miscompile or a race looks like

    monkeypatch.setattr(measure, "_runner", off_by_a_bit)
    out = measure.evaluate_here(Job("parallel_fw__cell-exp", PARALLEL,
                                    B=1, NH=2, S=40, DHQK=16, DHHV=16, dtype="float32", device=DEVICE))  # fmt: skip
    assert not out.ok and "wrong result" in out.reason and out.error > 1e-4


def test_a_launch_error_is_an_outcome_not_an_exception():
    out = measure.evaluate_here(Job("parallel_fw__cell-exp", dict(PARALLEL, query_tile=24),
                                    B=1, NH=2, S=40, DHQK=16, DHHV=16, dtype="float32", device=DEVICE))  # fmt: skip
    assert not out.ok and "query_tile" in out.reason


# worker functions for IsolatedRunner: module level, so the spawned child can import them


def crashing_worker(job: Job) -> Outcome:
    if job.variant == "crash":
        os.abort()  # what Triton's LLVM does to the process on some inputs
    if job.variant == "hang":
        time.sleep(60)
    return Outcome(ok=True, p50_ms=1.0, p20_ms=0.9, p80_ms=1.1, error=0.0)


_POISONED = []  # in the child: set once a job "poisons" it, as an illegal memory access does a CUDA context


def poisoning_worker(job: Job) -> Outcome:
    if _POISONED:
        return Outcome(ok=False, reason="gate: AcceleratorError: CUDA error: an illegal memory access")
    if job.variant == "poison":
        _POISONED.append(job.variant)
        return Outcome(ok=False, reason="gate: AcceleratorError: CUDA error: an illegal memory access")
    if job.variant == "wrong":
        return Outcome(ok=False, reason="wrong result")
    return Outcome(ok=True, p50_ms=1.0, p20_ms=0.9, p80_ms=1.1, error=0.0)


def poisoned_check() -> bool:
    return not _POISONED


def worker_pid(job: Job) -> Outcome:
    return Outcome(ok=job.variant != "wrong", p50_ms=float(os.getpid()), reason="wrong result")


def _job(name: str) -> Job:
    return Job(name, {}, 1, 1, 1, 16, 16, "float32", "cpu")


def test_a_crashing_candidate_does_not_kill_the_runner():
    runner = IsolatedRunner(timeout_s=30, evaluate=crashing_worker)
    try:
        assert runner.evaluate(_job("fine")).ok
        crashed = runner.evaluate(_job("crash"))
        assert not crashed.ok and "died" in crashed.reason and "exit code" in crashed.reason
        assert runner.evaluate(_job("fine")).ok  # a new worker took over
    finally:
        runner.close()


def test_a_candidate_that_poisons_the_device_context_fails_alone():
    """A sticky CUDA error (an illegal memory access) makes every later launch of the process fail: the runner starts
    a fresh worker after it, instead of failing the rest of the study."""
    runner = IsolatedRunner(timeout_s=30, evaluate=poisoning_worker, healthy=poisoned_check)
    try:
        assert runner.evaluate(_job("fine")).ok
        poisoned = runner.evaluate(_job("poison"))
        assert not poisoned.ok and "illegal memory access" in poisoned.reason and "restarted" in poisoned.reason
        assert runner.evaluate(_job("fine")).ok and runner.evaluate(_job("fine")).ok
        wrong = runner.evaluate(_job("wrong"))  # a failure that leaves the device usable keeps the worker
        assert not wrong.ok and "restarted" not in wrong.reason
    finally:
        runner.close()


def test_a_failure_on_a_usable_device_keeps_the_worker():
    runner = IsolatedRunner(timeout_s=30, evaluate=worker_pid)
    try:
        first = runner.evaluate(_job("fine")).p50_ms
        assert not runner.evaluate(_job("wrong")).ok  # checked by measure.device_healthy: no CUDA here, usable
        assert runner.evaluate(_job("fine")).p50_ms == first  # the same process
    finally:
        runner.close()


def test_a_hanging_candidate_times_out():
    runner = IsolatedRunner(timeout_s=3, evaluate=crashing_worker)
    try:
        start = time.monotonic()
        out = runner.evaluate(_job("hang"))
        assert not out.ok and "timed out" in out.reason and time.monotonic() - start < 20
        assert runner.evaluate(_job("fine")).ok
    finally:
        runner.close()


@pytest.mark.parametrize("S", [512, 1000, 2048, 4096, 8192, 32768, 65536 + 8])
def test_the_gate_compiles_what_the_timing_runs(S):
    """Triton specialises on each integer argument's divisibility by 16 (and on == 1): the gate's S and its chunk
    counts must specialise as the real shape's do, for chunks of 32..256 tokens, and its last chunk must be ragged."""
    G = measure.gate_length(S)
    assert 256 < G < S and G <= 4096 + 16

    def spec(n):
        return (n % 16 == 0, n == 1)

    assert spec(G) == spec(S)
    for L in (32, 64, 128, 256):
        if S % L == 0:  # the real chunk count: S / L
            assert spec(-(-G // L)) == spec(S // L), (L, G)
    assert any(G % L for L in (32, 64, 128, 256))  # a ragged last chunk


def test_short_sequences_are_gated_on_several_chunks_and_a_ragged_end():
    assert measure.gate_length(40) == measure.gate_length(511) == 2 * 128 + 7


def test_timing_inputs_are_drawn_once_per_shape(monkeypatch):
    """Drawing the real shape's inputs took most of a trial on the H200; a second candidate of the same shape reuses
    them, a new shape replaces them (one shape's sets are kept, not every shape's)."""
    drawn = []
    real = measure._inputs

    def counting(job, B, NH, S, seed, on_device=False):
        drawn.append((S, seed))
        assert on_device  # the real shape is drawn where it runs
        return real(job, B, NH, S, seed, on_device)

    monkeypatch.setattr(measure, "_inputs", counting)
    monkeypatch.setattr(measure, "_TIMING_SETS", {})
    job = Job("parallel_fw__cell-exp", PARALLEL,
              B=1, NH=2, S=40, DHQK=16, DHHV=24, dtype="float32", device="cpu")  # fmt: skip
    first = measure.timing_sets(job)
    assert len(first) == 8 and len(drawn) == 8  # small sets: 8 of them rotate, together more than twice the L2
    assert measure.timing_sets(Job(**{**job.__dict__, "config": {"dhqk_tile": 8}})) is first and len(drawn) == 8
    other = measure.timing_sets(Job(**{**job.__dict__, "S": 48}))
    assert other is not first and drawn[-1][0] == 48 and len(measure._TIMING_SETS) == 1
    assert all(set(s) >= set("qkvif") for s in other) and bool((first[0]["q"] != first[1]["q"]).any())
    step = Job("recurrent_step__cell-exp", STEP, B=1, NH=2, S=1, DHQK=16, DHHV=24,
               dtype="float32", device="cpu")  # fmt: skip
    assert len(measure.timing_sets(step)) == 1  # timed from a graph, the L2 emptied between replays: one set


def test_the_timed_step_updates_one_state_in_place_and_the_gate_starts_from_zeros():
    """Timing a step kernel with a fresh zero state per call timed three fills and allocations along with it (more
    than the step itself at B = 1); the timed runner keeps one state and steps it, the gate's runs start from zeros."""
    job = Job("recurrent_step__cell-exp", STEP, B=1, NH=2, S=40, DHQK=16, DHHV=24,
              dtype="float32", device="cpu")  # fmt: skip
    x = measure._inputs(job, 1, 2, 40, seed=5)
    gate_run, timed_run = measure._runner(job), measure._runner(job, timing=True)
    assert bool((gate_run(x) == gate_run(x)).all())  # from zeros each time: the same output
    first, second = timed_run(x).clone(), timed_run(x)
    assert bool((first == gate_run(x)).all()) and not bool((second == first).all())  # the kept state moved on
