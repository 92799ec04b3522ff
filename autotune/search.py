"""Optuna studies over the space of ``autotune.space``: one study per (GPU, op, direction, dtype, head dims, shape
bucket), in a journal file or an Optuna database (``open_storage``), so a run that is cut off continues where it stopped
and several processes (one per GPU, or on several hosts sharing a database) can work on one study. A trial whose
worker died (a process of this host that is gone, or a heartbeat older than ``GRACE_S`` on a database) is closed as
interrupted and its point queued again.

Trial 0 is always the variant's built-in default configuration, so the winner is never slower than the default;
the next ones may be given starting points (the winners of neighbouring shapes) and seeds (structural changes of
several knobs at once: each family's seeds in autotune.families); then a local search moves from the best point so
far to its valid one-parameter neighbours (up to half the trials, until the best has none left untried), then TPE.
A run stops when ``trials`` points are settled (measured or pruned, earlier runs included) or after ``trials`` asks
of its own, or when ``time_budget_s`` is spent (the default is always measured first).
Sampling is seeded TPE. A point the validity predicate rejects is recorded as PRUNED with the reason; a point whose
evaluation fails (wrong result, crash, timeout) is recorded as FAIL with the reason, and the study goes on. A point
that was already evaluated in this study (an earlier run, or TPE proposing it again) is not evaluated again.

The evaluation is injected: ``evaluate(variant, config) -> Outcome``. ``autotune.measure`` provides the real one
(correctness gate, then timing, in a worker process that may die); tests replay recorded timings.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from . import space
from .variants import Variant, by_name


@dataclass
class Outcome:
    """What evaluating one point gave: ok with timings (ms), or a failure with its reason."""

    ok: bool
    p50_ms: float = float("inf")
    p20_ms: float = float("inf")
    p80_ms: float = float("inf")
    error: float | None = None  # relative error against the reference (the correctness gate)
    reason: str = ""
    gate_s: float | None = None  # wall-clock seconds of the gate (compiling included) and of the timing
    timing_s: float | None = None


@dataclass
class StudyResult:
    best_variant: str
    best_config: dict
    best: Outcome
    default: Outcome
    trials: int  # trials in the study after this run
    evaluated: int  # evaluations made by this run
    pruned: list[str] = field(default_factory=list)  # reasons of the points pruned by this run
    failed: list[str] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)  # the whole study's failures by kind, most first


def failure_kind(reason: str) -> str:
    """A failure's kind, without its numbers: "gate: AcceleratorError", "wrong result", "timed out after 300 s"."""
    head, _, rest = reason.partition(":")
    if head in ("gate", "timing"):  # the stage, then the exception's type
        return f"{head}: {rest.partition(':')[0].strip()}"
    return head.split(" (")[0].strip()


def study_name(gpu: str, op: str, direction: str, dtype: str, DHQK: int, DHHV: int, S: int, BNH: int,
               code: str = "") -> str:  # fmt: skip
    """The study of one shape bucket; ``code`` (autotune.tune.code_fingerprint) keeps studies measured with other
    kernel code apart: their times do not compare with new ones, so a changed kernel starts a new study."""
    name = f"{gpu}|{op}|{direction}|{dtype}|DHQK{DHQK}|DHHV{DHHV}|S{S}|BNH{BNH}"
    return f"{name}|code-{code}" if code else name


HEARTBEAT_S = 15  # on a database storage a worker records a heartbeat this often while it measures a point
GRACE_S = 120  # ... and a trial whose last heartbeat is older than this is taken as abandoned by a dead worker

_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
_MARKS = ("default", "start", "seed", "neighbour", "move", "base_ms", "base")  # why a point was queued


class StorageError(RuntimeError):
    """A storage that cannot be opened: a missing database driver, a server that does not answer, a bad URL."""


def is_url(storage: str | Path) -> bool:
    return "://" in str(storage)


