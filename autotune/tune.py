"""``mlstm-tune tune``: search the variant space for each requested shape on the GPU in hand and write the winners,
with provenance, to the user tuning database (MLSTM_AUTOTUNE_DB).

One Optuna study per (GPU, op, direction, dtype, head dims, shape bucket), kept in a journal file or a database
(``--storage``: a file, or a URL such as ``postgresql://user@host/db``; default: studies.journal in the user
database directory), so a cut-off run continues where it stopped. With ``--devices 0,1`` one process per GPU works
on the same studies; hosts that share a database work on the same studies too (docs/fleet.md). Without a GPU the
search runs for real under Triton's interpreter on a tiny shape; its entries are filed under the GPU name
"cpu-interpreter" and its timings say nothing about GPU speed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import db as tdb
from . import paths, search, space
from .variants import Variant, by_name

# op -> (structures searched, the default structure's template)
_DEFAULTS = {"chunkwise": "chunkwise_twopass_fw.py.j2", "parallel": "parallel_fw.py.j2",
             "sequence": "recurrent_sequence.py.j2", "step": "recurrent_step.py.j2"}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    op: str  # "chunkwise:exp", ...
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    dtype: str = "bfloat16"
    direction: str = "fw"  # "fwbw": tune the backward of a training step

    @classmethod
    def parse(cls, d: dict) -> Shape:
        try:
            shape = cls(str(d["op"]), int(d["B"]), int(d["NH"]), int(d["S"]), int(d["DHQK"]), int(d["DHHV"]),
                        str(d.get("dtype", "bfloat16")), str(d.get("direction", "fw")))  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"bad shape {d!r}: needs op, B, NH, S, DHQK, DHHV (optionally dtype, direction): {err}"
            ) from None
        form, _, cell = shape.op.partition(":")
        if form not in space.FORMS or cell not in ("exp", "sig"):
            raise ValueError(f"bad op {shape.op!r}: use <form>:<cell>, form in {list(space.FORMS)}, cell exp|sig")
        if shape.direction not in ("fw", "fwbw") or (shape.direction == "fwbw" and form not in space.BACKWARD_FORMS):
            raise ValueError(f"bad direction {shape.direction!r} for {shape.op}: fw, or fwbw for "
                             f"{', '.join(space.BACKWARD_FORMS)}")  # fmt: skip
        if shape.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"bad dtype {shape.dtype!r}: bfloat16, float16 or float32")
        if min(shape.B, shape.NH, shape.S, shape.DHQK, shape.DHHV) < 1:
            raise ValueError(f"bad shape {d!r}: every size must be >= 1")
        return shape


def _tokens(S: int, total: int = 65536) -> int:
    return max(1, total // S)


PRESETS: dict[str, list[Shape]] = {
    # one realistic shape, small enough to finish within 10 minutes on an H200
    "quick": [Shape("chunkwise:exp", 4, 8, 8192, 256, 512)],
    # the xLSTM 7B head layout (NH=8, DHQK=256, DHHV=512) at 65,536 tokens per batch
    "xlstm-7b": [Shape("chunkwise:exp", _tokens(S), 8, S, 256, 512) for S in (2048, 8192, 32768)],
    # heads of 128 (NH=32), as in the benchmark of the design notes
    "head128": [Shape("chunkwise:exp", _tokens(S), 32, S, 128, 128) for S in (2048, 8192, 32768)],
    "step-7b": [Shape("step:exp", B, 8, 1, 256, 512) for B in (1, 16, 128, 512)],
    # the backward of a training step, for the two head layouts at 65,536 tokens, at the bench's three lengths (at
    # S=32768 the sequential kernels have 16x fewer programs than at 2048: its own entry may pick other state tiles)
    "train-7b": [Shape("chunkwise:exp", _tokens(S), 8, S, 256, 512, direction="fwbw") for S in (2048, 8192, 32768)],
    "train-head128": [
        Shape("chunkwise:exp", _tokens(S), 32, S, 128, 128, direction="fwbw") for S in (2048, 8192, 32768)
    ],
    # one long sequence (B=1) at the 7B layout, the bench's "long" rows
    "long-7b": [
        Shape("chunkwise:exp", 1, 8, S, 256, 512, direction=d) for S in (65536, 262144) for d in ("fw", "fwbw")
    ],
}
# without a GPU: a tiny shape the interpreter can search in seconds per trial
INTERPRETER_PRESET = [Shape("chunkwise:exp", 1, 2, 64, 16, 16, "float32")]


def _gpu() -> tuple[str, tuple[int, int], str]:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(), tuple(torch.cuda.get_device_capability()), "cuda"
    return "cpu-interpreter", (0, 0), "cpu"


def _progress(label: str):
    tty = sys.stdout.isatty()

    def show(p: dict) -> None:
        best = f"{p['best_ms']:.4g} ms" if p["best_ms"] is not None else "-"
        line = (f"  {label} trial {p['trial']}/{p['of']}  best {best}  elapsed {p['elapsed_s']:.0f} s  "
                f"ETA {p['eta_s']:.0f} s")  # fmt: skip
        if p.get("last_gate_s") is not None:  # where the last evaluation's time went (compiling is in the gate)
            timing = f" + timing {p['last_timing_s']:.1f} s" if p.get("last_timing_s") is not None else ""
            line += f"  (last: gate {p['last_gate_s']:.1f} s{timing})"
        print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)

    return show


def code_fingerprint() -> str:
    """8 hex digits of what decides a candidate's measured speed besides its configuration: the templates behind
    generated/ (their hashes in generated/MANIFEST.json), the launchers (autotune/launch), the families' specs
    (autotune/families.py: defaults, knobs, rules), the measurement and its correctness gate (autotune/measure.py,
    gate.py, hazards.py) and the torch and Triton versions. Part of every
    study's name, so a run after any of them changed starts new studies instead of comparing its times with old
    ones."""
    import triton

    digest = hashlib.sha256((paths.generated_dir() / "MANIFEST.json").read_bytes())
    here = Path(__file__).parent
    measurement = [here / "families.py", here / "measure.py", here / "gate.py", here / "hazards.py"]
    for source in [*measurement, *sorted((here / "launch").glob("*.py"))]:
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(f"torch {torch.__version__} triton {triton.__version__}".encode())
    return digest.hexdigest()[:8]


def warm_starts(key: tdb.Key, gpu: str, folders: list[Path], most: int = 6) -> list[tuple[Variant, dict]]:
    """The winners for this GPU of the same op, direction, dtype and head dims, the shape's own bucket first (a
    winner found with earlier kernels), then the nearest buckets of S and B x NH, from the database folders in order
    (each point once, at most ``most``; run_study measures at most 3 that are points of its space): a good
    configuration of one sequence length is a good first guess at the next, and measuring it early costs one
    trial."""
    found = []
    for folder in folders:
        for db in tdb.read_all(folder):
            if db.gpu != gpu:
                continue
            for k, e in db.entries.items():
                same = (k.op, k.direction, k.dtype, k.DHQK, k.DHHV) == (key.op, key.direction, key.dtype, key.DHQK,
                                                                       key.DHHV)  # fmt: skip
                if same:  # its own bucket too (distance 0): the winner under earlier kernels
                    distance = abs(k.S.bit_length() - key.S.bit_length()) + abs(
                        k.BNH.bit_length() - key.BNH.bit_length())  # fmt: skip
                    found.append((distance, len(found), e))
    points, out = set(), []
    for _, _, e in sorted(found, key=lambda t: t[:2]):
        point = json.dumps([e.variant, e.config], sort_keys=True)
        if point not in points and len(out) < most:
            try:
                variant = by_name(e.variant)
            except KeyError:  # a variant this version no longer has
                continue
            out.append((variant, space.upgrade(variant, dict(e.config))))  # parameters added since: as it ran
            points.add(point)
    return out


def tune_shape(shape: Shape, *, trials: int, time_budget_s: float | None, storage: str | Path, seed: int,
               device: str, gpu: str, capability: tuple[int, int], runner_timeout_s: float = 300.0,
               runner_env: dict | None = None, db_folders: list[Path] = ()) -> dict:  # fmt: skip
    """Run (or continue) the study of one shape and return its database entry (as JSON) and a summary. The winners of
    neighbouring shapes in ``db_folders`` are measured right after the default (``warm_starts``), then the seeds of
    its structure (``space.seeds``)."""
    from .families import default_config
    from .launch import chunkwise_bw, parallel_bw
    from .measure import IsolatedRunner, Job
    from .variants import find

    form, _, cell = shape.op.partition(":")
    if shape.direction == "fwbw" and form == "parallel":
        default_variant = find(parallel_bw.TEMPLATE, cell=cell)
    elif shape.direction == "fwbw":
        default_variant = find(chunkwise_bw.TEMPLATE, cell=cell, kernels="fused")
    else:
        template = _DEFAULTS[form]
        default_variant = find(template, cell=cell, state="input") if form == "chunkwise" else find(template, cell=cell)
    default = default_config(default_variant, shape.DHQK, shape.DHHV)
    S_bucket, BNH_bucket = tdb.bucket(shape.S), tdb.bucket(shape.B * shape.NH)
    key = tdb.Key(shape.op, shape.direction, shape.dtype, shape.DHQK, shape.DHHV, S_bucket, BNH_bucket, "")
    name = search.study_name(gpu, key.op, key.direction, key.dtype, key.DHQK, key.DHHV, key.S, key.BNH,
                             code=code_fingerprint())  # fmt: skip
    study = search.open_study(storage, name, seed=seed)
    runner = IsolatedRunner(timeout_s=runner_timeout_s, env=runner_env)

    def evaluate(variant, config):
        return runner.evaluate(Job(variant.name, config, shape.B, shape.NH, shape.S, shape.DHQK, shape.DHHV,
                                   shape.dtype, device))  # fmt: skip

    dtype_bytes = torch.empty(0, dtype=getattr(torch, shape.dtype)).element_size()
    candidates = space.variants_of(form, cell, shape.direction)
    try:
        result = search.run_study(
            study, candidates, (default_variant, default), evaluate,
            DHQK=shape.DHQK,
            DHHV=shape.DHHV, dtype_bytes=dtype_bytes, trials=trials, time_budget_s=time_budget_s,
            progress=_progress(f"{shape.op} {shape.direction} B={shape.B} NH={shape.NH} S={shape.S} "
                               f"{shape.DHQK}/{shape.DHHV}"),
            starts=warm_starts(key, gpu, list(db_folders)),
            seeds=space.seeds((default_variant, default), candidates),
        )  # fmt: skip
    finally:
        runner.close()
    print()
    winner = by_name(result.best_variant)
    key = dataclasses.replace(key, structure=winner.template.removesuffix(".py.j2"))
    import triton

    provenance = {
        "gpu": gpu, "capability": list(capability), "torch": torch.__version__, "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "p50_ms": result.best.p50_ms, "p20_ms": result.best.p20_ms, "p80_ms": result.best.p80_ms,
        "default_ms": result.default.p50_ms, "error_vs_reference": result.best.error,
        "shape": [shape.B, shape.NH, shape.S, shape.DHQK, shape.DHHV], "trials": result.trials,
        "timing": "gpu" if device == "cuda" else "interpreter (wall clock, not a GPU speed)",
    }  # fmt: skip
    entry = tdb.Entry(key, result.best_variant, result.best_config, provenance)
    return {"entry": entry, "result": result}


def _tune_all(shapes, args, device_index: int | None) -> tuple[list[dict], list[str]]:
    """Each shape's study in turn, its winner written to the database as it ends: (rows, the reasons of the shapes
    where no point ran correctly; the others go on)."""
    if device_index is not None and torch.cuda.is_available():
        torch.cuda.set_device(device_index)  # the worker process runs with CUDA_VISIBLE_DEVICES=device_index
    gpu, capability, device = _gpu()
    out_dir = Path(args.db) if args.db else tdb.user_dir()
    path = out_dir / tdb.file_name(gpu)
    rows, failed = [], []
    for shape in shapes:
        env = {"CUDA_VISIBLE_DEVICES": str(device_index)} if device_index is not None else None
        try:
            done = tune_shape(shape, trials=args.trials, time_budget_s=args.time_budget, storage=args.storage,
                              seed=args.seed, device=device, gpu=gpu, capability=capability, runner_env=env,
                              db_folders=[out_dir, paths.tuning_db_dir()])  # fmt: skip
        except search.NoCorrectPoint as err:  # no entry for this shape, and on to the next one
            failed.append(str(err))
            continue
        tdb.upsert(path, gpu, capability, [done["entry"]])
        r = done["result"]
        rows.append({"shape": shape, "variant": r.best_variant, "config": r.best_config, "p50_ms": r.best.p50_ms,
                     "default_ms": r.default.p50_ms, "trials": r.trials, "pruned": len(r.pruned),
                     "failed": len(r.failed), "failure_kinds": r.failure_kinds, "db": str(path)})  # fmt: skip
    return rows, failed


def _device_worker(shapes, args, device_index):
    _tune_all(shapes, args, device_index)


def run(args) -> int:
    """Entry point of ``mlstm-tune tune`` (arguments from autotune.cli)."""
    on_gpu = torch.cuda.is_available()
    try:
        if args.shapes:
            shapes = [Shape.parse(d) for d in json.loads(Path(args.shapes).read_text())]
        elif on_gpu:
            shapes = PRESETS[args.preset]
        else:
            shapes = INTERPRETER_PRESET
    except (OSError, ValueError) as err:
        print(f"mlstm-tune tune: {err}", file=sys.stderr)
        return 2
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"  # inherited by the worker processes that build and run the kernels
        print("no GPU: tuning under Triton's interpreter on a tiny shape (entries filed under 'cpu-interpreter'; "
              "the timings say nothing about GPU speed)")  # fmt: skip
    db_dir = Path(args.db) if args.db else tdb.user_dir()
    if not args.storage:
        args.storage = db_dir / "studies.journal"
    elif not search.is_url(args.storage):
        args.storage = Path(args.storage)
    try:
        search.open_storage(args.storage)  # a database that cannot be reached fails here, before any shape
    except search.StorageError as err:
        print(f"mlstm-tune tune: {err}", file=sys.stderr)
        return 2
    devices = [int(d) for d in args.devices.split(",")] if args.devices else [None]
    start = time.monotonic()
    if len(devices) > 1 and on_gpu:
        # one process per GPU on the same studies (the journal file or database is shared); this process reports at
        # the end
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_device_worker, args=(shapes, args, d)) for d in devices]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        rows, failed = _tune_all(shapes, argparse_copy(args, trials=0), devices[0])
    else:
        try:
            rows, failed = _tune_all(shapes, args, devices[0])
        except RuntimeError as err:  # a study that could not run at all
            print(f"\nmlstm-tune tune: {err}", file=sys.stderr)
            return 1
    print(f"\n{'op':14s} {'dir':4s} {'B':>4s} {'NH':>3s} {'S':>6s} {'DHQK':>5s} {'DHHV':>5s} {'dtype':9s} "
          f"{'tuned ms':>9s} {'default ms':>10s} {'speed-up':>8s}  winner")  # fmt: skip
    for r in rows:
        s = r["shape"]
        speedup = r["default_ms"] / r["p50_ms"] if r["p50_ms"] > 0 else float("nan")
        print(f"{s.op:14s} {s.direction:4s} {s.B:4d} {s.NH:3d} {s.S:6d} {s.DHQK:5d} {s.DHHV:5d} {s.dtype:9s} "
              f"{r['p50_ms']:9.4g} {r['default_ms']:10.4g} {speedup:7.2f}x  {r['variant']} {r['config']}")  # fmt: skip
    for r in rows:  # a study that lost many candidates says so: a broken kernel or environment, not a slow one
        if r["failure_kinds"]:
            s, kinds = r["shape"], ", ".join(f"{n} x {kind}" for kind, n in r["failure_kinds"].items())
            print(f"  {s.op} {s.direction} B={s.B} NH={s.NH} S={s.S}: {sum(r['failure_kinds'].values())} of "
                  f"{r['trials']} candidates failed ({kinds})")  # fmt: skip
    print(f"wrote {len(rows)} entr{'y' if len(rows) == 1 else 'ies'} to {rows[0]['db'] if rows else '-'} "
          f"in {time.monotonic() - start:.0f} s")  # fmt: skip
    for reason in failed:
        print(f"mlstm-tune tune: {reason}; no entry for that shape", file=sys.stderr)
    return 1 if failed else 0


def argparse_copy(args, **changes):
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})
