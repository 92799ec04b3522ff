"""The tuning database: versioned JSON, one file per GPU model, with provenance for every entry.

Two places hold files: the packaged ``tuning_db/`` (read-only, shipped winners) and the user database directory
(``MLSTM_AUTOTUNE_DB``, default ``$XDG_CACHE_HOME/mlstm-autotune`` or ``~/.cache/mlstm-autotune``), which is what
``mlstm-tune tune`` writes. A file is ``<GPU model>.json`` with spaces as underscores, e.g. ``NVIDIA_H200.json``:

    {"schema_version": 1, "gpu": "NVIDIA H200", "capability": [9, 0],
     "entries": [{"key": {...Key fields...}, "variant": "<generated module name>", "config": {...launch params...},
                  "provenance": {"gpu", "capability", "torch", "triton", "date", "p50_ms", "p20_ms", "p80_ms",
                                 "default_ms", "error_vs_reference", "shape"}}]}

Reading never raises: a missing file is no database; a corrupt, truncated or future-version file gives one
``TuningDBWarning`` and is skipped. Writing is atomic (a temporary file renamed over the old one) under an exclusive
lock (a ``.lock`` file beside it), so concurrent tuners lose no entries.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_VERSION = 1
PROVENANCE_FIELDS = ("gpu", "capability", "torch", "triton", "date", "p50_ms", "p20_ms", "p80_ms", "default_ms",
                     "error_vs_reference", "shape")  # fmt: skip


class TuningDBWarning(UserWarning):
    """A tuning database file was skipped (corrupt, truncated, future schema, invalid entries)."""


@dataclass(frozen=True, order=True)
class Key:
    """What a tuned entry is for. S and BNH are buckets (powers of two, see ``bucket``)."""

    op: str  # form and cell, e.g. "chunkwise:exp", "parallel:sig", "step:exp", "sequence:exp"
    direction: str  # "fw" | "fwbw"
    dtype: str  # the inputs' dtype, e.g. "bfloat16"
    DHQK: int
    DHHV: int
    S: int
    BNH: int
    structure: str  # the template (structural family) of the winner, e.g. "chunkwise_fused_fw"


@dataclass
class Entry:
    key: Key
    variant: str
    config: dict
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"key": asdict(self.key), "variant": self.variant, "config": self.config, "provenance": self.provenance}


@dataclass
class TuningDB:
    gpu: str
    capability: tuple[int, int]
    entries: dict[Key, Entry] = field(default_factory=dict)
    path: Path | None = None

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "gpu": self.gpu,
            "capability": list(self.capability),
            "entries": [self.entries[k].to_json() for k in sorted(self.entries)],
        }


def bucket(n: int) -> int:
    """The power of two at or above n (n >= 1): 1, 2, 4, ..."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def file_name(gpu: str) -> str:
    """``NVIDIA H200`` -> ``NVIDIA_H200.json`` (characters other than letters, digits, '-', '_' become '_')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu.strip()) + ".json"


def user_dir() -> Path:
    env = os.environ.get("MLSTM_AUTOTUNE_DB")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mlstm-autotune"


def problems(data) -> list[str]:
    """Everything wrong with a parsed database file; [] when it is valid."""
    if not isinstance(data, dict):
        return [f"top level is {type(data).__name__}, not an object"]
    version = data.get("schema_version")
    if not isinstance(version, int):
        return ["schema_version missing or not an int"]
    if version > SCHEMA_VERSION:
        return [f"schema_version {version} is newer than this library's {SCHEMA_VERSION}: upgrade mlstm-autotune"]
    if version < 1:
        return [f"schema_version {version} is not a known version"]
    out = []
    if not isinstance(data.get("gpu"), str) or not data["gpu"]:
        out.append("gpu missing or not a string")
    cap = data.get("capability")
    if not (isinstance(cap, list) and len(cap) == 2 and all(isinstance(c, int) for c in cap)):
        out.append("capability must be [major, minor]")
    entries = data.get("entries")
    if not isinstance(entries, list):
        return out + ["entries missing or not a list"]
    names = set(Key.__dataclass_fields__)
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("key"), dict) or set(e["key"]) != names:
            out.append(f"entry {n}: key must have exactly the fields {sorted(names)}")
            continue
        if not isinstance(e.get("variant"), str) or not isinstance(e.get("config"), dict):
            out.append(f"entry {n}: variant (string) and config (object) are required")
        prov = e.get("provenance", {})
        if not isinstance(prov, dict) or not isinstance(prov.get("p50_ms", 0.0), (int, float)):
            out.append(f"entry {n}: provenance must be an object with a numeric p50_ms")
    return out


def _parse(data: dict, path: Path | None) -> TuningDB:
    db = TuningDB(gpu=data["gpu"], capability=tuple(data["capability"]), path=path)
    for e in data["entries"]:
        key = Key(**e["key"])
        db.entries[key] = Entry(key, e["variant"], dict(e["config"]), dict(e.get("provenance", {})))
    return db


def read(path: Path) -> TuningDB | None:
    """The database in ``path``; None (and one TuningDBWarning) if it cannot be used; None if it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"mlstm-autotune: skipping tuning database {path}: unreadable ({err})", TuningDBWarning,
                      stacklevel=2)  # fmt: skip
        return None
    found = problems(data)
    if found:
        warnings.warn(f"mlstm-autotune: skipping tuning database {path}: {'; '.join(found[:3])}", TuningDBWarning,
                      stacklevel=2)  # fmt: skip
        return None
    return _parse(data, path)