def open_storage(storage: str | Path) -> optuna.storages.BaseStorage:
    """The Optuna storage of ``storage``: a database URL (``sqlite:///FILE``, ``postgresql://USER@HOST/DB``,
    ``mysql+pymysql://...``: any URL SQLAlchemy and Optuna's RDBStorage take) or a journal file's path. One object per
    storage and process. A database storage records heartbeats, so that the trial of a worker that died on another
    host is found and measured again."""
    key = str(storage)
    if key in _STORAGES:
        return _STORAGES[key]
    if not is_url(key):
        path = Path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _STORAGES[key] = JournalStorage(JournalFileBackend(str(path)))
        return _STORAGES[key]
    import sqlalchemy.exc

    # SQLite serialises writers: a worker waits for the lock instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if key.startswith("sqlite") else {}
    for attempt in range(3):  # workers that start together on an empty database race to create its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat arguments
                _STORAGES[key] = optuna.storages.RDBStorage(
                    key, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=_requeue)  # fmt: skip
            return _STORAGES[key]
        except ImportError as err:  # the URL's driver (psycopg for postgresql://, ...), which Optuna re-raises
            missing = err if isinstance(err, ModuleNotFoundError) else err.__cause__ or err.__context__
            name = getattr(missing, "name", None) or "its module"
            hint = " (pip install 'mlstm-autotune[postgres]')" if key.startswith("postgresql") else ""
            raise StorageError(f"the database driver for {_redact(key)} is not installed: {name}{hint}") from err
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
            if attempt < 2 and isinstance(err, sqlalchemy.exc.SQLAlchemyError):
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StorageError(f"cannot open the study storage {_redact(key)}: {first}") from err
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    head, sep, rest = url.partition("://")
    cred, at, host = rest.rpartition("@")
    if at and ":" in cred:
        cred = cred.split(":", 1)[0] + ":***"
    return f"{head}{sep}{cred}{at}{host}"


def open_study(storage: str | Path, name: str, seed: int = 0) -> optuna.Study:
    """The study ``name`` in ``storage`` (``open_storage``), created on first use."""
    storage = open_storage(storage)
    # multivariate + group: TPE models each variant's own parameters together (the space is conditional: the
    # variant decides which parameters exist). On replayed timings with structure it found a planted optimum for 8 of
    # 8 sampler seeds at 60 trials and 7 of 8 at 30, where independent TPE found it for 5 and 3
    # (tuning_db/reports/NOTES.md)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize",
                               load_if_exists=True)  # fmt: skip


def _point_key(variant: str, config: dict) -> str:
    return json.dumps({"variant": variant, "config": config}, sort_keys=True)


def _suggest(trial: optuna.Trial, candidates: list[Variant]) -> tuple[Variant, dict]:
    variant = by_name(trial.suggest_categorical("variant", [v.name for v in candidates]))
    stem = variant.template.removesuffix(".py.j2")
    config = {p: trial.suggest_categorical(f"{stem}.{p}", list(choices))
              for p, choices in space.PARAMS[variant.template].items()}  # fmt: skip
    return variant, config


def _enqueue(study: optuna.Study, variant: Variant, config: dict, mark: str, **attrs) -> None:
    stem = variant.template.removesuffix(".py.j2")
    params = {"variant": variant.name} | {f"{stem}.{p}": v for p, v in config.items()}
    study.enqueue_trial(params, user_attrs={mark: True, **attrs})


def _moves(variant: Variant, config: dict) -> list[tuple[str, object]]:
    """The one-parameter changes of ``config`` as (parameter, new value), nearest choices first and round-robin over
    the parameters (every parameter's nearest alternative, then every parameter's next one, ...); none of the
    parameters the variant's kernels do not read (``space.inert``)."""
    per_param = []
    for p, choices in space.PARAMS[variant.template].items():
        if config.get(p) not in choices or p in space.inert(variant):
            continue
        i = choices.index(config[p])
        others = sorted((j for j in range(len(choices)) if j != i), key=lambda j: (abs(j - i), -j))
        per_param.append([(p, choices[j]) for j in others])
    return [m for step in itertools.zip_longest(*per_param) for m in step if m is not None]


