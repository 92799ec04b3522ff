"""`mlstm-tune tune` end to end on this machine: without a GPU it runs a real (small) search under Triton's
interpreter, writes a labelled database entry with provenance, resumes from its journal, and `show` then answers
from that entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the command (the GPU path: gpu/)")


def run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True, env=env,
                          timeout=900)  # fmt: skip


def test_tune_quick_on_the_cpu_writes_a_labelled_entry_and_resumes(tmp_path: Path):
    env = dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path))
    first = run("tune", "--preset", "quick", "--trials", "6", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "interpreter" in first.stdout and "wrote 1 entry" in first.stdout
    data = json.loads((tmp_path / "cpu-interpreter.json").read_text())
    (entry,) = data["entries"]
    prov = entry["provenance"]
    assert prov["timing"].startswith("interpreter") and prov["p50_ms"] <= prov["default_ms"]
    assert prov["error_vs_reference"] <= 1e-4 and prov["torch"] == torch.__version__
    assert entry["key"]["op"] == "chunkwise:exp" and entry["key"]["dtype"] == "float32"
    journal = tmp_path / "studies.journal"
    size = journal.stat().st_size
    again = run("tune", "--preset", "quick", "--trials", "6", env=env)  # everything settled: nothing is measured
    assert again.returncode == 0, again.stderr
    assert "Using an existing study" in again.stderr
    shown = run("show", "--gpu", "cpu-interpreter", "--capability", "0.0", "--B", "1", "--NH", "2", "--S", "64",
                "--DHQK", "16", "--DHHV", "16", "--dtype", "float32", "--no-source", env=env)  # fmt: skip
    assert shown.returncode == 0 and "rung exact" in shown.stdout and entry["variant"] in shown.stdout
    assert journal.stat().st_size >= size


def test_tune_keeps_its_studies_in_a_database_url(tmp_path: Path):
    """--storage sqlite:///...: the studies go to that database (docs/fleet.md), and a second run resumes there."""
    env = dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    first = run("tune", "--preset", "quick", "--trials", "2", "--storage", url, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "studies.db").exists() and not (tmp_path / "studies.journal").exists()
    again = run("tune", "--preset", "quick", "--trials", "2", "--storage", url, env=env)
    assert again.returncode == 0 and "Using an existing study" in again.stderr, again.stderr
    import optuna

    (summary,) = optuna.get_all_study_summaries(storage=url)
    assert summary.n_trials >= 2 and summary.study_name.startswith("cpu-interpreter|chunkwise:exp|fw|float32")


def test_bad_shapes_file_is_a_clear_error(tmp_path: Path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"op": "chunkwise:relu", "B": 1, "NH": 1, "S": 8, "DHQK": 16, "DHHV": 16}]))
    out = run("tune", "--shapes", str(shapes), env=dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path)))
    assert out.returncode == 2 and "bad op" in out.stderr


@pytest.mark.parametrize("form,entry", [("chunkwise", "chunkwise--triton_auto"),
                                        ("parallel", "parallel--triton_limit_headdim")])  # fmt: skip
