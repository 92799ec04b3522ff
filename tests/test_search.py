"""The search (autotune.search) on replayed timings: no GPU, no kernel runs. A recorded table gives each point's
time; the tests check the search finds the known optimum, never returns something slower than the default,
resumes a killed run without measuring a point twice, and records crashes and invalid points and goes on."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autotune import families, search, space
from autotune.launch import chunkwise as launch_chunkwise
from autotune.search import Outcome
from autotune.variants import Variant

DHQK, DHHV = 256, 512
CANDIDATES = space.variants_of("chunkwise", "exp")
DEFAULT_VARIANT = next(v for v in CANDIDATES if v.template == launch_chunkwise.TWOPASS)
DEFAULT = (DEFAULT_VARIANT, families.default_config(DEFAULT_VARIANT, DHQK, DHHV))
OPTIMUM = ("chunkwise_fused_fw__cell-exp_state-input", {"chunk": 64, "dhhv_tile": 64, "num_warps": 8, "num_stages": 2})


def replayed_ms(variant: Variant, config: dict) -> float:
    """A recorded 'timing' per point: deterministic, 1.0 .. 3.0 ms; the default 1.5 ms; one known optimum 0.5 ms."""
    if (variant.name, config) == OPTIMUM:
        return 0.5
    if (variant, config) == DEFAULT:
        return 1.5
    digest = hashlib.sha256(f"{variant.name}{sorted(config.items())}".encode()).digest()
    return 1.0 + 2.0 * digest[0] / 255


class Replay:
    def __init__(self, crash_when=lambda v, c: False, stop_after: int | None = None):
        self.calls: list[tuple[str, str]] = []
        self.crash_when, self.stop_after = crash_when, stop_after

    def __call__(self, variant: Variant, config: dict) -> Outcome:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt("the tuning run is cut off")
        self.calls.append((variant.name, repr(sorted(config.items()))))
        if self.crash_when(variant, config):
            return Outcome(ok=False, reason="worker died: exit code -6 (SIGABRT in the compiler)")
        ms = replayed_ms(variant, config)
        return Outcome(ok=True, p50_ms=ms, p20_ms=ms * 0.98, p80_ms=ms * 1.02, error=1e-3)


def run(study, evaluate, trials=40, **kw):
    return search.run_study(study, CANDIDATES, DEFAULT, evaluate, DHQK=DHQK, DHHV=DHHV, dtype_bytes=2, trials=trials,
                            **kw)  # fmt: skip


def study_in(tmp_path: Path, name="s", seed=0):
    return search.open_study(tmp_path / "journal.log", name, seed=seed)


def narrowed_space(monkeypatch):
    """A space small enough that 40 trials must find the single optimum: 16 fused points, and the two-pass variant
    at its default but for n and the stages (4 points; its whole space has grown to thousands); the two-pass
    forward's states as planes left out (4 more points that make no difference to what these tests check)."""
    monkeypatch.setattr(sys.modules[__name__], "CANDIDATES", [v for v in CANDIDATES if v.params["state"] != "planes"])
    monkeypatch.setitem(space.PARAMS, "chunkwise_fused_fw.py.j2",
                        {"chunk": (32, 64), "dhhv_tile": (32, 64), "num_warps": (4, 8),
                         "num_stages": (1, 2)})  # fmt: skip
    twopass = {name: (value,) for name, value in DEFAULT[1].items()}
    monkeypatch.setitem(space.PARAMS, launch_chunkwise.TWOPASS,
                        {**twopass, "states_n": ("sum", "dot"), "num_stages": (2, 3)})  # fmt: skip


def test_default_is_trial_zero(tmp_path: Path):
    study = study_in(tmp_path)
    run(study, Replay(), trials=3)
    first = study.trials[0]
    assert first.user_attrs.get("default") and first.value == 1.5


def structured_ms(variant: Variant, config: dict) -> float:
    """Recorded timings with structure, as real ones have: the optimum's variant gets faster the closer each launch
    parameter is to the optimum's (0.5 ms there, +0.25 ms per step away); every other point 2-3 ms."""
    noise = hashlib.sha256(f"{variant.name}{sorted(config.items())}".encode()).digest()[0] / 255
    if variant.name != OPTIMUM[0]:
        return 2.0 + noise
    choices = space.PARAMS[variant.template]
    steps = sum(abs(choices[k].index(config[k]) - choices[k].index(v)) for k, v in OPTIMUM[1].items())
    return 0.5 + 0.25 * steps + 0.01 * noise * (steps > 0)


