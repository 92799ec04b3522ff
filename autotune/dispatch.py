"""Runtime choice of the generated variant and launch configuration for a call, from the tuning databases.

Key: (GPU model, op, direction, dtype, DHQK, DHHV, S bucket, B*NH bucket) and the allowed structures. Fallback ladder,
first answer wins:
    override   MLSTM_AUTOTUNE_FORCE='{"chunkwise:exp": {"variant": "<module name>", "config": {...}}}' for the
               forward; the key "chunkwise:exp/fwbw" forces the backward of a training step (see below)
    exact      an entry for this GPU model with the same buckets (user database first, then the packaged one)
    nearest    an entry for this GPU model with the same op/direction/dtype/head dims, nearest buckets in log2
               distance (ties: the smaller S, then the smaller B*NH)
    same-arch  the same two rungs in a database of another GPU model with the same compute capability
    default    the built-in default of the caller's structure
The first lookup of a key reads the database files once; later calls are one dictionary hit, plus one lookup that
notices a changed MLSTM_AUTOTUNE_FORCE. Choices are deterministic (ties broken by fixed orders, never by timing), so
every rank of a job picks the same kernel.
``logging.getLogger("autotune.dispatch")`` at DEBUG names the rung and the file that answered.

MLSTM_AUTOTUNE_FORCE, the override rung:
* Keys are an op, "<form>:<cell>" (FORCE_KEYS: chunkwise, parallel, step, sequence; exp, sig), for the forward, or
  "chunkwise:<cell>/fwbw", "parallel:<cell>/fwbw" for the backward of a training step. A key forces every call of
  that op (all entries of its form and cell) at every shape. Each value is {"variant": <generated module name>,
  "config": {<launch parameters>}}; omitted categorical parameters (and those added after entries were first
  tuned) take the launcher's defaults for old entries, every numeric one must be given (the error for an
  incomplete configuration prints the variant's default one for the call's head dims, to start from).
* It is read at every call, for the cost of one dictionary lookup: a value set before the process starts, or with
  os.environ (or monkeypatch.setenv) at any time, applies from the next call on; changing or removing it forgets
  the answers memoised under the old value (the databases stay loaded). The backward of a training step is chosen
  at its forward (the forward must know whether to keep its states for it), so a value set between the two
  applies from the next step. os.putenv alone, or replacing the os.environ object, is not seen until reset().
* It never falls back silently: malformed JSON, a value that is not such an object, an unknown key, or (at a call
  of that op: the Triton entries' validation) a variant the entry cannot run (an unknown module, another cell, or
  another structure than the entry allows: e.g. a fused forward for ``triton_xl_chunk``) or an invalid
  configuration (a missing or unknown launch parameter, a value the launcher refuses) raises OverrideError (a
  ValueError) naming MLSTM_AUTOTUNE_FORCE and its key, at every call until the variable is fixed or unset, before
  anything is launched. Database entries that fail validation still fall back to the default with a warning.
* A backward forced with "states": "reuse" takes the forward's per-chunk states when the forward kept them at
  the backward's stride (a two-pass forward stores them at that stride for it; a fused forward only when its
  chunk equals it); otherwise, or with MLSTM_AUTOTUNE_BACKWARD_STATES=recompute, it recomputes them at its own
  chunk: the rest of the forced configuration still applies.
* MLSTM_AUTOTUNE_DISPATCH=0 takes the built-in default even for a forced op (a malformed value still raises).
  Unlike the override, it, MLSTM_AUTOTUNE_DB and the database files are read once per key, again after reset()."""

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

FORCE_VAR = "MLSTM_AUTOTUNE_FORCE"
# the keys FORCE_VAR may hold: the ops of the Triton entries (forward), and "<op>/fwbw" for the forms that have a
# generated backward (the backward of a training step)
_CELLS = ("exp", "sig")
FORCE_KEYS = tuple(f"{form}:{cell}" for form in ("chunkwise", "parallel", "step", "sequence") for cell in _CELLS)
FORCE_KEYS += tuple(f"{form}:{cell}/fwbw" for form in ("chunkwise", "parallel") for cell in _CELLS)
_UNREAD = object()  # FORCE_VAR's raw value before the first read


class OverrideError(ValueError):
    """MLSTM_AUTOTUNE_FORCE is malformed, or forces a variant or configuration that cannot run a call."""


def _env_lookup(name: str):
    """(mapping, key) with ``mapping.get(key)`` the raw value of environment variable ``name``, None when unset, for
    the cost of one dictionary lookup: the dict behind CPython's os.environ, which assignments, del, pop, update,
    clear and monkeypatch.setenv all change in place (os.environ.get costs ~1 us for an unset variable: a KeyError
    raised and caught inside). Elsewhere os.environ itself."""
    environ = os.environ
    data, encodekey = getattr(environ, "_data", None), getattr(environ, "encodekey", None)
    if isinstance(data, dict) and callable(encodekey):
        return data, encodekey(name)
    return environ, name


def parse_force(text: str) -> dict:
    """The forced choices in a value of MLSTM_AUTOTUNE_FORCE ({} for an empty one); OverrideError if malformed."""
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except ValueError as err:
        raise OverrideError(f"{FORCE_VAR} is not valid JSON ({err}): {text!r}") from None
    shape = '{"<op>": {"variant": "<generated module name>", "config": {<launch parameters>}}}'
    if not isinstance(parsed, dict):
        raise OverrideError(f"{FORCE_VAR} must be a JSON object {shape}, got {text!r}")
    for key, forced in parsed.items():
        if key not in FORCE_KEYS:
            raise OverrideError(f"{FORCE_VAR} has an unknown key {key!r}; the keys are {', '.join(FORCE_KEYS)}")
        if not isinstance(forced, dict) or not isinstance(forced.get("variant"), str):
            raise OverrideError(f"{FORCE_VAR}[{key!r}] must be an object with a \"variant\" string and an optional "
                                f"\"config\" object, got {json.dumps(forced)}")  # fmt: skip
        if set(forced) - {"variant", "config"}:
            raise OverrideError(f"{FORCE_VAR}[{key!r}] has unknown fields {sorted(set(forced) - {'variant', 'config'})}"
                                '; only "variant" and "config"')  # fmt: skip
        if not isinstance(forced.get("config", {}), dict):
            raise OverrideError(f"{FORCE_VAR}[{key!r}][\"config\"] must be an object, got "
                                f"{json.dumps(forced['config'])}")  # fmt: skip
    return parsed


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