def test_tune_fwbw_writes_a_backward_entry_the_training_step_uses(form, entry, tmp_path: Path):
    """direction "fwbw": the search runs over the backward variants (gated on every gradient), the entry is keyed
    "fwbw", and a training step through a Triton entry then takes its backward from it."""
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"op": f"{form}:exp", "B": 1, "NH": 2, "S": 64, "DHQK": 32, "DHHV": 32,
                                   "dtype": "float32", "direction": "fwbw"}]))  # fmt: skip
    env = dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path))
    out = run("tune", "--shapes", str(shapes), "--trials", "5", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    (tuned,) = json.loads((tmp_path / "cpu-interpreter.json").read_text())["entries"]
    assert tuned["key"]["direction"] == "fwbw" and tuned["variant"].startswith(f"{form}_bw__cell-exp")
    assert tuned["provenance"]["error_vs_reference"] <= 1e-4
    code = (
        "import logging, torch; from autotune.torch import get_mlstm_kernel; from autotune.reference import "
        "random_inputs; logging.basicConfig(level=logging.DEBUG); "
        "x = {k: v.float().requires_grad_() for k, v in random_inputs(1, 2, 64, 32, 32).items()}; "
        f"get_mlstm_kernel('{entry}')(**x).sum().backward()"
    )
    step = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert step.returncode == 0, step.stderr[-2000:]
    assert f"{tuned['variant']}" in step.stderr and "rung exact" in step.stderr
    shown = run("show", "--kernel", entry, "--direction", "fwbw", "--gpu", "cpu-interpreter", "--capability", "0.0",
                "--B", "1", "--NH", "2", "--S", "64", "--DHQK", "32", "--DHHV", "32", "--dtype", "float32",
                "--no-source", env=env)  # fmt: skip
    assert shown.returncode == 0 and "rung exact" in shown.stdout and tuned["variant"] in shown.stdout
    # the forward every chunkwise training step runs is named beside the backward (launch.chunkwise.training_forward)
    forward = "forward:   chunkwise_twopass_fw__cell-exp_state-float32"
    assert (forward in shown.stdout) is (form == "chunkwise")


def test_fwbw_not_for_inference_forms(tmp_path: Path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"op": "step:exp", "B": 1, "NH": 1, "S": 1, "DHQK": 16, "DHHV": 16,
                                   "direction": "fwbw"}]))  # fmt: skip
    out = run("tune", "--shapes", str(shapes), env=dict(os.environ, MLSTM_AUTOTUNE_DB=str(tmp_path)))
    assert out.returncode == 2 and "bad direction" in out.stderr


def test_warm_starts_are_the_nearest_winners_of_the_same_kind(tmp_path: Path):
    """tune.warm_starts: winners for this GPU of the same op, direction, dtype and head dims, the shape's own bucket
    first, then the nearest, each point once; other GPUs and other head dims are not starts."""
    from autotune import db as tdb
    from autotune import tune

    def entry(S, BNH, BV, DHQK=256, op="chunkwise:exp"):
        key = tdb.Key(op, "fw", "bfloat16", DHQK, 512, S, BNH, "chunkwise_fused_fw")
        config = {"L": 64, "BV": BV, "num_warps": 4, "num_stages": 1}
        return tdb.Entry(key, "chunkwise_fused_fw__cell-exp_state-input", config, {"p50_ms": 1.0})

    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    tdb.upsert(mine / "GPU_A.json", "GPU A", (9, 0), [entry(8192, 64, 16), entry(2048, 256, 32, DHQK=128),
                                                      entry(4096, 128, 128)])  # fmt: skip
    tdb.upsert(shipped / "GPU_A.json", "GPU A", (9, 0), [entry(32768, 16, 64), entry(8192, 64, 16)])
    tdb.upsert(shipped / "GPU_B.json", "GPU B", (9, 0), [entry(8192, 64, 32)])
    key = tdb.Key("chunkwise:exp", "fw", "bfloat16", 256, 512, 4096, 128, "")
    starts = tune.warm_starts(key, "GPU A", [mine, shipped])
    # its own bucket (S=4096), then S=8192 (one bucket away, found twice), then S=32768
    assert [c["dhhv_tile"] for _, c in starts] == [128, 16, 64]  # entries in the names older databases use
    assert all(v.name == "chunkwise_fused_fw__cell-exp_state-input" for v, _ in starts)
    assert tune.warm_starts(key, "GPU C", [mine, shipped]) == []


def test_a_kernel_change_starts_new_studies(tmp_path: Path, monkeypatch):
    """Study names carry a fingerprint of the templates and launchers: times measured with other kernel code are
    not resumed and compared with new ones."""
    from autotune import paths, search, tune

    before = tune.code_fingerprint()
    assert before == tune.code_fingerprint() and len(before) == 8
    (tmp_path / "MANIFEST.json").write_text('{"a.py": {"template_hash": "0123"}}')
    monkeypatch.setattr(paths, "generated_dir", lambda: tmp_path)
    after = tune.code_fingerprint()
    assert after != before
    names = {search.study_name("GPU", "chunkwise:exp", "fw", "bfloat16", 256, 512, 2048, 256, code=c)
             for c in (before, after)}  # fmt: skip
    assert len(names) == 2