@pytest.mark.parametrize("seed", range(4))
def test_finds_the_known_optimum(tmp_path: Path, monkeypatch, seed):
    # on a table without structure (random times, one planted optimum) any sampler is mostly luck: NOTES.md
    narrowed_space(monkeypatch)
    table = lambda v, c: 1.5 if (v, c) == DEFAULT else structured_ms(v, c)  # noqa: E731
    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    result = run(study_in(tmp_path, seed=seed), Replay(), trials=60)
    assert (result.best_variant, result.best_config) == OPTIMUM
    assert result.best.p50_ms == 0.5 and result.default.p50_ms == 1.5


def test_a_point_ruled_out_since_it_was_measured_does_not_win(tmp_path: Path, monkeypatch):
    narrowed_space(monkeypatch)
    table = lambda v, c: 1.5 if (v, c) == DEFAULT else structured_ms(v, c)  # noqa: E731
    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    study = study_in(tmp_path)
    assert (run(study, Replay(), trials=60).best_variant, study.best_trial.value) == (OPTIMUM[0], 0.5)
    allowed = space.invalid  # then a rule rejects the winner (e.g. found to miscompute on a GPU)

    def ruled(variant, config, *args, **kw):
        return "ruled out" if (variant.name, config) == OPTIMUM else allowed(variant, config, *args, **kw)

    monkeypatch.setattr(space, "invalid", ruled)
    again = run(study, Replay(), trials=0)
    assert (again.best_variant, again.best_config) != OPTIMUM and again.best.p50_ms > 0.5


def test_wide_output_chunks_at_8_warps_are_ruled_out_in_16_bits_only():
    """chunk_intra 128 output chunks at 8 warps miscomputed on the H200 in bf16 (docs/performance.md)."""
    variant = DEFAULT_VARIANT
    base = dict(DEFAULT[1], chunk_intra=128, chunk_inter=64, out_dhqk_tile=64, out_dhhv_tile=64, out_warps=8,
                out_values="loop")  # fmt: skip
    assert "inaccurate" in space.invalid(variant, base, 128, 128, 2, space.H100_LIMITS)
    assert "inaccurate" in space.invalid(variant, dict(base, out_values="tiles"), 128, 128, 2, space.H100_LIMITS)
    assert space.invalid(variant, base, 128, 128, 4, space.H100_LIMITS) is None  # fp32
    assert space.invalid(variant, dict(base, chunk_intra=64), 128, 128, 2, space.H100_LIMITS) is None


def test_a_training_step_never_turns_an_entry_into_a_point_the_space_rules_out():
    """A forward entry run for a backward that reuses states every L tokens stores them at that stride
    (launch.chunkwise.states_every) where that point is in the space; at L = 128 in 16 bits no output kernel is
    (registers at 4 warps, accuracy at 8), so the entry runs as it is and the backward recomputes its states."""
    entry = dict(DEFAULT[1], chunk_intra=64, chunk_inter=64, out_warps=8, out_dhqk_tile=64, out_dhhv_tile=64)
    assert space.invalid(DEFAULT_VARIANT, entry, 128, 128, 2, space.H100_LIMITS) is None
    assert launch_chunkwise.states_every(DEFAULT_VARIANT, entry, 64, 128, 128, 2) is entry  # its own stride
    got = launch_chunkwise.states_every(DEFAULT_VARIANT, entry, 32, 128, 128, 2)
    assert (got["chunk_intra"], got["chunk_inter"]) == (32, 32)
    assert space.invalid(DEFAULT_VARIANT, got, 128, 128, 2, space.H100_LIMITS) is None
    assert launch_chunkwise.states_every(DEFAULT_VARIANT, entry, 128, 128, 128, 2) is entry
    assert launch_chunkwise.states_every(DEFAULT_VARIANT, entry, 128, 128, 128, 4)["chunk_intra"] == 128  # fp32