def _force_key(req: Request) -> str:
    return req.op if req.direction == "fw" else f"{req.op}/{req.direction}"  # e.g. "chunkwise:exp/fwbw"


class Dispatcher:
    """Holds the databases of one process and the memo of answered keys."""

    def __init__(self, packaged: Path | None = None, user: Path | None = None):
        self._packaged, self._user = packaged, user
        self._cache: dict[tuple, Choice] = {}
        self._dbs: list[tdb.TuningDB] | None = None
        self._override: dict = {}
        # where MLSTM_AUTOTUNE_FORCE is read (see _env_lookup), and the raw value the answers in _cache and memo were
        # given under: a call whose lookup returns another object re-reads it (sync_force)
        self.force_env, self.force_key = _env_lookup(FORCE_VAR)
        self.force_raw = _UNREAD
        # callers' own memo of finished answers, keyed by whatever identifies a call for them cheaply (raw dtype,
        # device, shape); cleared with everything else by reset()
        self.memo: dict = {}
        # counts the times the answers were forgotten (reset, a changed override): callers that keep work derived
        # from answers elsewhere (JAX's recorded calls, autotune/jax/triton_exec.py) key it on this
        self.generation = 0

    def reset(self) -> None:
        """Forget loaded databases, overrides and answers (after a tuning run wrote new entries). Environment
        variables (MLSTM_AUTOTUNE_DB, MLSTM_AUTOTUNE_DISPATCH) are read again after it; MLSTM_AUTOTUNE_FORCE is read
        at every call anyway (this also finds a replaced os.environ object)."""
        self.memo.clear()
        self._cache.clear()
        self._dbs = None
        self._override = {}
        self.force_env, self.force_key = _env_lookup(FORCE_VAR)
        self.force_raw = _UNREAD
        self.generation += 1

    def _databases(self) -> list[tdb.TuningDB]:
        if self._dbs is None:
            user = self._user if self._user is not None else tdb.user_dir()
            packaged = self._packaged if self._packaged is not None else paths.tuning_db_dir()
            self._dbs = tdb.read_all(user) + tdb.read_all(packaged)  # user entries are consulted first
        return self._dbs

    def sync_force(self) -> None:
        """Take up the current value of MLSTM_AUTOTUNE_FORCE; callers run this when ``force_env.get(force_key) is not
        force_raw`` (one dictionary lookup per call). A changed value forgets the answers given under the old one;
        a malformed one raises OverrideError and is not taken up, so every call raises until it is fixed."""
        raw = self.force_env.get(self.force_key)
        parsed = parse_force(os.environ.get(FORCE_VAR, "") if raw is not None else "")
        if parsed != self._override:
            log.debug("%s changed to %s: forgetting %d memoised answers", FORCE_VAR, parsed, len(self._cache))
            self.memo.clear()
            self._cache.clear()
            self._override = parsed
            self.generation += 1
        self.force_raw = raw

    def choose(self, req: Request, gpu: str, capability: tuple[int, int], default: Callable[[], tuple[str, dict]],
               validate: Callable[[Choice], None] | None = None) -> Choice:  # fmt: skip
        """The variant and configuration for ``req`` on ``gpu``; ``default()`` gives the built-in answer. ``validate``
        (raising ValueError or KeyError) checks a database answer once; one that fails is replaced by the default
        with a warning; a forced one (MLSTM_AUTOTUNE_FORCE) that fails raises OverrideError. The answer is memoised:
        later calls with the same request are one dictionary hit (and one for MLSTM_AUTOTUNE_FORCE)."""
        if self.force_env.get(self.force_key) is not self.force_raw:
            self.sync_force()
        memo = (gpu, req)
        hit = self._cache.get(memo)
        if hit is not None:
            return hit
        choice = self._resolve(req, gpu, tuple(capability), default)
        if validate is not None and choice.rung != "default":
            try:
                validate(choice)
            except (KeyError, ValueError) as err:
                if choice.rung == "override":
                    raise OverrideError(
                        f"{FORCE_VAR}[{_force_key(req)!r}] forces {choice.variant} {json.dumps(choice.config)}, which "
                        f"cannot run this call ({req}): {err.args[0] if isinstance(err, KeyError) else err}. Fix or "
                        f"unset {FORCE_VAR}"
                    ) from err
                warnings.warn(f"mlstm-autotune: ignoring the {choice.rung} choice from {choice.source} for {req} "
                              f"({err}); using the built-in default", stacklevel=3)  # fmt: skip
                variant, config = default()
                choice = Choice(variant, dict(config), "default", "built-in (the tuned entry was invalid)")
        log.debug("%s %s -> %s %s (rung %s, from %s)", gpu, req, choice.variant, choice.config, choice.rung,
                  choice.source)  # fmt: skip
        self._cache[memo] = choice
        return choice

    def _resolve(self, req, gpu, capability, default) -> Choice:
        forced = self._override.get(_force_key(req))
        if forced is not None:  # parse_force checked its form
            return Choice(forced["variant"], dict(forced.get("config", {})), "override", FORCE_VAR)
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
