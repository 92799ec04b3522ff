"""The packaged tuning databases are covered by their committed validation reports: every shipped entry of
tuning_db/<GPU>.json has a row of tuning_db/reports/<GPU>-validate.json with its variant and configuration, every
row passed the correctness gate on a GPU (named in gpu_run), and the built-in defaults were validated with them.
A database edited without `mlstm-tune validate` of its entries fails here (docs/hazards.md, tuning_db/README.md)."""

from __future__ import annotations

import json

import pytest
from helpers import REPO

DATABASES = sorted((REPO / "tuning_db").glob("*.json"))


def _row_key(key: dict) -> str:
    return f"{key['op']}/{key['direction']} {key['dtype']} S~{key['S']} BNH~{key['BNH']} {key['structure']}"


@pytest.mark.parametrize("database", DATABASES, ids=lambda p: p.stem)
def test_every_shipped_entry_passed_the_gate_on_a_gpu(database):
    report = REPO / "tuning_db" / "reports" / f"{database.stem}-validate.json"
    assert report.exists(), f"{database.name} has no validation report ({report.name})"
    rows = json.loads(report.read_text())
    by_key = {row["key"]: row for row in rows if row["key"] != "default"}
    entries = json.loads(database.read_text())["entries"]
    assert entries
    for entry in entries:
        row = by_key.get(_row_key(entry["key"]))
        assert row is not None, f"{_row_key(entry['key'])}: not in {report.name}"
        assert (row["variant"], row["config"]) == (entry["variant"], entry["config"]), row["key"]
    assert len(by_key) == len(entries), f"{report.name} has rows of entries {database.name} does not ship"
    defaults = [row for row in rows if row["key"] == "default"]
    assert defaults, f"{report.name}: the built-in defaults were not validated"
    for row in rows:
        assert row["passed"] and row["distinct_outputs"] == 1, row["key"]
        assert row["gpu_run"].startswith("NVIDIA"), row["key"]


@pytest.mark.parametrize("database", DATABASES, ids=lambda p: p.stem)
def test_the_reports_validate_the_defaults_the_dispatcher_runs_now(database):
    """Every built-in default `mlstm-tune validate` checks (autotune.validate.default_rows: each Triton entry's,
    each backward form's, the training forward, the step and sequence kernels, for both cells, in validate.DTYPES) has
    a passing row of the report, with its variant, configuration, head dims and dtype: a default changed without a
    GPU validation fails here. A report's configuration is read in current knob names, knobs added since filled with
    the value it ran with (autotune.families.canonical), as the dispatcher reads a database entry."""
    from autotune.families import canonical
    from autotune.validate import default_rows
    from autotune.variants import by_name

    def config(r: dict) -> str:
        return json.dumps(canonical(by_name(r["variant"]).template, r["config"]), sort_keys=True)

    report = REPO / "tuning_db" / "reports" / f"{database.stem}-validate.json"
    validated = {(r["variant"], config(r), r["DHQK"], r["DHHV"], r["S"], r["dtype"])
                 for r in json.loads(report.read_text()) if r["key"] == "default" and r["passed"]}  # fmt: skip
    for row in default_rows():
        point = (row.variant, json.dumps(row.config, sort_keys=True), row.DHQK, row.DHHV, row.S, row.dtype)
        assert point in validated, f"{report.name}: default {point} not validated"