def test_n_on_the_tensor_cores_needs_the_weights_on_k():
    """states_n "dot" with v weighted faulted on the H200: out of the space for the forward and the backward."""

    backward = next(v for v in space.variants_of("chunkwise", "exp", "fwbw") if v.params.get("kernels") == "fused")
    for variant, config in (
        (DEFAULT_VARIANT, DEFAULT[1]),
        (backward, dict(families.default_config(backward, 128, 128), states_n="dot")),
    ):
        assert "weights on k" in space.invalid(variant, dict(config, states_weighting="v"), 128, 128, 2,
                                                        space.H100_LIMITS)  # fmt: skip
        for weighting in ("k", "kT"):
            assert space.invalid(variant, dict(config, states_weighting=weighting), 128, 128, 2,
                                 space.H100_LIMITS) is None  # fmt: skip


def test_never_slower_than_the_default(tmp_path: Path, monkeypatch):
    # every point but the default is slower: the default must win
    monkeypatch.setattr(__import__(__name__), "replayed_ms", lambda v, c: 1.5 if (v, c) == DEFAULT else 9.0)
    result = run(study_in(tmp_path), Replay(), trials=15)
    assert (result.best_variant, result.best_config) == (DEFAULT[0].name, DEFAULT[1])
    assert result.best.p50_ms <= result.default.p50_ms


def test_a_killed_run_resumes_without_measuring_twice(tmp_path: Path):
    cut = Replay(stop_after=6)
    with pytest.raises(KeyboardInterrupt):
        run(study_in(tmp_path), cut, trials=25)
    resumed = Replay()
    result = run(study_in(tmp_path), resumed, trials=25)  # same journal file: the same study
    measured_twice = set(cut.calls) & set(resumed.calls)
    assert not measured_twice, f"points measured again after the resume: {measured_twice}"
    study = study_in(tmp_path)
    assert len(study.trials) >= 25 and result.trials == len(study.trials)
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL


def test_zero_trials_reads_the_study_without_measuring(tmp_path: Path):
    # the summary after the --devices workers: the winner of what they measured, no further trial
    first = run(study_in(tmp_path), Replay(), trials=8)
    again = Replay()
    summary = run(study_in(tmp_path), again, trials=0)
    assert again.calls == [] and summary.trials == first.trials
    assert (summary.best_variant, summary.best_config) == (first.best_variant, first.best_config)


def test_a_settled_study_measures_nothing_more(tmp_path: Path):
    # a second run with the same trials over a finished study: no point is measured, the winner is the same (a new
    # point measured here could win on noise and rewrite a database entry that was already written)
    first = run(study_in(tmp_path), Replay(), trials=8)
    again = Replay()
    result = run(study_in(tmp_path), again, trials=8)
    assert again.calls == [] and result.trials == first.trials
    assert (result.best_variant, result.best_config) == (first.best_variant, first.best_config)


def test_a_crashing_candidate_is_recorded_and_the_study_goes_on(tmp_path: Path):
    crashes = Replay(crash_when=lambda v, c: v.template == launch_chunkwise.FUSED and c["num_warps"] == 8)
    study = study_in(tmp_path)
    result = run(study, crashes, trials=30)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("SIGABRT" in t.user_attrs["reason"] for t in failed)
    assert result.failed and len(study.trials) >= 30
    assert (
        result.best.ok and result.best_config.get("num_warps") != 8 or result.best_variant.startswith("chunkwise_two")
    )


def test_the_result_counts_the_whole_studys_failures_by_kind(tmp_path: Path):
    crashes = Replay(crash_when=lambda v, c: v.template == launch_chunkwise.FUSED and c["num_warps"] == 8)
    study = study_in(tmp_path)
    run(study, crashes, trials=30)
    n_failed = sum(t.state == TrialState.FAIL for t in study.trials)
    again = run(study, crashes, trials=0)  # a reader of the study (the summary after --devices workers)
    assert n_failed and again.failed == [] and again.failure_kinds == {"worker died": n_failed}
    illegal = "gate: AcceleratorError: CUDA error: an illegal memory access"
    assert search.failure_kind(illegal) == "gate: AcceleratorError"
    assert search.failure_kind("wrong result: relative error 1.22 > 0.05") == "wrong result"
    assert search.failure_kind("timed out after 300 s (exit code -9)") == "timed out after 300 s"


