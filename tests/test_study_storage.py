"""Studies shared through a database (autotune.search.open_storage): several tuner processes on one study, one of
them killed in the middle of a measurement. SQLite covers one host; PostgreSQL runs as a real server that the test
starts here (Debian's postgresql package, which .ci/run installs). The processes run tests/study_worker.py: the
search on replayed timings (tests/test_search.py), so the best point is known."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
import test_search
from optuna.trial import TrialState
from study_worker import GRACE_S, structured
from test_search import OPTIMUM, Replay, narrowed_space, run

from autotune import search

WORKER = Path(__file__).with_name("study_worker.py")
TRIALS = 60


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own on a free local port, trusting local connections; stopped after the module."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server here (initdb not found; .ci/run installs Debian's postgresql package)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the test extra installs it)")
    data = Path(tempfile.mkdtemp(prefix="mlstm-pg-"))  # not under pytest's tmp_path: that is closed to other users
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    cluster = data / "cluster"
    subprocess.run([*as_user, initdb, "-D", str(cluster), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -F"
    subprocess.run([*as_user, pg_ctl, "-D", str(cluster), "-o", options, "-l", str(data / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE tuning")
        yield f"postgresql://postgres@127.0.0.1:{port}/tuning"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(cluster), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


def _worker(storage: str, study: str, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), storage, study, str(TRIALS), str(log), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _measurements(*logs: Path) -> list[dict]:
    return [json.loads(line) for log in logs if log.exists() for line in log.read_text().splitlines()]


def test_two_workers_share_one_study_and_a_killed_one_loses_nothing(storage_url, tmp_path, monkeypatch):
    narrowed_space(monkeypatch)
    monkeypatch.setattr(test_search, "replayed_ms", structured)
    single = run(search.open_study(tmp_path / "single.journal", "single"), Replay(), trials=TRIALS)
    assert (single.best_variant, single.best_config) == OPTIMUM

    study_name = f"shared-{uuid.uuid4().hex[:8]}"
    log_a, log_b, log_c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    # worker A says it runs on another host: only its heartbeat can tell that it died
    a = _worker(storage_url, study_name, log_a, "--hang-at", "3", "--host", "another-host", "--seed", "1")
    b = _worker(storage_url, study_name, log_b, "--seed", "2")
    hang = Path(f"{log_a}.hang")
    deadline = time.monotonic() + 300
    while not hang.exists():
        assert a.poll() is None, a.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "worker A never reached its third measurement"
        time.sleep(0.1)
    a.send_signal(signal.SIGKILL)  # in the middle of a measurement, its trial RUNNING in the storage
    killed_at = time.monotonic()
    a.wait()
    from_b = _finish(b)
    time.sleep(max(0.0, killed_at + GRACE_S + 1 - time.monotonic()))  # past the dead worker's heartbeat grace
    from_c = _finish(_worker(storage_url, study_name, log_c, "--seed", "3"))  # a worker that comes later

    study = search.open_study(storage_url, study_name)
    hung_point = hang.read_text()
    hung = [t for t in study.trials if t.user_attrs.get("point") == hung_point and t.state == TrialState.FAIL]
    assert len(hung) == 1 and hung[0].number in search.interrupted_trials(study)
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == hung[0].number]
    assert [t.state for t in retried] == [TrialState.COMPLETE], "the killed worker's point was not measured again"
    assert retried[0].user_attrs["point"] == hung_point
    assert not [
        t for t in study.trials if t.state == TrialState.FAIL and t.number not in search.interrupted_trials(study)
    ]
    settled = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(settled) >= TRIALS

    # no point measured again once a measurement of it had ended (two at once, by two workers, may happen)
    by_point: dict[str, list[dict]] = {}
    for m in sorted(_measurements(log_a, log_b, log_c), key=lambda m: m["start"]):
        by_point.setdefault(m["point"], []).append(m)
    for point, ms in by_point.items():
        for earlier, later in zip(ms, ms[1:]):
            assert later["start"] < earlier["end"], f"{point} measured again after its measurement had ended"

    best = json.loads(study.best_trial.user_attrs["point"])
    assert (best["variant"], best["config"]) == OPTIMUM
    for result in (from_b, from_c):
        assert (result["variant"], result["config"]) == OPTIMUM


def test_a_study_continues_across_processes(storage_url, tmp_path):
    """A second process on the same storage and study measures nothing that the first one measured."""
    name = f"resume-{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _finish(_worker(storage_url, name, first))
    _finish(_worker(storage_url, name, second))
    assert _measurements(first) and not _measurements(second)


def test_an_unreachable_database_fails_with_a_clear_message(tmp_path):
    port = _free_port()  # nothing listens there
    with pytest.raises(search.StorageError, match="cannot open the study storage"):
        search.open_storage(f"sqlite:///{tmp_path}/no/such/folder/studies.db")
    with pytest.raises(search.StorageError) as err:
        search.open_storage(f"postgresql://someone:secret@127.0.0.1:{port}/tuning")
    assert "secret" not in str(err.value)


def test_a_missing_driver_names_it(tmp_path):
    with pytest.raises(search.StorageError, match="driver .* not installed: pymysql"):
        search.open_storage("mysql+pymysql://u@127.0.0.1/db")


def test_tune_reports_a_bad_storage_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autotune", "tune", "--db", str(tmp_path), "--storage",
                           f"sqlite:///{tmp_path}/no/such/folder/s.db"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "mlstm-tune tune: cannot open the study storage" in proc.stderr


@pytest.mark.parametrize("closed", [False, True], ids=["running", "closed-by-another-worker"])
def test_a_worker_whose_trial_another_closed_records_nothing_and_goes_on(closed, tmp_path):
    """A worker whose heartbeat stalled past the grace period finds its trial closed (FAIL) and queued again by
    another worker: its measurement is dropped, not an UpdateFinishedTrialError that ends the whole run."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'studies.db'}", study_name="s")
    trial = study.ask()
    if closed:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    recorded = search._record(study, trial, search.Outcome(True, 1.0, 0.9, 1.1, 0.0, "", 0.1, 0.2))
    assert recorded is not closed
    assert study.trials[0].state == (TrialState.FAIL if closed else TrialState.COMPLETE)
    assert ("p20_ms" in study.trials[0].user_attrs) is not closed
