"""``mlstm-tune validate``: the correctness gate (autotune.gate) on this GPU for every entry of the tuning databases
in use and for the built-in defaults; a table on the terminal and one JSON report per database.

Run it after a Triton, torch or driver upgrade: a configuration that was correct when it was tuned can be miscompiled
by another compiler. Each row is one (variant, configuration) at its database key's shape class (the gate's shape:
B=1, NH=2, the key's head dims, ``measure.gate_length(S)`` tokens); defaults have the key "default". The report
``<database>-validate.json`` (e.g. NVIDIA_H200-validate.json, also when an H100 ran it: ``gpu_run`` says which GPU
did) is rewritten after every row, so a run cut short keeps what it checked; ``--only TEXT`` (repeatable) checks the
rows whose key, direction and variant contain every TEXT, into ``<database>-validate-subset.json``. ``--fix`` removes
the failing entries from the user database (MLSTM_AUTOTUNE_DB); failing entries of a packaged database are reported,
and the dispatcher keeps using them until a retune replaces them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import db as tdb
from . import paths

# the head layouts and length the defaults are checked at: the xLSTM 7B layout and heads of 128, 2048 tokens
DEFAULT_LAYOUTS = ((8, 256, 512), (32, 128, 128))
DEFAULT_S = 2048
CELLS = ("exp", "sig")
DTYPES = ("bfloat16",)  # the dtypes the defaults are checked in (default_rows takes others: a default may depend on it)


@dataclass(frozen=True)
class Row:
    """One (variant, configuration) to check, and where it comes from."""

    key: str  # "default", or the database key it is the winner of
    op: str
    direction: str
    dtype: str
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    variant: str
    config: dict

    def job(self, device: str):
        from .measure import Job

        return Job(self.variant, self.config, self.B, self.NH, self.S, self.DHQK, self.DHHV, self.dtype, device)


def key_label(key: tdb.Key) -> str:
    """A database key as the report's "key" field."""
    return f"{key.op}/{key.direction} {key.dtype} S~{key.S} BNH~{key.BNH} {key.structure}"


def entry_rows(database: tdb.TuningDB) -> list[Row]:
    rows = []
    for key, e in sorted(database.entries.items()):
        B, NH, S, DHQK, DHHV = e.provenance.get("shape") or (1, key.BNH, key.S, key.DHQK, key.DHHV)
        rows.append(Row(key_label(key), key.op, key.direction, key.dtype, B, NH, S, DHQK, DHHV, e.variant,
                        dict(e.config)))  # fmt: skip
    return rows


def default_rows(dtypes: tuple[str, ...] = DTYPES) -> list[Row]:
    """The built-in defaults the dispatcher falls back to, for each cell (exp and sig) and each of ``dtypes``: per
    Triton entry (forward), per backward form (training step), the forward of a training step
    (launch.chunkwise.training_forward) and the step and sequence kernels, at DEFAULT_LAYOUTS (each distinct
    configuration once per dtype)."""
    from .families import default_config
    from .launch.chunkwise import training_forward
    from .torch import triton_choice
    from .torch import triton_kernels as tk
    from .variants import find

    rows, seen = [], set()

    def add(layout, op, direction, variant, config, S=DEFAULT_S):
        NH, DHQK, DHHV = layout
        point = (op, direction, dtype, variant, json.dumps(config, sort_keys=True), layout)
        if point not in seen:
            seen.add(point)
            rows.append(Row("default", op, direction, dtype, 1, NH, S, DHQK, DHHV, variant, dict(config)))

    for dtype, cell in itertools.product(dtypes, CELLS):
        step = find("recurrent_step.py.j2", cell=cell)
        sequence = find("recurrent_sequence.py.j2", cell=cell)
        for layout in DEFAULT_LAYOUTS:
            DHQK, DHHV = layout[1:]
            for op, _, default in tk._ENTRIES.values():
                if op.endswith(f":{cell}"):
                    add(layout, op, "fw", *default(64, DHQK, DHHV, getattr(torch, dtype)))
            for form in ("chunkwise", "parallel"):
                add(layout, f"{form}:{cell}", "fwbw", *triton_choice.backward_default(form, cell, DHQK, DHHV))
            # the forward of every chunkwise training step, on its own (also in autotune.hazards' static checks)
            variant, config = training_forward(cell, DHQK, DHHV, 64)
            add(layout, f"chunkwise:{cell}", "fw", variant.name, config)
            add(layout, f"step:{cell}", "fw", step.name, default_config(step, DHQK, DHHV), S=1)
            add(layout, f"sequence:{cell}", "fw", sequence.name, default_config(sequence, DHQK, DHHV),
                S=512)  # fmt: skip
    return rows


def selected(row: Row, only: list[str]) -> bool:
    """Whether ``row`` is one of ``--only``'s: its key ("default" for a default), dtype, direction and variant name
    contain every text given (none given: every row)."""
    label = f"{row.key} {row.dtype} {row.direction} {row.variant}"
    return all(text in label for text in only)


