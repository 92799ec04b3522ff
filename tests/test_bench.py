"""`mlstm-tune bench` on this machine: without a GPU, ``--smoke`` runs every row kind on tiny shapes under Triton's
interpreter and writes the JSON, markdown and PNG; missing comparison libraries are reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the command")


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=900)  # fmt: skip


def test_smoke_bench_writes_rows_table_and_plot(tmp_path: Path):
    out = _bench("--smoke", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "cpu-interpreter-bench.json").read_text())
    assert {(r["op"], r["pass"]) for r in rows} == {("chunkwise", "fw"), ("chunkwise", "fwbw"), ("step", "fw")}
    for r in rows:
        assert {"op", "pass", "B", "NH", "S", "DHQK", "DHHV"} <= set(r)
        assert r["ours_ms"] > 0 and r["default_ms"] > 0
        for column in ("upstream_ms", "fla_ms"):  # measured, or a reason why not
            assert column in r or column in r["notes"]
    table = (tmp_path / "cpu-interpreter-bench.md").read_text()
    assert "says nothing about speed" in table and table.count("| chunkwise |") == 2
    assert (tmp_path / "cpu-interpreter-bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_gpu_needs_smoke(tmp_path: Path):
    out = _bench("--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "--smoke" in out.stdout