def neighbours(variant: Variant, config: dict) -> list[dict]:
    """The configurations that differ from ``config`` in one launch parameter, in ``_moves`` order."""
    return [{**config, p: value} for p, value in _moves(variant, config)]


def _pending_points(study: optuna.Study) -> set[str]:
    """The points of trials queued and not yet asked, or being measured (by another worker on this study; queued by a
    run that was cut off)."""
    points = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        if "point" in t.user_attrs:
            points.add(t.user_attrs["point"])
            continue
        params = t.system_attrs.get("fixed_params", t.params)
        if "variant" in params:
            config = {k.partition(".")[2]: v for k, v in params.items() if k != "variant"}
            points.add(_point_key(params["variant"], config))
    return points


def _retry_waiting(study: optuna.Study) -> bool:
    """Whether a point of a dead worker is queued (``_close_abandoned``)."""
    _close_abandoned(study)
    return any("retry_of" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


NO_BEST_YET = "no best yet"


def _next_neighbour(
    study: optuna.Study, candidates: list[Variant], DHQK: int, DHHV: int, dtype_bytes: int, limits: space.Limits
):
    """The next local-search step: ((variant, config), move, base_ms, base) for the first valid one-parameter
    neighbour of the study's best point ``base`` (or its configuration in another variant of the same template: move
    ["variant", name]) that no trial holds yet (measured, failed, running on another worker or queued), where
    ``move`` = [parameter, value] is the change and ``base_ms`` the best point's time. Moves that beat their own
    base point earlier come first, the largest win first; then moves not tried yet, in ``neighbours`` order; moves that
    lost from an earlier base point come last. Every new best point thus tries the known wins and the untried moves
    before it measures again the moves that lost. When every single move has been measured from the best point, pairs
    of the PAIR_POOL moves that lost least from it (``_pair_step``; move [p1, v1, p2, v2]). NO_BEST_YET while no point
    has been measured (the default may be running on another worker); None when the best point has no untried
    neighbour or pair (a local optimum)."""
    usable = _usable(study, DHQK, DHHV, dtype_bytes, limits)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and "point" in t.user_attrs and usable(t)]
    if not complete:
        return NO_BEST_YET
    best_trial = min(complete, key=lambda t: (t.value, t.number))
    best = json.loads(best_trial.user_attrs["point"])
    variant = by_name(best["variant"])
    if variant not in candidates:
        return None
    taken = {t.user_attrs["point"] for t in study.trials if "point" in t.user_attrs} | _pending_points(study)
    gain = {}  # what each move tried so far saved against its base point (negative: what it cost), its best case
    for t in study.trials:
        if "move" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.FAIL):
            move = tuple(t.user_attrs["move"])
            saved = t.user_attrs["base_ms"] - t.value if t.state == TrialState.COMPLETE else -math.inf
            gain[move] = max(gain.get(move, -math.inf), saved)
    # the other structures of the same template (same launch parameters) first among the untried moves: the same
    # configuration in another variant, e.g. the split backward kernels instead of the fused one
    moves = [("variant", v.name) for v in candidates if v.template == variant.template and v != variant]
    moves += _moves(variant, best["config"])
    # moves that won before first (largest win first), then untried ones as listed, then those that lost (least first)
    for p, value in sorted(moves, key=lambda move: -gain.get(move, 0.0)):
        to, config = _apply(variant, best["config"], [p, value])
        if _point_key(to.name, config) not in taken and not space.invalid(to, config, DHQK, DHHV, dtype_bytes,
                                                                          limits):  # fmt: skip
            return (to, config), [p, value], best_trial.value, best_trial.user_attrs["point"]
    return _pair_step(study, best_trial, taken, DHQK, DHHV, dtype_bytes, limits)


