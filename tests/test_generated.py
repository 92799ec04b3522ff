"""generated/ is in sync with templates/, carries its banner and manifest, passes the linter, and compiles for the
H200's sm_90 without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune import paths, render
from autotune.variants import VARIANTS

GENERATED = paths.generated_dir()


def test_generated_is_up_to_date():
    stale = render.stale_files()
    assert not stale, f"generated/ is out of date with templates/ ({stale}): run `mlstm-tune render`"


def test_render_is_deterministic(tmp_path: Path):
    assert render.render(tmp_path) != []
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert render.render(tmp_path) == [], "a second render changed files"
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first


def test_stale_detection(tmp_path: Path):
    render.render(tmp_path)
    victim = tmp_path / f"{VARIANTS[0].name}.py"
    victim.write_text(victim.read_text() + "# hand edit\n")
    (tmp_path / "leftover__x.py").write_text("# from a variant that no longer exists\n")
    assert set(render.stale_files(tmp_path)) == {victim.name, "leftover__x.py"}
    assert set(render.render(tmp_path)) == {victim.name, "leftover__x.py"}
    assert render.stale_files(tmp_path) == []


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_banner_and_manifest(variant):
    text = (GENERATED / f"{variant.name}.py").read_text()
    banner = text.splitlines()[:5]
    t_hash = render.template_hash(paths.templates_dir(), variant.template)
    assert banner[0].startswith("# GENERATED FILE - DO NOT EDIT")
    assert banner[1] == f"# template:        {variant.template}"
    assert banner[2] == f"# template hash:   {t_hash}"
    for key, value in variant.params.items():
        assert f"{key}={value}" in banner[3]
    assert "mlstm-tune render" in banner[4]
    manifest = json.loads((GENERATED / "MANIFEST.json").read_text())
    assert manifest[f"{variant.name}.py"] == {
        "family": variant.family, "template": variant.template, "template_hash": t_hash, "params": variant.params,
    }  # fmt: skip


def test_manifest_lists_exactly_the_files():
    manifest = json.loads((GENERATED / "MANIFEST.json").read_text())
    assert set(manifest) == {p.name for p in GENERATED.glob("*.py")}


def test_generated_passes_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(GENERATED)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_kernel_compiles_for_sm90():
    """Triton's ahead-of-time compile to sm_90 cubin at the default configurations (bf16, the 7B head layout):
    catches compiler errors the interpreter cannot see, with no GPU. All dtypes and layouts:
    `mlstm-tune compile-check`."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch; from autotune.compile_check import check; "
        "rows = check(90, dtypes=(torch.bfloat16,), head_dims=((256, 512),)); "
        "bad = [r for r in rows if not r['ok']]; print(len(rows), 'compiled'); "
        "[print(r['variant'], r['kernel'], r['error']) for r in bad]; raise SystemExit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