def test_invalid_points_are_pruned_with_their_reason(tmp_path: Path, monkeypatch):
    # a space where every fused point needs too many registers: those are pruned, never evaluated
    monkeypatch.setitem(space.PARAMS, "chunkwise_fused_fw.py.j2",
                        {"chunk": (128,), "dhhv_tile": (128,), "num_warps": (2,), "num_stages": (1,)})  # fmt: skip
    replay = Replay()
    study = study_in(tmp_path)
    run(study, replay, trials=20)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    fused = [t for t in pruned if t.params["variant"].startswith("chunkwise_fused")]
    assert fused and all("registers" in t.user_attrs["invalid"] for t in fused)
    assert all(t.user_attrs["invalid"] for t in pruned)  # every pruned point says why
    assert not any(name.startswith("chunkwise_fused") for name, _ in replay.calls)


def test_seeded_runs_agree(tmp_path: Path):
    a = run(study_in(tmp_path / "a", seed=3), Replay(), trials=20)
    b = run(study_in(tmp_path / "b", seed=3), Replay(), trials=20)
    assert (a.best_variant, a.best_config) == (b.best_variant, b.best_config)


def test_time_budget_stops_early_but_keeps_the_default(tmp_path: Path):
    result = run(study_in(tmp_path), Replay(), trials=500, time_budget_s=0.0)
    assert result.trials < 500 and result.default.ok


@pytest.mark.parametrize("form,cell", [("chunkwise", "exp"), ("chunkwise", "sig"), ("parallel", "exp"),
                                       ("step", "exp"), ("sequence", "sig")])  # fmt: skip
@pytest.mark.parametrize("dims", [(16, 16), (48, 96), (256, 512), (128, 128)])
def test_every_default_configuration_is_a_valid_point(form, cell, dims):
    for variant in space.variants_of(form, cell):
        config = families.default_config(variant, *dims)
        assert space.invalid(variant, config, *dims, dtype_bytes=2, limits=space.H100_LIMITS) is None
        for param, value in config.items():
            assert value in space.PARAMS[variant.template][param], (variant.name, param, value)


def test_starting_points_are_measured_right_after_the_default(tmp_path: Path):
    """Winners of neighbouring shapes given as starts are the trials after the default; a start that is the default,
    or not a point of the space (a parameter missing, a value not among the choices), is not queued."""
    fused = next(v for v in CANDIDATES if v.template == "chunkwise_fused_fw.py.j2")
    good = (fused, {"chunk": 64, "dhhv_tile": 32, "num_warps": 4, "num_stages": 2})
    missing = (fused, {"chunk": 64, "dhhv_tile": 32, "num_warps": 4})
    off_grid = (fused, {"chunk": 64, "dhhv_tile": 24, "num_warps": 4, "num_stages": 2})
    replay = Replay()
    study = study_in(tmp_path)
    run(study, replay, trials=4, starts=[DEFAULT, good, missing, off_grid])
    assert replay.calls[0] == (DEFAULT[0].name, repr(sorted(DEFAULT[1].items())))
    assert replay.calls[1] == (good[0].name, repr(sorted(good[1].items())))
    assert study.trials[1].user_attrs.get("start")
    assert sum(bool(t.user_attrs.get("start")) for t in study.trials) == 1
    # a resumed run does not queue a start that was measured already
    again = Replay()
    run(study, again, trials=6, starts=[good])
    assert (good[0].name, repr(sorted(good[1].items()))) not in again.calls


def test_seeds_are_measured_after_the_starts_and_only_when_valid(tmp_path: Path):
    """Seeds (structural changes that need several knobs at once) are the trials after the starts; one already
    measured as a start, or not valid for the head dims, is not queued again."""
    fused = next(v for v in CANDIDATES if v.template == "chunkwise_fused_fw.py.j2")
    start = (fused, {"chunk": 64, "dhhv_tile": 32, "num_warps": 4, "num_stages": 2})
    seed = (fused, {"chunk": 32, "dhhv_tile": 64, "num_warps": 8, "num_stages": 1})
    too_big = (fused, {"chunk": 32, "dhhv_tile": 128, "num_warps": 2, "num_stages": 1})  # C 256 x 128 on 64 threads
    replay = Replay()
    study = study_in(tmp_path)
    run(study, replay, trials=5, starts=[start], seeds=[start, seed, too_big])
    assert replay.calls[:3] == [(v.name, repr(sorted(c.items()))) for v, c in (DEFAULT, start, seed)]
    assert [t.number for t in study.trials if t.user_attrs.get("seed")] == [2]