# how many of the single moves that lost least from a local optimum are tried in pairs (at most 6 pairs per optimum)
PAIR_POOL = 4


def _apply(variant: Variant, config: dict, move: list) -> tuple[Variant, dict]:
    """(variant, config) after a move [p1, v1, p2, v2, ...]; a parameter "variant" names a sibling variant."""
    config = dict(config)
    for p, value in zip(move[::2], move[1::2]):
        if p == "variant":
            variant = by_name(value)
        else:
            config[p] = value
    return variant, config


def _pair_step(
    study: optuna.Study, best_trial, taken: set, DHQK: int, DHHV: int, dtype_bytes: int, limits: space.Limits
):
    """At a local optimum: the first untried, valid pair of two single moves from the best point, among the
    PAIR_POOL that lost least from it, the pair with the smallest summed loss first. Two knobs that each cost a little
    alone can pay together (64-wide value tiles and 3 stages in the split backward at the 7B layout: 8.62 and 8.78 ms
    alone against 8.32, the pair about 0.5 ms faster; tuning_db/reports/NOTES.md). None when there is no such pair."""
    base = best_trial.user_attrs["point"]
    loss = {}
    for t in study.trials:
        move = t.user_attrs.get("move")
        if t.state == TrialState.COMPLETE and t.user_attrs.get("base") == base and move and len(move) == 2:
            loss[tuple(move)] = min(loss.get(tuple(move), math.inf), t.value - best_trial.value)
    pool = sorted(loss, key=lambda m: loss[m])[:PAIR_POOL]
    pairs = sorted(itertools.combinations(pool, 2), key=lambda pq: loss[pq[0]] + loss[pq[1]])
    best = json.loads(base)
    for a, b in pairs:
        if a[0] == b[0]:
            continue  # two values of one parameter
        move = [*a, *b]
        to, config = _apply(by_name(best["variant"]), best["config"], move)
        if any(p in space.inert(to) for p in move[::2]):
            continue  # a parameter the pair's variant does not read: the pair would re-measure one move alone
        if _point_key(to.name, config) not in taken and not space.invalid(to, config, DHQK, DHHV, dtype_bytes,
                                                                          limits):  # fmt: skip
            return (to, config), move, best_trial.value, base
    return None


def _is_point_of(variant: Variant, config: dict, candidates: list[Variant]) -> bool:
    """Whether (variant, config) is a point of this search's space: a candidate variant and every launch parameter
    of its template, each with one of its choices (a database entry from before a parameter existed is not)."""
    choices = space.PARAMS.get(variant.template, {})
    return variant in candidates and set(config) == set(choices) and all(config[p] in choices[p] for p in choices)


