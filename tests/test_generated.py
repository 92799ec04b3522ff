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


FLOAT_TYPE_CHECK = """
import json, torch
from triton.backends.compiler import GPUTarget
from autotune import compile_check
from autotune.variants import VARIANTS

def f64_uses(ir):  # f64 in the kernels' own code: not in signatures, nor in the _fp32 helper and its calls
    uses, helper = [], False
    for line in ir.splitlines():
        if "tt.func" in line:
            helper = "_fp32__" in line
        elif "f64" in line and not helper and "_fp32__" not in line:
            uses.append(line.split(" loc(")[0].strip())
    return uses

rows, target = [], GPUTarget("cuda", 90, 32)
for row, fn, args, kwargs in compile_check.launches(VARIANTS, (torch.float32,), ((64, 64),)):
    floats = sorted(p.name for p, a in zip(fn.params, args) if isinstance(a, float))
    floats += sorted(k for k, a in kwargs.items() if isinstance(a, float))
    uses = {}
    for float_type in ("fp32", "fp64"):
        try:
            uses[float_type] = len(f64_uses(compile_check.ttir(fn, args, kwargs, target, float_type)))
        except Exception as err:
            uses[float_type] = type(err).__name__ + ": " + str(err).strip().splitlines()[-1][:200]
    rows.append(dict(row, floats=floats, **uses))
print(json.dumps(rows))
"""


def test_float_arguments_typed_fp64_change_no_arithmetic():
    """torch.compile's Inductor and jax-triton type a Python float argument (scale, eps) fp64 where Triton's own
    launcher types it fp32. Every kernel converts them to fp32 first, so its Triton IR holds the same float64
    operations either way (only bw_dm0_kernel has any: its chain is float64 on purpose); without that, an fp32
    accumulator multiplied by scale turned fp64 and the kernel did not compile (the H100, under torch.compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", FLOAT_TYPE_CHECK], capture_output=True, text=True, env=env,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.splitlines()[-1])
    assert sum(bool(r["floats"]) for r in rows) >= 30, "fewer kernels with float arguments than the templates have"
    bad = [r for r in rows if r["fp64"] != r["fp32"]]
    assert not bad, "\n".join(f"{r['variant']} {r['kernel']}: {r['fp32']} -> {r['fp64']}" for r in bad)