@pytest.mark.parametrize("direction,dims", [("fw", (256, 512)), ("fw", (128, 128)), ("fwbw", (256, 512)),
                                            ("fwbw", (128, 128))])  # fmt: skip
def test_every_seed_is_a_valid_point_at_the_shipped_layouts(direction, dims):
    """space.seeds of the chunkwise defaults: points of the space (every value among its choices), valid at the
    presets' head layouts in bf16, in the variant the seed names."""

    for cell in ("exp", "sig"):
        candidates = space.variants_of("chunkwise", cell, direction)
        if direction == "fw":
            variant = next(v for v in candidates if v.template == launch_chunkwise.TWOPASS
                           and v.params["state"] == "input")  # fmt: skip
            default = (variant, families.default_config(variant, *dims))
        else:
            variant = next(v for v in candidates if v.params["kernels"] == "fused")
            default = (variant, families.default_config(variant, *dims))
        seeds = space.seeds(default, candidates)
        assert seeds, f"no seed for {variant.name}"
        for v, config in seeds:
            assert v in candidates and set(config) == set(space.PARAMS[v.template])
            assert all(value in space.PARAMS[v.template][p] for p, value in config.items()), config
            assert space.invalid(v, config, *dims, dtype_bytes=2, limits=space.H100_LIMITS) is None, config


def test_neighbours_differ_in_one_parameter_nearest_choices_first():
    variant, config = DEFAULT
    near = search.neighbours(variant, config)
    choices = space.PARAMS[variant.template]
    expected = sum(len(c) - 1 for p, c in choices.items() if config[p] in c)
    assert len(near) == expected and len({repr(sorted(c.items())) for c in near}) == expected
    assert all(sum(c[p] != config[p] for p in config) == 1 for c in near)
    first_round = near[: len(choices)]  # every parameter once, each its nearest other choice
    assert {next(p for p in config if c[p] != config[p]) for c in first_round} == set(choices)
    for c in first_round:
        p = next(p for p in config if c[p] != config[p])
        i, j = choices[p].index(config[p]), choices[p].index(c[p])
        assert abs(i - j) == 1


def test_a_one_knob_win_is_found_within_a_few_trials(tmp_path: Path, monkeypatch):
    """The default's neighbours come right after it: a win one parameter away (a third pipeline stage) is measured
    among the first trials, and neighbours the validity predicate rejects are not queued at all."""
    variant, config = DEFAULT
    better = {**config, "num_stages": 3}
    table = lambda v, c: 0.9 if (v, c) == (variant, better) else (1.5 if (v, c) == DEFAULT else 2.0)  # noqa: E731
    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    study = study_in(tmp_path)
    result = run(study, Replay(), trials=30)
    assert (result.best_variant, result.best_config) == (variant.name, better) and result.best.p50_ms == 0.9
    marked = [t for t in study.trials if t.user_attrs.get("neighbour")]
    assert 0 < len(marked) <= 15 and all(t.number <= len(marked) for t in marked)  # right after the default
    assert not any(t.user_attrs.get("invalid") for t in marked)


def test_the_local_search_combines_two_knobs_from_the_best_point(tmp_path: Path, monkeypatch):
    """A second knob that only pays once the first is set (a 128-wide output key tile, slower alone, faster with
    3 stages) is found by moving from the best point, not only around the default: a move that lost from the default
    is tried again from the new best point (after the untried moves, hence the trials)."""
    variant, config = DEFAULT
    one = {**config, "num_stages": 3}
    both = {**one, "out_dhqk_tile": 128}
    times = {repr(sorted(config.items())): 1.5, repr(sorted(one.items())): 1.2, repr(sorted(both.items())): 0.9,
             repr(sorted({**config, "out_dhqk_tile": 128}.items())): 1.6}  # fmt: skip
    table = lambda v, c: times.get(repr(sorted(c.items())), 2.0) if v == variant else 2.0  # noqa: E731
    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    study = study_in(tmp_path)
    result = run(study, Replay(), trials=80)
    assert (result.best_variant, result.best_config) == (variant.name, both)
    moves = [json_point(t) for t in study.trials if t.user_attrs.get("neighbour")]
    assert moves.index(both) > moves.index(one)  # the second knob was tried from the first's point
    assert not space.invalid(variant, both, DHQK, DHHV, 2, space.H100_LIMITS)


