"""The ``mlstm-tune`` command (run as ``python -m autotune`` in a fresh interpreter), the installed distribution's
metadata, and ``autotune.paths``."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

import autotune
from autotune import paths
from autotune.torch import (
    get_available_mlstm_kernels,
    get_available_mlstm_sequence_kernels,
    get_available_mlstm_step_kernels,
)

DATA_FOLDERS = ("templates", "generated", "tuning_db")


def cli(*args: str, command: tuple[str, ...] = (sys.executable, "-m", "autotune")) -> subprocess.CompletedProcess:
    """Run the command in a fresh interpreter, from a folder that is not the repository (so the installed package,
    not the working directory, is what gets imported)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=Path.home(), env=env)


def test_kernels_lists_every_registered_name():
    result = cli("kernels")
    assert result.returncode == 0, result.stderr
    lines = {line.strip() for line in result.stdout.splitlines()}
    names = get_available_mlstm_kernels() + get_available_mlstm_step_kernels() + get_available_mlstm_sequence_kernels()
    assert get_available_mlstm_kernels(), "no kernels registered"
    missing = [n for n in names if n not in lines]
    assert not missing, f"`kernels` does not list {missing}:\n{result.stdout}"


def test_paths_prints_the_data_folders():
    result = cli("paths")
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert set(printed) == set(DATA_FOLDERS), result.stdout
    for name, folder in printed.items():
        assert Path(folder).is_dir(), f"{name}: {folder} is not a folder"
        assert Path(folder).resolve() == paths.data_dir(name).resolve()


def test_version():
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mlstm-autotune", autotune.__version__]


def test_no_command_prints_help_and_fails():
    result = cli()
    assert result.returncode != 0
    assert "kernels" in result.stdout and "paths" in result.stdout


def test_unknown_command_fails():
    result = cli("no-such-command")
    assert result.returncode != 0
    assert "no-such-command" in result.stderr


def test_console_script_version():
    script = shutil.which("mlstm-tune")
    if script is None:
        pytest.skip("the mlstm-tune console script is not on PATH (package not installed with its scripts)")
    result = cli("--version", command=(script,))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mlstm-autotune", autotune.__version__]


def test_distribution_metadata_matches_the_package():
    """The installed distribution, pyproject.toml and ``autotune.__version__`` agree; the console script points at
    the CLI's main."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert importlib.metadata.version("mlstm-autotune") == autotune.__version__ == pyproject["project"]["version"]
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("mlstm-tune") == "autotune.cli:main"
    assert pyproject["project"]["scripts"]["mlstm-tune"] == "autotune.cli:main"


def test_the_wheel_carries_the_data_folders_and_only_the_databases():
    """The wheel carries templates/, generated/ and every database of tuning_db/ inside the package, where
    paths.data_dir looks for them; not tuning_db's reports, logs, README or lock files."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    found = (REPO / "tuning_db").glob("*.json")
    databases = {f"tuning_db/{p.name}": f"autotune/_data/tuning_db/{p.name}" for p in found}
    assert databases, "no database in tuning_db/"
    expected = {"templates": "autotune/_data/templates", "generated": "autotune/_data/generated", **databases}
    assert force == expected


@pytest.mark.parametrize("name", DATA_FOLDERS)
def test_data_dir_exists(name):
    folder = paths.data_dir(name)
    assert folder.is_dir()
    assert folder.name == name
    getter = {"templates": paths.templates_dir, "generated": paths.generated_dir, "tuning_db": paths.tuning_db_dir}
    assert getter[name]() == folder


@pytest.mark.parametrize("name", ["nope", "", "Templates", "tuning-db", "_data"])
def test_data_dir_unknown_name(name):
    with pytest.raises(ValueError) as info:
        paths.data_dir(name)
    missing = [n for n in DATA_FOLDERS if n not in str(info.value)]
    assert not missing, f"the message does not list {missing}: {info.value}"
