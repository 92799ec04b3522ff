"""Where the data folders live: the one place that resolves templates/, generated/ and tuning_db/.

In a source checkout or an editable install they are the top-level folders of the repository; a wheel carries
them inside the package as ``autotune/_data/<name>`` (see ``[tool.hatch.build.targets.wheel.force-include]``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_DATA_FOLDERS = ("templates", "generated", "tuning_db")


def data_dir(name: str) -> Path:
    """Return the folder ``name`` (one of templates, generated, tuning_db); raise if it is missing."""
    if name not in _DATA_FOLDERS:
        raise ValueError(f"unknown data folder {name!r}; known: {', '.join(_DATA_FOLDERS)}")
    candidates = (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"data folder {name!r} not found (tried {tried}); is the installation complete?")


def templates_dir() -> Path:
    return data_dir("templates")


def generated_dir() -> Path:
    return data_dir("generated")


def tuning_db_dir() -> Path:
    return data_dir("tuning_db")