def run_study(
    study: optuna.Study,
    candidates: list[Variant],
    default: tuple[Variant, dict],
    evaluate: Callable[[Variant, dict], Outcome],
    *,
    DHQK: int,
    DHHV: int,
    dtype_bytes: int,
    limits: space.Limits = space.H100_LIMITS,
    trials: int = 30,
    time_budget_s: float | None = None,
    progress: Callable[[dict], None] | None = None,
    starts: list[tuple[Variant, dict]] = (),
    seeds: list[tuple[Variant, dict]] = (),
) -> StudyResult:
    """Run ``study`` until it holds ``trials`` trials or ``time_budget_s`` is spent; return the winner. ``starts``:
    points measured right after the default (the winners of neighbouring shapes, autotune.tune.warm_starts, at most
    3), then ``seeds`` (space.seeds: structural changes that need several knobs at once), each unless this study has
    it already or it is not a valid point of its space. Then a local search from the best point (_queue_local_move)
    for at most half the trials, then TPE."""
    start = time.monotonic()
    _close_abandoned(study)
    seen, default_done = _queue_first_points(study, default, candidates, starts, seeds, DHQK, DHHV, dtype_bytes,
                                             limits)  # fmt: skip
    tally = _Tally(local_left=trials // 2)

    def settled() -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)

    # trials=0 only reads the study (the summary after --devices workers). A study that already holds ``trials``
    # settled points measures nothing more, unless its default has never run correctly (that is always asked) or a
    # point of a dead worker waits to be measured again
    while trials > 0 and ((settled() < trials and tally.asked < trials) or (tally.asked == 0 and not default_done)
                          or _retry_waiting(study)):  # fmt: skip
        if time_budget_s is not None and time.monotonic() - start > time_budget_s and study.best_trials:
            break
        _queue_local_move(study, candidates, tally, DHQK, DHHV, dtype_bytes, limits)
        tally.asked += 1
        _close_abandoned(study)  # a worker beside this one may have died since
        trial = study.ask()
        trial.set_user_attr("worker", _WORKER)
        variant, config = _suggest(trial, candidates)
        point = _point_key(variant.name, config)
        trial.set_user_attr("point", point)
        if point not in seen:
            seen.update(_settled_points(study))  # another worker on this study may have measured it since
        if point in seen:
            _repeat(study, trial, seen[point])
            continue
        _measure(study, trial, variant, config, evaluate, tally, DHQK, DHHV, dtype_bytes, limits)
        seen[point] = study.trials[trial.number]
        if progress is not None:
            progress(_progress_line(study, tally, trials, time.monotonic() - start))
    return _result(study, tally.evaluated, tally.pruned, tally.failed,
                   usable=_usable(study, DHQK, DHHV, dtype_bytes, limits))  # fmt: skip


@dataclass
class _Tally:
    """What one run has done so far: trials asked, points measured, pruned (with reasons) and failed, the local
    moves it may still queue, and the last measurement's (gate, timing) seconds for the progress line."""

    local_left: int
    asked: int = 0
    evaluated: int = 0
    pruned: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    last_s: tuple = (None, None)


def _queue_first_points(study, default, candidates, starts, seeds, DHQK, DHHV, dtype_bytes, limits):
    """Queue the default (unless it ran correctly before or is queued), up to 3 starts and the valid seeds, none
    that this study measured, pruned or queued already. Returns (points settled before: point -> trial, whether the
    default ran correctly before)."""
    # points queued or being measured (by another worker on this study; queued by a run that was cut off)
    pending = _pending_points(study)
    default_point = _point_key(default[0].name, default[1])
    default_done = any(t.user_attrs.get("default") and t.state == TrialState.COMPLETE for t in study.trials)
    if default_point not in pending and not default_done:
        _enqueue(study, *default, "default")  # first run, or the default failed before (e.g. a broken environment)
    # points measured or pruned before are not measured again; failures of earlier runs are retried once per run
    seen = _settled_points(study)
    queued = {default_point} | pending

    def new(variant, config) -> bool:
        point = _point_key(variant.name, config)
        return point not in seen and point not in queued and _is_point_of(variant, config, candidates)

    n_starts = 0
    for variant, config in starts:
        if n_starts < 3 and new(variant, config):
            _enqueue(study, variant, config, "start")
            queued.add(_point_key(variant.name, config))
            n_starts += 1
    for variant, config in seeds:
        if new(variant, config) and not space.invalid(variant, config, DHQK, DHHV, dtype_bytes, limits):
            _enqueue(study, variant, config, "seed")
            queued.add(_point_key(variant.name, config))
    return seen, default_done


def _settled_points(study: optuna.Study) -> dict:
    """The points this study measured or pruned: point -> trial."""
    settled = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {t.user_attrs["point"]: t for t in settled if "point" in t.user_attrs}