def test_warm_starts_skip_a_corrupt_database_file(tmp_path: Path):
    """A truncated database file in a folder warm_starts reads gives a warning and no starts, never an error."""
    from autotune import db as tdb
    from autotune import tune

    (tmp_path / "GPU_A.json").write_text('{"schema_version": 1, "gpu": "GPU A", "entr')
    key = tdb.Key("chunkwise:exp", "fw", "bfloat16", 256, 512, 4096, 128, "")
    with pytest.warns(tdb.TuningDBWarning):
        assert tune.warm_starts(key, "GPU A", [tmp_path]) == []


def test_a_warm_start_tuned_before_a_parameter_existed_reads_as_it_ran(tmp_path: Path):
    """A backward entry in the knob names of older databases, tuned before the split dv kernel had its own value tile,
    before the reverse recurrence's weights could come first and before its stores could go through descriptors (no
    "BVD", "dstate_gates", "state_stores"), and with the retired "states_every" at 1, comes back as a start in
    current names with dv_dhhv_tile = dhhv_tile, "inline" and "plain", what it ran; such a start is then a point of
    the search's space (else it would be skipped)."""
    from autotune import db as tdb
    from autotune import search, space, tune
    from autotune.launch import chunkwise_bw as launch_bw
    from autotune.variants import find

    split = find(launch_bw.TEMPLATE, cell="exp", kernels="split")
    old = {"L": 64, "BK": 64, "BV": 32, "BKS": 64, "BVS": 128, "num_warps": 4, "num_warps_state": 4, "num_stages": 1,
           "states": "recompute", "state_buffers": "input", "states_weighting": "v", "states_every": 1,
           "states_n": "sum"}  # fmt: skip
    key = tdb.Key("chunkwise:exp", "fwbw", "bfloat16", 256, 512, 2048, 256, "chunkwise_bw")
    tdb.upsert(tmp_path / "GPU_A.json", "GPU A", (9, 0), [tdb.Entry(key, split.name, old, {"p50_ms": 1.0})])
    [(variant, config)] = tune.warm_starts(key, "GPU A", [tmp_path])
    assert variant == split and config == {
        "chunk": 64, "dhqk_tile": 64, "dhhv_tile": 32, "states_dhqk_tile": 64, "states_dhhv_tile": 128, "num_warps": 4,
        "states_warps": 4, "num_stages": 1, "states": "recompute", "state_buffers": "input", "states_weighting": "v",
        "states_n": "sum", "dv_dhhv_tile": 32, "dstate_gates": "inline", "state_stores": "plain"}  # fmt: skip
    assert search._is_point_of(variant, config, space.variants_of("chunkwise", "exp", "fwbw"))


def test_the_local_search_leaves_parameters_a_variant_does_not_read():
    """The fused backward kernel does not read the split dv kernel's value tile (dv_dhhv_tile): no local-search move
    changes it there (it would re-measure the same kernels); the split variant's moves do."""
    from autotune import families, search
    from autotune.launch import chunkwise_bw as launch_bw
    from autotune.variants import find

    fused, split = (find(launch_bw.TEMPLATE, cell="exp", kernels=k) for k in ("fused", "split"))
    config = families.default_config(fused, 256, 512)
    assert not any(p == "dv_dhhv_tile" for p, _ in search._moves(fused, config))
    assert any(p == "dv_dhhv_tile" for p, _ in search._moves(split, config))


def test_a_shape_with_no_correct_point_gets_no_entry_and_the_others_go_on(tmp_path: Path, monkeypatch, capsys):
    """One shape whose study finds no correct point (its default failing the gate) leaves the others tuned and
    written; the command names it and exits 1."""
    from autotune import cli, search, tune

    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"op": "chunkwise:exp", "B": 1, "NH": 2, "S": S, "DHQK": 16, "DHHV": 16,
                                   "dtype": "float32"} for S in (32, 64)]))  # fmt: skip
    real = tune.tune_shape

    def first_fails(shape, **kw):
        if shape.S == 32:
            raise search.NoCorrectPoint("no point of study S32 ran correctly (the default: wrong result)")
        return real(shape, **kw)

    monkeypatch.setattr(tune, "tune_shape", first_fails)
    code = cli.main(["tune", "--shapes", str(shapes), "--trials", "2", "--db", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1 and "no point of study S32 ran correctly" in out.err and "wrote 1 entry" in out.out
    (entry,) = json.loads((tmp_path / "cpu-interpreter.json").read_text())["entries"]
    assert entry["key"]["S"] == 64
