"""Runtime choice of the generated variant and launch configuration for a call, from the tuning databases.

Key: (GPU model, op, direction, dtype, DHQK, DHHV, S bucket, B*NH bucket) and the allowed structures. Fallback ladder,
first answer wins:
    override   MLSTM_AUTOTUNE_FORCE='{"chunkwise:exp": {"variant": "<module name>", "config": {...}}}' for the
               forward; the key "chunkwise:exp/fwbw" forces the backward of a training step
    exact      an entry for this GPU model with the same buckets (user database first, then the packaged one)
    nearest    an entry for this GPU model with the same op/direction/dtype/head dims, nearest buckets in log2
               distance (ties: the smaller S, then the smaller B*NH)
    same-arch  the same two rungs in a database of another GPU model with the same compute capability
    default    the built-in default of the caller's structure
The first lookup of a key reads the database files once; later calls are one dictionary hit. Choices are
deterministic (ties broken by fixed orders, never by timing), so every rank of a job picks the same kernel.
``logging.getLogger("autotune.dispatch")`` at DEBUG names the rung and the file that answered.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import db as tdb
from . import paths

log = logging.getLogger("autotune.dispatch")


@dataclass(frozen=True)
class Choice:
    variant: str  # generated module name
    config: dict
    rung: str  # override | exact | nearest | same-arch | default
    source: str  # the database file, the environment variable, or "built-in"

    def __hash__(self):
        return hash((self.variant, self.rung, self.source))


@dataclass(frozen=True)
class Request:
    op: str
    direction: str
    dtype: str
    DHQK: int
    DHHV: int
    S: int
    BNH: int
    structures: tuple[str, ...]  # allowed structures (templates without .py.j2); () means any


def _log2_distance(a: int, b: int) -> float:
    return abs(math.log2(a) - math.log2(b))


def _best(entries: list[tdb.Entry], req: Request, exact: bool) -> tdb.Entry | None:
    fits = [
        e for e in entries
        if (e.key.op, e.key.direction, e.key.dtype, e.key.DHQK, e.key.DHHV) ==
        (req.op, req.direction, req.dtype, req.DHQK, req.DHHV)
        and (not req.structures or e.key.structure in req.structures)
        and (not exact or (e.key.S, e.key.BNH) == (req.S, req.BNH))
    ]  # fmt: skip
    if not fits:
        return None

    def rank(e: tdb.Entry):
        distance = _log2_distance(e.key.S, req.S) + _log2_distance(e.key.BNH, req.BNH)
        return (distance, e.key.S, e.key.BNH, e.provenance.get("p50_ms", math.inf), e.key.structure, e.variant)

    return min(fits, key=rank)


class Dispatcher:
    """Holds the databases of one process and the memo of answered keys."""

    def __init__(self, packaged: Path | None = None, user: Path | None = None):
        self._packaged, self._user = packaged, user
        self._cache: dict[tuple, Choice] = {}
        self._dbs: list[tdb.TuningDB] | None = None
        self._override: dict | None = None
        # callers' own memo of finished answers, keyed by whatever identifies a call for them cheaply (raw dtype,
        # device, shape); cleared with everything else by reset()
        self.memo: dict = {}

    def reset(self) -> None:
        """Forget loaded databases, overrides and answers (after a tuning run wrote new entries). Environment
        variables (MLSTM_AUTOTUNE_FORCE, MLSTM_AUTOTUNE_DB, MLSTM_AUTOTUNE_DISPATCH) are read again after it."""
        self.memo.clear()
        self._cache.clear()
        self._dbs = None
        self._override = None

    def _databases(self) -> list[tdb.TuningDB]:
        if self._dbs is None:
            user = self._user if self._user is not None else tdb.user_dir()
            packaged = self._packaged if self._packaged is not None else paths.tuning_db_dir()
            self._dbs = tdb.read_all(user) + tdb.read_all(packaged)  # user entries are consulted first
        return self._dbs

    def _overrides(self) -> dict:
        if self._override is None:
            raw = os.environ.get("MLSTM_AUTOTUNE_FORCE", "")
            self._override = {}
            if raw:
                try:
                    parsed = json.loads(raw)
                    if not isinstance(parsed, dict):
                        raise ValueError("not an object")
                    self._override = parsed
                except ValueError as err:
                    warnings.warn(f"mlstm-autotune: ignoring MLSTM_AUTOTUNE_FORCE ({err})", stacklevel=3)
        return self._override

    def choose(self, req: Request, gpu: str, capability: tuple[int, int], default: Callable[[], tuple[str, dict]],
               validate: Callable[[Choice], None] | None = None) -> Choice:  # fmt: skip
        """The variant and configuration for ``req`` on ``gpu``; ``default()`` gives the built-in answer. ``validate``
        (raising ValueError or KeyError) checks a database answer once; one that fails is replaced by the default
        with a warning. The answer is memoised: later calls with the same request are one dictionary hit."""
        memo = (gpu, req)
        hit = self._cache.get(memo)
        if hit is not None:
            return hit
        choice = self._resolve(req, gpu, tuple(capability), default)
        if validate is not None and choice.rung != "default":
            try:
                validate(choice)
            except (KeyError, ValueError) as err:
                warnings.warn(f"mlstm-autotune: ignoring the {choice.rung} choice from {choice.source} for {req} "
                              f"({err}); using the built-in default", stacklevel=3)  # fmt: skip
                variant, config = default()
                choice = Choice(variant, dict(config), "default", "built-in (the tuned entry was invalid)")
        log.debug("%s %s -> %s %s (rung %s, from %s)", gpu, req, choice.variant, choice.config, choice.rung,
                  choice.source)  # fmt: skip
        self._cache[memo] = choice
        return choice

    def _resolve(self, req, gpu, capability, default) -> Choice:
        key = req.op if req.direction == "fw" else f"{req.op}/{req.direction}"  # e.g. "chunkwise:exp/fwbw"
        forced = self._overrides().get(key)
        if isinstance(forced, dict) and isinstance(forced.get("variant"), str):
            return Choice(forced["variant"], dict(forced.get("config", {})), "override", "MLSTM_AUTOTUNE_FORCE")
        dbs = self._databases()
        own = [d for d in dbs if d.gpu == gpu]
        same_arch = [d for d in dbs if d.gpu != gpu and tuple(d.capability) == capability]
        for rung, group, exact in (("exact", own, True), ("nearest", own, False), ("same-arch", same_arch, True),
                                   ("same-arch", same_arch, False)):  # fmt: skip
            for d in group:
                entry = _best(list(d.entries.values()), req, exact)
                if entry is not None:
                    return Choice(entry.variant, dict(entry.config), rung, str(d.path))
        variant, config = default()
        return Choice(variant, dict(config), "default", "built-in")


_DISPATCHER = Dispatcher()


def dispatcher() -> Dispatcher:
    """The process-wide dispatcher."""
    return _DISPATCHER