def _queue_local_move(study, candidates, tally: _Tally, DHQK, DHHV, dtype_bytes, limits) -> None:
    """The local search: queue the best point's next valid one-parameter neighbour not yet tried (while nothing
    else waits and the run may still move). On a real GPU a trial costs seconds, and in a few dozen trials over a
    space of ~10^6 points TPE alone does not reach the one-knob wins that forced runs show; moving from the best
    point combines them."""
    if tally.local_left <= 0 or _has_waiting(study):
        return
    step = _next_neighbour(study, candidates, DHQK, DHHV, dtype_bytes, limits)
    if step is None:
        tally.local_left = 0  # the best point's neighbours are all tried: a local optimum
    elif step is not NO_BEST_YET:
        point, move, base_ms, base = step
        _enqueue(study, *point, "neighbour", move=move, base_ms=base_ms, base=base)
        tally.local_left -= 1


def _repeat(study, trial, previous) -> None:
    """A point asked again: the earlier outcome, not a second measurement."""
    for k, val in previous.user_attrs.items():  # the outcome only
        if k not in ("point", "worker", "retry_of", "repeat_of", *_MARKS):
            trial.set_user_attr(k, val)
    trial.set_user_attr("repeat_of", previous.number)
    study.tell(trial, previous.value if previous.state == TrialState.COMPLETE else None,
               state=previous.state if previous.state != TrialState.COMPLETE else None)  # fmt: skip


def _measure(study, trial, variant, config, evaluate, tally: _Tally, DHQK, DHHV, dtype_bytes, limits) -> None:
    """Prune an invalid point with its reason, else evaluate it (gate, then timing) and record the outcome."""
    reason = space.invalid(variant, config, DHQK, DHHV, dtype_bytes, limits)
    if reason:
        trial.set_user_attr("invalid", reason)
        study.tell(trial, state=TrialState.PRUNED)
        tally.pruned.append(reason)
        return
    with _Heartbeat(study, trial):
        outcome = evaluate(variant, config)
    tally.evaluated += 1
    tally.last_s = (outcome.gate_s, outcome.timing_s)
    if not _record(study, trial, outcome):
        logging.getLogger(__name__).warning(
            "trial %d was closed by another worker, which found no heartbeat of it within %d s: its point is queued "
            "again, and this measurement is not recorded", trial.number, GRACE_S)  # fmt: skip
        return
    if not outcome.ok:
        tally.failed.append(f"{variant.name} {config}: {outcome.reason}")