def read_all(folder: Path) -> list[TuningDB]:
    """Every usable database in a folder, in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [db for p in sorted(folder.glob("*.json")) if (db := read(p)) is not None]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, db: TuningDB) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(db.to_json(), fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _better(new: Entry, old: Entry | None) -> bool:
    if old is None:
        return True
    return new.provenance.get("p50_ms", float("inf")) < old.provenance.get("p50_ms", float("inf"))


def upsert(
    path: Path, gpu: str, capability: tuple[int, int], entries: Iterable[Entry], *, replace: bool = False
) -> int:
    """Add entries to the database in ``path`` under its lock; an existing entry for the same key is kept unless the
    new one is faster (lower p50) or ``replace``. A file that cannot be read is moved aside (``.corrupt``) rather
    than overwritten silently. Returns how many entries were written."""
    path = Path(path)
    with _locked(path):
        db = None
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TuningDBWarning)
                db = read(path)
            if db is None:
                aside = path.with_suffix(path.suffix + ".corrupt")
                os.replace(path, aside)
                warnings.warn(f"mlstm-autotune: {path} was unusable; moved to {aside}", TuningDBWarning, stacklevel=2)
        if db is None:
            db = TuningDB(gpu=gpu, capability=tuple(capability), path=path)
        elif db.gpu != gpu:
            raise ValueError(f"{path} holds entries for {db.gpu!r}, not {gpu!r}")
        written = 0
        for e in entries:
            if replace or _better(e, db.entries.get(e.key)):
                db.entries[e.key] = e
                written += 1
        _write_atomic(path, db)
        return written


def remove(path: Path, drop: Callable[[Key], bool]) -> int:
    """Remove the entries whose key ``drop`` selects from the database in ``path``, under its lock. Returns how
    many were removed."""
    path = Path(path)
    with _locked(path):
        db = read(path)
        if db is None:
            raise ValueError(f"{path} is not a usable tuning database")
        gone = [k for k in db.entries if drop(k)]
        for k in gone:
            del db.entries[k]
        if gone:
            _write_atomic(path, db)
        return len(gone)


def merge(dst: Path, src: Path) -> int:
    """Merge the entries of ``src`` into ``dst`` (faster entry wins per key). Returns how many were taken."""
    other = read(src)
    if other is None:
        raise ValueError(f"{src} is not a usable tuning database")
    return upsert(dst, other.gpu, other.capability, other.entries.values())