def test_the_local_search_stops_at_a_local_optimum(tmp_path: Path, monkeypatch):
    """When the default beats all its neighbours, the local search measures each valid neighbour once (then pairs of
    them, tested below) and hands the remaining trials to TPE."""
    monkeypatch.setattr(__import__(__name__), "replayed_ms", lambda v, c: 1.5 if (v, c) == DEFAULT else 9.0)
    study = study_in(tmp_path)
    run(study, Replay(), trials=60)
    moves = [json_variant_point(t) for t in study.trials if len(t.user_attrs.get("move", [])) == 2]  # single moves
    variant, config = DEFAULT
    points = [(v, config) for v in CANDIDATES if v.template == variant.template and v != variant]  # the siblings
    points += [(variant, c) for c in search.neighbours(*DEFAULT)]
    valid = [(v.name, c) for v, c in points if not space.invalid(v, c, DHQK, DHHV, 2, space.H100_LIMITS)]
    assert len(valid) < 30  # so the local search's budget (half of 60) does not end it first
    key = lambda point: repr((point[0], sorted(point[1].items())))  # noqa: E731
    assert sorted(map(key, moves)) == sorted(map(key, valid))


def test_the_local_search_moves_to_another_variant_of_the_same_template(tmp_path: Path, monkeypatch):
    """The same configuration in a sibling variant (same template, same launch parameters: e.g. the split backward
    kernels instead of the fused one) is a move of the local search, tried before the parameter moves, and the
    search then goes on from the sibling's point: a knob that pays only there is found too."""
    variant, config = DEFAULT
    sibling = next(v for v in CANDIDATES if v.template == variant.template and v != variant)
    tuned = {**config, "num_stages": 3}
    table = {(sibling.name, repr(sorted(config.items()))): 1.2, (sibling.name, repr(sorted(tuned.items()))): 0.8}

    def replay(v, c):
        return 1.5 if (v, c) == DEFAULT else table.get((v.name, repr(sorted(c.items()))), 2.0)

    monkeypatch.setattr(__import__(__name__), "replayed_ms", replay)
    study = study_in(tmp_path)
    result = run(study, Replay(), trials=40)
    assert (result.best_variant, result.best_config) == (sibling.name, tuned)
    first = next(t for t in study.trials if t.user_attrs.get("neighbour"))
    assert first.user_attrs["move"] == ["variant", sibling.name]


def json_variant_point(trial) -> tuple[str, dict]:
    import json

    point = json.loads(trial.user_attrs["point"])
    return point["variant"], point["config"]


def json_point(trial) -> dict:
    return json_variant_point(trial)[1]


def test_points_already_queued_are_not_queued_again(tmp_path: Path):
    """Two workers start on one study (or a run was cut off with points still queued): the default and a start that
    wait in the study are asked once, not queued a second time."""
    fused = next(v for v in CANDIDATES if v.template == "chunkwise_fused_fw.py.j2")
    good = (fused, {"chunk": 64, "dhhv_tile": 32, "num_warps": 4, "num_stages": 2})
    study = study_in(tmp_path)
    search._enqueue(study, *DEFAULT, "default")  # what the other worker queued a moment before
    search._enqueue(study, *good, "start")
    replay = Replay()
    run(study, replay, trials=6, starts=[good])
    assert sum(bool(t.user_attrs.get("default")) for t in study.trials) == 1
    assert sum(bool(t.user_attrs.get("start")) for t in study.trials) == 1
    assert len(set(replay.calls)) == len(replay.calls)


