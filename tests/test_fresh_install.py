"""A fresh install runs the main job: README's set-up commands in a new virtual environment (no test extra, so
whatever numpy the package's own requirements let pip choose), then `mlstm-tune tune --preset quick` on the CPU (the
Triton interpreter's path, which numpy 2.4 broke: autotune/interpreter_compat.py) and README's CPU quickstart.
The torch line is run with the torch of this environment pinned (`torch==2.13.0` in CI, a wheel on local disk), so
that the test downloads no CUDA build."""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    after = README.split(marker, 1)[1]
    return re.search(r"```(?:bash|python)\n(.*?)```", after, re.S).group(1)


def setup_commands() -> list[list[str]]:
    """README's set-up commands (the block after <!-- setup-commands -->), comments dropped."""
    lines = [line.split("#", 1)[0].split() for line in _block_after("<!-- setup-commands -->").splitlines()]
    return [words for words in lines if words]


def test_readme_names_two_set_up_commands_that_install_torch_and_the_package():
    assert setup_commands() == [["pip", "install", "torch"], ["pip", "install", "."]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the main job (the GPU path: tests/gpu)")
def test_a_fresh_virtual_environment_runs_the_main_job(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env["MLSTM_AUTOTUNE_DB"] = str(tmp_path / "db")

    def sh(*args: str, cwd: Path = tmp_path, timeout: float = 900) -> str:
        proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    for words in setup_commands():
        assert words[:2] == ["pip", "install"]
        spec = [f"torch=={torch.__version__.split('+')[0]}" if w == "torch" else w for w in words[2:]]
        sh("-m", "pip", "install", "--quiet", "--disable-pip-version-check", *spec, cwd=ROOT)
    numpy_version = sh("-c", "import numpy; print(numpy.__version__)").strip()
    print(f"fresh environment: numpy {numpy_version}")

    out = sh("-m", "autotune", "tune", "--preset", "quick", "--trials", "4")
    assert "wrote 1 entry" in out and (tmp_path / "db" / "cpu-interpreter.json").exists()
    # README's CPU quickstart, as written
    out = sh("-c", _block_after("## Quickstart on a CPU"))
    assert "torch.Size([2, 4, 100, 96])" in out