def _record(study, trial, outcome: Outcome) -> bool:
    """The outcome into the trial; False where another worker closed the trial meanwhile, taking this one for dead
    (no heartbeat within GRACE_S: a stalled host or storage); that worker queued the point again."""
    try:
        for k in ("p20_ms", "p80_ms", "error", "reason", "gate_s", "timing_s"):
            trial.set_user_attr(k, getattr(outcome, k))
        if outcome.ok:
            study.tell(trial, outcome.p50_ms)
        else:
            study.tell(trial, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise  # a ValueError of another kind
        return False
    return True


def _progress_line(study, tally: _Tally, trials: int, elapsed: float) -> dict:
    done = len(study.trials)
    best = study.best_value if any(t.state == TrialState.COMPLETE for t in study.trials) else None
    return {"trial": done, "of": trials, "best_ms": best, "elapsed_s": elapsed,
            "eta_s": elapsed / max(1, tally.evaluated + len(tally.pruned)) * max(0, trials - done),
            "last_gate_s": tally.last_s[0], "last_timing_s": tally.last_s[1]}  # fmt: skip


_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: assume it is still at work
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()  # this process's own RUNNING trial is from an earlier, aborted run


_MARKS = ("default", "start", "seed", "neighbour", "move", "base_ms", "base")  # why a point was queued


def _close_abandoned(study: optuna.Study) -> None:
    """Close the trials whose worker died (a run cut off, a host lost) as FAIL, and queue their points again with the
    marks they were queued with and ``retry_of``: the point is measured again instead of being taken as a failure.
    A worker of this host is dead when its process is gone; on a database storage, a worker of any host is dead when
    its heartbeat is older than ``GRACE_S`` (Optuna's ``fail_stale_trials``, which calls ``_requeue``). When two
    workers close the same trial, only one of them requeues it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # nothing on a journal file: it keeps no heartbeats
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(t.user_attrs.get("worker", ":0")):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker closed it first
            _requeue(study, t)


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the point of a trial closed for its dead worker again."""
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    if "variant" in params:
        marks = {k: v for k, v in trial.user_attrs.items() if k in _MARKS}
        study.enqueue_trial(params, user_attrs={**marks, "retry_of": trial.number})


def interrupted_trials(study: optuna.Study) -> set[int]:
    """The trials closed for a dead worker: not failures of their points."""
    return {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs} | {
        t.number for t in study.trials if t.user_attrs.get("interrupted")
    }


class _Heartbeat:
    """Records the trial's heartbeat every ``HEARTBEAT_S`` while a point is measured (database storages only; the
    measuring happens in a worker process, so this thread is free to run)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        import threading

        self._storage, self._id = study._storage, trial._trial_id
        self._stop = threading.Event()
        self._thread = None
        # the study's storage is Optuna's cache in front of the RDBStorage; both speak the heartbeat protocol
        if hasattr(self._storage, "record_heartbeat") and self._storage.get_heartbeat_interval():
            self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            self._storage.record_heartbeat(self._id)

    def __enter__(self):
        if self._thread is not None:
            self._storage.record_heartbeat(self._id)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _outcome(trial: optuna.trial.FrozenTrial) -> Outcome:
    ok = trial.state == TrialState.COMPLETE
    a = trial.user_attrs
    inf = float("inf")
    return Outcome(ok, trial.value if ok else inf, a.get("p20_ms", inf), a.get("p80_ms", inf), a.get("error"),
                   a.get("reason", a.get("invalid", "")))  # fmt: skip


def _still_valid(trial, DHQK: int, DHHV: int, dtype_bytes: int, limits: space.Limits) -> bool:
    """Whether a measured trial's point is still one the space allows. A rule added since (configurations found to
    miscompute on a GPU) then keeps an earlier run's point from winning or from being searched around."""
    if "point" not in trial.user_attrs:
        return True
    point = json.loads(trial.user_attrs["point"])
    variant = by_name(point["variant"])
    return space.invalid(variant, space.upgrade(variant, point["config"]), DHQK, DHHV, dtype_bytes, limits) is None


def _usable(study: optuna.Study, DHQK: int, DHHV: int, dtype_bytes: int, limits: space.Limits) -> Callable:
    """Whether a measured trial may be the study's best: a point the space still allows (every measured point passed
    the correctness gate, autotune.gate, when it ran)."""
    return lambda trial: _still_valid(trial, DHQK, DHHV, dtype_bytes, limits)


class NoCorrectPoint(RuntimeError):
    """A study none of whose measured points passed the gate, its default included: it has no winner."""


def _result(study: optuna.Study, evaluated: int, pruned: list[str], failed: list[str],
            usable: Callable = lambda trial: True) -> StudyResult:  # fmt: skip
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and usable(t)]
    default_trial = next(t for t in study.trials if t.user_attrs.get("default"))
    if not complete:
        raise NoCorrectPoint(f"no point of study {study.study_name} ran correctly (the default: "
                           f"{_outcome(default_trial).reason or default_trial.state.name})")  # fmt: skip
    best = min(complete, key=lambda t: (t.value, t.number))
    point = json.loads(best.user_attrs["point"])
    interrupted = interrupted_trials(study)
    kinds = collections.Counter(failure_kind(t.user_attrs.get("reason", "")) for t in study.trials
                                if t.state == TrialState.FAIL and t.number not in interrupted)  # fmt: skip
    return StudyResult(point["variant"], point["config"], _outcome(best), _outcome(default_trial), len(study.trials),
                       evaluated, pruned, failed, dict(kinds.most_common()))  # fmt: skip