def test_a_second_worker_waits_for_a_best_point_instead_of_giving_up_the_local_search(tmp_path: Path):
    """Worker A is still measuring the default when worker B starts on the same study: B neither queues the default
    again nor ends its local search for want of a best point; once A's default is in, B steps from it."""
    study = study_in(tmp_path)
    search._enqueue(study, *DEFAULT, "default")
    a_trial = study.ask()  # worker A asked the default and is measuring it
    a_trial.set_user_attr("worker", "another-host:1")
    a_trial.set_user_attr("point", search._point_key(DEFAULT[0].name, DEFAULT[1]))
    replay = Replay()

    def b_evaluate(variant, config):
        if study.trials[a_trial.number].state == TrialState.RUNNING:
            study.tell(a_trial, 1.5)  # A finishes while B measures its first point
        return replay(variant, config)

    run(study, b_evaluate, trials=12)
    assert sum(bool(t.user_attrs.get("default")) for t in study.trials) == 1
    assert any(t.user_attrs.get("neighbour") for t in study.trials)


def test_wins_found_one_at_a_time_are_combined_first(tmp_path: Path, monkeypatch):
    """Three knobs that each save time, additively (as "reuse", 2 stages and 128-wide value tiles did for the
    backward on the H200): each new best point tries the known wins and the untried moves first, not the moves that
    already lost from an earlier point, so the three combine in fewer trials."""
    variant, config = DEFAULT
    wins = {"num_stages": (3, 0.3), "out_dhqk_tile": (128, 0.2), "out_values": ("tiles", 0.1)}

    def table(v, c):
        if v != variant:
            return 9.0
        changed = {p for p in c if c[p] != config[p]}
        if not changed <= set(wins) or any(c[p] != wins[p][0] for p in changed):
            return 2.0
        return 1.5 - sum(wins[p][1] for p in changed)

    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    study = study_in(tmp_path)
    result = run(study, Replay(), trials=40)
    assert result.best.p50_ms == pytest.approx(0.9)  # all three
    # the moves within the default's variant (the moves to the other state forms lose at once, however many there are)
    moves = [t for t in study.trials if t.user_attrs.get("neighbour")
             and json.loads(t.user_attrs["point"])["variant"] == variant.name]  # fmt: skip
    combined = next(n for n, t in enumerate(moves) if t.value == pytest.approx(0.9))
    # moves in the order neighbours() lists them, without the ordering by earlier outcomes: the three not combined
    # within these 40 trials; with it, wins and untried moves come before the moves that lost from an earlier base
    # point (the 9th move of the variant)
    assert combined < 9, combined


def test_at_a_local_optimum_pairs_of_the_least_losing_moves_are_tried(tmp_path: Path, monkeypatch):
    """Two knobs that each lose a little alone but win together (measured on the H200: the split backward with 64-wide
    value tiles, 8.62 ms, or 3 stages, 8.78 ms, against 8.32; both together about 0.5 ms faster) are found once every
    single move from the best point has been measured: the pairs of the moves that lost least come next."""
    variant, config = DEFAULT
    a, b = ("num_stages", 3), ("out_dhqk_tile", 128)
    alone_a, alone_b, both = {**config, a[0]: a[1]}, {**config, b[0]: b[1]}, {**config, a[0]: a[1], b[0]: b[1]}
    times = {repr(sorted(config.items())): 1.5, repr(sorted(alone_a.items())): 1.55,
             repr(sorted(alone_b.items())): 1.6, repr(sorted(both.items())): 1.0}  # fmt: skip
    table = lambda v, c: times.get(repr(sorted(c.items())), 3.0) if v == variant else 3.0  # noqa: E731
    monkeypatch.setattr(__import__(__name__), "replayed_ms", table)
    study = study_in(tmp_path)
    result = run(study, Replay(), trials=60)
    assert (result.best_variant, result.best_config) == (variant.name, both)
    pair = next(t for t in study.trials if len(t.user_attrs.get("move", [])) == 4)
    assert json_point(pair) == both and sorted(pair.user_attrs["move"][::2]) == sorted([a[0], b[0]])
    default_point = study.trials[0].user_attrs["point"]
    singles = [t for t in study.trials
               if len(t.user_attrs.get("move", [])) == 2 and t.user_attrs["base"] == default_point]  # fmt: skip
    assert singles and all(t.number < pair.number for t in singles)  # every single move from the default first


