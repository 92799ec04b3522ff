"""``mlstm-tune validate`` on the CPU (interpreter, tiny shapes): the report's rows and fields, a planted faulty entry
that fails, and --fix removing it from the user database only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from autotune import db as tdb
from autotune import measure, validate

GPU, CAP = "cpu-interpreter", (0, 0)
PARALLEL = (
    "parallel_fw__cell-exp",
    {"query_tile": 32, "kv_tile": 16, "dhqk_tile": 16, "dhhv_tile": 16, "num_warps": 4, "num_stages": 1},
)
FIELDS = {"op", "direction", "dtype", "B", "NH", "S", "DHQK", "DHHV", "variant", "config", "runs", "distinct_outputs",
          "error", "reference_error", "error_by_output", "passed", "gpu_run", "key"}  # fmt: skip


def entry(S: int, variant: str, config: dict) -> tdb.Entry:
    key = tdb.Key("parallel:exp", "fw", "float32", 16, 16, tdb.bucket(S), 2, "parallel_fw")
    return tdb.Entry(key, variant, config, {"shape": [1, 2, S, 16, 16], "p50_ms": 1.0})


def args(*db: Path, out: Path, fix: bool = False) -> argparse.Namespace:
    return argparse.Namespace(db=[str(p) for p in db], out=str(out), fix=fix, no_defaults=True)


@pytest.fixture
def user_db(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MLSTM_AUTOTUNE_DB", str(tmp_path / "user"))
    path = tmp_path / "user" / tdb.file_name(GPU)
    tdb.upsert(path, GPU, CAP, [entry(64, *PARALLEL), entry(256, PARALLEL[0], dict(PARALLEL[1], query_tile=64))])
    return path


def racy_at_bq64(monkeypatch) -> None:
    """The query_tile=64 entry gives other bits on every other call: a race that only the determinism check sees."""
    real, calls = measure._runner, []

    def runner(job, timing=False):
        run = real(job, timing)
        if (job.config.get("query_tile"), job.config.get("kv_tile")) != (64, 16):  # the entry, not the trusted kernel
            return run

        def flaky(x):
            calls.append(1)
            return run(x) * (1 + 1e-3 * (len(calls) % 2))

        return flaky

    monkeypatch.setattr(measure, "_runner", runner)


def test_every_entry_gets_a_row_with_the_report_fields(user_db: Path, tmp_path: Path):
    assert validate.run(args(user_db, out=tmp_path / "reports")) == 0
    rows = json.loads((tmp_path / "reports" / "cpu-interpreter-validate.json").read_text())
    assert len(rows) == 2 and all(FIELDS <= set(r) for r in rows)
    assert all(r["passed"] and r["distinct_outputs"] == 1 and r["gpu_run"] == GPU for r in rows)
    assert {r["config"]["query_tile"] for r in rows} == {32, 64}
    assert all(set(r["error_by_output"]) == {"h"} for r in rows)


def test_a_racy_entry_fails_and_fix_removes_it_from_the_user_database(user_db: Path, tmp_path: Path, monkeypatch):
    racy_at_bq64(monkeypatch)
    assert validate.run(args(user_db, out=tmp_path / "reports")) == 1
    rows = json.loads((tmp_path / "reports" / "cpu-interpreter-validate.json").read_text())
    bad = [r for r in rows if not r["passed"]]
    assert len(bad) == 1 and bad[0]["config"]["query_tile"] == 64 and bad[0]["distinct_outputs"] == 2
    assert len(tdb.read(user_db).entries) == 2  # without --fix nothing is removed
    assert validate.run(args(user_db, out=tmp_path / "reports", fix=True)) == 1
    left = tdb.read(user_db).entries.values()
    assert [e.config["query_tile"] for e in left] == [32]


def test_fix_leaves_a_database_outside_the_user_folder(user_db: Path, tmp_path: Path, monkeypatch):
    packaged = tmp_path / "packaged" / user_db.name
    packaged.parent.mkdir()
    packaged.write_text(user_db.read_text())
    racy_at_bq64(monkeypatch)
    assert validate.run(args(packaged, out=tmp_path / "reports", fix=True)) == 1
    assert len(tdb.read(packaged).entries) == 2


def test_an_entry_that_no_longer_launches_is_a_failed_row(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLSTM_AUTOTUNE_DB", str(tmp_path / "user"))
    path = tmp_path / "user" / tdb.file_name(GPU)
    tdb.upsert(path, GPU, CAP, [entry(64, PARALLEL[0], dict(PARALLEL[1], query_tile=24))])  # not a power of two
    assert validate.run(args(path, out=tmp_path)) == 1
    (row,) = json.loads((tmp_path / "cpu-interpreter-validate.json").read_text())
    assert not row["passed"] and "query_tile" in row["reasons"][0]


FAMILIES = [("chunkwise:exp", "fw", "chunkwise_twopass_fw"), ("chunkwise:exp", "fw", "chunkwise_fused_fw"),
            ("parallel:exp", "fw", "parallel_fw"), ("chunkwise:exp", "fwbw", "chunkwise_bw"),
            ("parallel:exp", "fwbw", "parallel_bw"), ("step:exp", "fw", "recurrent_step"),
            ("sequence:exp", "fw", "recurrent_sequence")]  # fmt: skip


def test_the_defaults_cover_every_family_at_both_layouts_for_both_cells():
    rows = validate.default_rows()
    kinds = {(r.op, r.direction, r.variant.split("__")[0], r.DHQK) for r in rows}
    for cell in ("exp", "sig"):
        families = [(op.replace(":exp", f":{cell}"), direction, name) for op, direction, name in FAMILIES]
        assert {(*family, DHQK) for family in families for DHQK in (256, 128)} <= kinds
    assert all(f"cell-{r.op.split(':')[1]}" in r.variant for r in rows)  # each row's kernel is of its op's cell
    assert all(r.key == "default" for r in rows)
    assert {r.dtype for r in rows} == set(validate.DTYPES)
    fp32 = validate.default_rows(("float32",))  # the chunkwise forward's default depends on the dtype
    assert {r.variant for r in fp32} - {r.variant for r in rows} >= {"chunkwise_twopass_fw__cell-exp_state-input"}
    assert len(rows) == len({(r.variant, str(r.config), r.DHQK, r.dtype) for r in rows})  # each configuration once


def test_only_checks_the_selected_rows_into_a_report_of_their_own(user_db: Path, tmp_path: Path):
    """--only S~256 checks the one entry of that shape class and leaves the full report of an earlier run as it was."""
    reports = tmp_path / "reports"
    assert validate.run(args(user_db, out=reports)) == 0
    full = (reports / "cpu-interpreter-validate.json").read_text()
    assert validate.run(argparse.Namespace(**vars(args(user_db, out=reports)), only=["fw", "S~256"])) == 0
    (row,) = json.loads((reports / "cpu-interpreter-validate-subset.json").read_text())
    assert row["config"]["query_tile"] == 64 and "S~256" in row["key"]
    assert (reports / "cpu-interpreter-validate.json").read_text() == full