def check(row: Row, gpu: str) -> dict:
    """The gate on one row: the report's fields (autotune.gate.Verdict, plus the row)."""
    from .measure import device_healthy, gate_verdict

    start = time.perf_counter()
    fields = {"key": row.key, "op": row.op, "direction": row.direction, "dtype": row.dtype, "B": row.B, "NH": row.NH,
              "S": row.S, "DHQK": row.DHQK, "DHHV": row.DHHV, "variant": row.variant, "config": row.config,
              "gpu_run": gpu}  # fmt: skip
    try:
        v = gate_verdict(row.job("cuda" if torch.cuda.is_available() else "cpu"))
    except Exception as exc:  # noqa: BLE001 - a configuration that no longer builds or launches is a failed row
        return {**fields, "runs": 0, "distinct_outputs": None, "error": None, "reference_error": None,
                "error_by_output": {}, "passed": False, "reasons": [f"{type(exc).__name__}: {str(exc)[:300]}"],
                "device_usable_after": device_healthy(), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return {**fields, "runs": v.runs + 1, "distinct_outputs": v.distinct_outputs, "error": v.error,
            "reference_error": v.reference_error, "error_by_output": v.error_by_output,
            "reference_error_by_output": v.reference_error_by_output, "limit_by_output": v.limit_by_output,
            "passed": v.passed, "reasons": v.reasons, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def _line(r: dict) -> str:
    ref = r.get("reference_error_by_output", {})
    errors = " ".join(f"{k} {e:.2g}/{ref[k]:.2g}" for k, e in r["error_by_output"].items())  # ours / trusted
    status = "pass" if r["passed"] else "FAIL"
    return (f"{status} {r['op']:<15} {r['direction']:<4} {r['key'][:40]:<40} {r['variant']:<44} "
            f"distinct {r['distinct_outputs']}  {errors}  {r['seconds']}s" + ("" if r["passed"] else
            f"\n     {'; '.join(r['reasons'])}"))  # fmt: skip


def databases_in_use(capability: tuple[int, int]) -> list[tdb.TuningDB]:
    """The databases the dispatcher reads on a GPU of ``capability``: the user's, then the packaged ones (every GPU
    model of the same compute capability: the same-arch rung)."""
    dbs = tdb.read_all(tdb.user_dir()) + tdb.read_all(paths.tuning_db_dir())
    return [d for d in dbs if tuple(d.capability) == tuple(capability)]


def default_out() -> Path:
    """tuning_db/reports in a checkout; beside the user database for an installed wheel (never site-packages)."""
    packaged = paths.tuning_db_dir()
    if packaged.parent.name == "_data":
        return tdb.user_dir() / "reports"
    return packaged / "reports"


def run(args) -> int:
    if torch.cuda.is_available():
        gpu, capability = torch.cuda.get_device_name(), tuple(torch.cuda.get_device_capability())
    else:  # the entries of the interpreter's database, run by Triton's interpreter (set before any kernel loads)
        gpu, capability = "cpu-interpreter", (0, 0)
        os.environ["TRITON_INTERPRET"] = "1"
    if args.db:
        dbs = [d for p in args.db if (d := tdb.read(Path(p))) is not None]
        if len(dbs) != len(args.db):
            print("mlstm-tune validate: a --db file is not a usable tuning database (see the warning above)")
            return 2
    else:
        dbs = databases_in_use(capability)
    out = Path(args.out) if args.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    defaults = [] if args.no_defaults or gpu == "cpu-interpreter" else default_rows()
    if gpu == "cpu-interpreter" and not args.no_defaults:
        print("# no GPU: the defaults (real head dims) are left out; database entries run under the interpreter")
    checked: dict[tuple, dict] = {}  # a default checked once serves every report
    failed = 0
    targets = [(d, Path(d.path).stem) for d in dbs] or [(None, tdb.file_name(gpu).removesuffix(".json"))]
    only = getattr(args, "only", None) or []
    for database, name in targets:
        rows = [r for r in (entry_rows(database) if database is not None else []) + defaults if selected(r, only)]
        # a subset gets a report of its own: the full report of an earlier run stays as it was
        report, results = out / f"{name}-validate{'-subset' if only else ''}.json", []
        print(f"# {name}: {len(rows)} rows on {gpu} -> {report}", flush=True)
        for row in rows:
            memo = (row.variant, json.dumps(row.config, sort_keys=True), row.S, row.DHQK, row.DHHV, row.dtype,
                    row.direction)  # fmt: skip
            result = checked.get(memo) if row.key == "default" else None
            result = result or check(row, gpu)
            checked[memo] = result
            results.append(dict(result, key=row.key, B=row.B, NH=row.NH, S=row.S, op=row.op))
            print(_line(results[-1]), flush=True)
            partial = report.with_name(report.name + ".part")  # replaced whole: a run cut short keeps a valid file
            partial.write_text(json.dumps(results, indent=1) + "\n")
            partial.replace(report)
        bad = [r for r in results if not r["passed"]]
        failed += len(bad)
        print(f"# {name}: {len(results) - len(bad)}/{len(results)} passed", flush=True)
        if args.fix and database is not None and bad:
            _fix(database, bad)
    return 1 if failed else 0


def _fix(database: tdb.TuningDB, bad: list[dict]) -> None:
    if Path(database.path).parent.resolve() != tdb.user_dir().resolve():
        print(f"  --fix: {database.path} is not the user database ({tdb.user_dir()}): left as it is")
        return
    keys = {r["key"] for r in bad if r["key"] != "default"}
    removed = tdb.remove(Path(database.path), lambda key: key_label(key) in keys)
    print(f"  --fix: removed {removed} failing entr{'y' if removed == 1 else 'ies'} from {database.path}")