def test_no_pair_is_tried_while_a_single_move_is_untried(tmp_path: Path, monkeypatch):
    """The pairs come only at a local optimum: with every neighbour slower than the default, each valid single move
    is measured once before the first pair, and a pair never combines two values of one parameter."""
    monkeypatch.setattr(__import__(__name__), "replayed_ms", lambda v, c: 1.5 if (v, c) == DEFAULT else 9.0)
    study = study_in(tmp_path)
    run(study, Replay(), trials=60)
    marked = [t for t in study.trials if t.user_attrs.get("neighbour")]
    first_pair = next(i for i, t in enumerate(marked) if len(t.user_attrs["move"]) == 4)
    assert all(len(t.user_attrs["move"]) == 2 for t in marked[:first_pair])
    assert all(len(t.user_attrs["move"]) == 4 for t in marked[first_pair:])
    assert all(t.user_attrs["move"][0] != t.user_attrs["move"][2] for t in marked[first_pair:])
    assert 0 < len(marked) - first_pair <= 6  # pairs of at most PAIR_POOL = 4 moves


def test_a_pair_never_moves_a_parameter_its_variant_does_not_read(tmp_path: Path):
    """From a best point in the split backward, the moves that lose least are the dv kernel's value tile
    (dv_dhhv_tile) and back to the fused kernel, which does not read it: such a pair would re-measure the fused move
    alone, so it is never queued (the pairs of two dv_dhhv_tile values are not pairs either)."""
    from autotune.launch import chunkwise_bw as launch_bw
    from autotune.variants import find

    candidates = space.variants_of("chunkwise", "exp", "fwbw")
    fused, split = (find(launch_bw.TEMPLATE, cell="exp", kernels=k) for k in ("fused", "split"))
    config = families.default_config(fused, DHQK, DHHV)
    staged = {**config, "num_stages": 2}

    def replay(variant, c):
        if c == config:
            return {fused: 1.5, split: 1.4}[variant]
        if c == staged:
            return {fused: 1.02, split: 1.0}[variant]  # the best point, and back to fused from it
        if variant == split and {p for p in c if c[p] != staged[p]} == {"dv_dhhv_tile"}:
            return 1.01
        return 2.0

    def evaluate(variant, c):
        ms = replay(variant, c)
        return Outcome(ok=True, p50_ms=ms, p20_ms=ms, p80_ms=ms, error=1e-3)

    study = study_in(tmp_path)
    search.run_study(study, candidates, (fused, config), evaluate, DHQK=DHQK, DHHV=DHHV, dtype_bytes=2, trials=120)
    best = search._point_key(split.name, staged)
    from_best = [t.user_attrs["move"] for t in study.trials if t.user_attrs.get("base") == best]
    assert ["variant", fused.name] in from_best  # both measured from it
    assert any(m[0] == "dv_dhhv_tile" for m in from_best)
    assert not any("variant" in m[::2] and "dv_dhhv_tile" in m[::2] for m in from_best if len(m) == 4)


def test_the_journal_report_counts_failures_and_errors(tmp_path: Path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "tools" / "journal_report.py"
    spec = importlib.util.spec_from_file_location("journal_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    crashes = Replay(crash_when=lambda v, c: v.template == launch_chunkwise.FUSED and c["num_warps"] == 8)
    study = study_in(tmp_path, name="GPU|chunkwise:exp|fw|bfloat16|DHQK64|DHHV64|S64|BNH2|code-x")
    run(study, crashes, trials=30)
    (row,) = report.study_rows(report.studies(tmp_path / "journal.log"))
    n_failed = sum(t.state == TrialState.FAIL for t in study.trials)
    assert row["failures"] == {"worker died": n_failed} and row["trials"] == len(study.trials)
    assert row["default_error"] == 1e-3 and row["worst_error_ratio"] == 1.0  # Replay: every error 1e-3
    groups = report.forward_errors(report.studies(tmp_path / "journal.log", code="code-x"))
    n_twopass = sum(json.loads(t.user_attrs["point"])["variant"].startswith("chunkwise_twopass")
                    for t in study.trials if t.user_attrs.get("error") is not None)  # fmt: skip
    assert sum(len(e) for e in groups.values()) == n_twopass > 0 and all(k[0] == "DHQK64" for k in groups)
