"""The ``mlstm-tune`` command (also ``python -m autotune``).

Subcommands:
    kernels        list the registered kernels (sequence, step, sequence-loop), one per line
    paths          print where templates/, generated/ and tuning_db/ are read from
    tune           search the fastest correct variant per shape on this GPU and write the tuning database
    validate       the correctness gate on every database entry in use and every built-in default (JSON report)
    render         regenerate generated/ from templates/ (--check: only report what is stale)
    report         markdown table and PNG plot of tuned against default times from a database
    db             list, validate, merge, import and export tuning databases
    show           which generated variant and launch configuration a call would run (and why), and its source
    compile-check  compile every generated kernel for a GPU target (default sm_90) without a GPU
    bench          ours against upstream mlstm_kernels, FLA and SDPA on the same inputs (JSON, markdown, PNG)
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _cmd_kernels(args: argparse.Namespace) -> int:
    from . import torch as api

    sections = (
        ("chunkwise/parallel kernels (get_mlstm_kernel)", api.get_available_mlstm_kernels()),
        ("step kernels (get_mlstm_step_kernel)", api.get_available_mlstm_step_kernels()),
        ("sequence kernels (get_mlstm_sequence_kernel)", api.get_available_mlstm_sequence_kernels()),
    )
    for title, names in sections:
        print(f"# {title}")
        for name in names:
            print(name)
    return 0


def _cmd_paths(args: argparse.Namespace) -> int:
    from . import paths

    for name in ("templates", "generated", "tuning_db"):
        print(f"{name}: {paths.data_dir(name)}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from . import render

    if args.check:
        stale = render.stale_files()
        for name in stale:
            print(f"stale: generated/{name}")
        print("generated/ is up to date" if not stale else f"{len(stale)} file(s) out of date: run `mlstm-tune render`")
        return 1 if stale else 0
    changed = render.render()
    for name in changed:
        print(f"wrote generated/{name}")
    print(f"{len(changed)} file(s) changed")
    return 0


def _cmd_compile_check(args: argparse.Namespace) -> int:
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile-check needs real Triton kernels: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    from .compile_check import check

    rows = check(arch=args.arch)
    failed = [r for r in rows if not r["ok"]]
    for r in rows:
        status = "ok  " if r["ok"] else "FAIL"
        detail = f"shared={r['shared']}" if r["ok"] else r["error"]
        print(f"{status} {r['variant']}.{r['kernel']} {r['dtype']} DHQK={r['DHQK']} DHHV={r['DHHV']} "
              f"{r['seconds']}s {detail}")  # fmt: skip
    print(f"{len(rows) - len(failed)}/{len(rows)} kernels compiled for sm_{args.arch}")
    return 1 if failed else 0


def _cmd_show(args: argparse.Namespace) -> int:
    import torch

    from . import families, paths
    from .torch import triton_kernels

    if args.gpu:
        gpu, capability = args.gpu, tuple(int(c) for c in args.capability.split("."))
    elif torch.cuda.is_available():
        gpu, capability = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    else:
        gpu, capability = "cpu-interpreter", (0, 0)
    try:
        dtype = getattr(torch, args.dtype)
        request, choice = triton_kernels.explain(
            args.kernel, dtype=dtype, B=args.B, NH=args.NH, S=args.S, DHQK=args.DHQK, DHHV=args.DHHV,
            chunk_size=args.chunk_size, gpu=gpu, capability=capability, direction=args.direction,
        )  # fmt: skip
    except (ValueError, AttributeError) as err:
        print(f"mlstm-tune show: {err}", file=sys.stderr)
        return 2
    source = paths.generated_dir() / f"{choice.variant}.py"
    print(f"kernel:    {args.kernel}")
    print(f"request:   {request}")
    print(f"gpu:       {gpu} (compute capability {capability[0]}.{capability[1]})")
    print(f"answered:  rung {choice.rung}, from {choice.source}")
    print(f"variant:   {choice.variant}  ({source})")
    print(f"config:    {choice.config}")
    from .variants import by_name

    launched = families.canonical(by_name(choice.variant).template, choice.config)
    if launched != choice.config:  # an entry in the knob names of an older database, or with knobs it predates
        print(f"launched:  {launched}")
    if args.direction == "fwbw" and by_name(choice.variant).family == "chunkwise_bw":
        from .launch.chunkwise import training_forward

        cell = by_name(choice.variant).params["cell"]
        variant, config = training_forward(cell, args.DHQK, args.DHHV, launched["chunk"])
        print(f"forward:   {variant.name}  (launch.chunkwise.training_forward: every training step's)")
        print(f"           {config}")
    if not args.no_source:
        print("-" * 100)
        print(source.read_text(), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate import run

    return run(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tune import run

    return run(args)


def _cmd_db(args: argparse.Namespace) -> int:
    import json
    import shutil
    from pathlib import Path

    from . import db as tdb
    from . import paths

    folders = {"user": tdb.user_dir(), "packaged": paths.tuning_db_dir()}
    if args.action == "list":
        for where, folder in folders.items():
            for path in sorted(Path(folder).glob("*.json")):
                found = tdb.read(path)
                status = f"{len(found.entries)} entries, {found.gpu}" if found else "UNUSABLE (see the warning)"
                print(f"{where:9s} {path}: {status}")
                for key, e in sorted(found.entries.items()) if found and args.verbose else ():
                    print(f"          {key} -> {e.variant} {e.config} p50 {e.provenance.get('p50_ms')} ms")
        return 0
    if args.action == "validate":
        bad = 0
        for path in args.files or [p for f in folders.values() for p in sorted(Path(f).glob("*.json"))]:
            try:
                found = tdb.problems(json.loads(Path(path).read_text()))
            except (OSError, ValueError) as err:
                found = [str(err)]
            print(f"{'ok ' if not found else 'BAD'} {path}{': ' + '; '.join(found) if found else ''}")
            bad += bool(found)
        return 1 if bad else 0
    if args.action in ("merge", "import"):
        if len(args.files) != (2 if args.action == "merge" else 1):
            print(f"mlstm-tune db {args.action}: wrong number of files", file=sys.stderr)
            return 2
        src = Path(args.files[-1])
        found = tdb.read(src)
        if found is None:
            print(f"mlstm-tune db {args.action}: {src} is not a usable tuning database", file=sys.stderr)
            return 1
        dst = Path(args.files[0]) if args.action == "merge" else tdb.user_dir() / tdb.file_name(found.gpu)
        taken = tdb.upsert(dst, found.gpu, found.capability, found.entries.values())
        print(f"{taken} entr{'y' if taken == 1 else 'ies'} of {src} taken into {dst}")
        return 0
    if args.action == "export":
        if len(args.files) != 1:
            print("mlstm-tune db export: give the destination folder", file=sys.stderr)
            return 2
        out = Path(args.files[0])
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(tdb.user_dir().glob("*.json")):
            if tdb.read(path) is not None:
                shutil.copy2(path, out / path.name)
                print(f"exported {path} -> {out / path.name}")
        return 0
    return 2


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import db as tdb
    from .report import report

    files = [Path(args.db)] if args.db else sorted(tdb.user_dir().glob("*.json"))
    if not files:
        print(f"mlstm-tune report: no tuning database in {tdb.user_dir()} (run `mlstm-tune tune`, or pass --db FILE)",
              file=sys.stderr)  # fmt: skip
        return 2
    for path in files:
        try:
            md, png, text = report(path, Path(args.out))
        except ValueError as err:
            print(f"mlstm-tune report: {err}", file=sys.stderr)
            return 1
        print(text)
        print(f"wrote {md} and {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlstm-tune", description="mLSTM kernel autotuner.")
    parser.add_argument("--version", action="version", version=f"mlstm-autotune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("kernels", help="list the registered kernels").set_defaults(func=_cmd_kernels)
    sub.add_parser("paths", help="print where the data folders are read from").set_defaults(func=_cmd_paths)
    p = sub.add_parser("render", help="regenerate generated/ from templates/")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if generated/ is out of date")
    p.set_defaults(func=_cmd_render)
    from .tune import PRESETS

    p = sub.add_parser("tune", help="search the fastest correct variant per shape on this GPU; write the database")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="shapes to tune (default: quick)")
    p.add_argument(
        "--shapes",
        metavar="FILE",
        help='JSON list of {"op", "B", "NH", "S", "DHQK", "DHHV"} (optionally "dtype", "direction")',
    )
    p.add_argument("--trials", type=int, default=24, help="trials per shape, the default configuration included")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop a shape's study after this")
    p.add_argument("--devices", help="GPU indices, e.g. 0,1: one worker process per GPU on the same studies")
    p.add_argument("--db", metavar="DIR", help="database directory to write (default: MLSTM_AUTOTUNE_DB or the cache)")
    p.add_argument("--storage", metavar="FILE|URL", help="where the studies live: an Optuna journal file, or a "
                   "database URL shared by several hosts (sqlite:///FILE, postgresql://USER@HOST/DB, "
                   "mysql+pymysql://...); default: DIR/studies.journal")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tune)
    p = sub.add_parser(
        "validate",
        help="the correctness gate on this GPU for every database entry in use and every "
        "built-in default; run it after a Triton, torch or driver upgrade",
    )
    p.add_argument(
        "--db",
        action="append",
        metavar="FILE",
        help="check this database file (repeatable); default: "
        "every database in use on this GPU (the user's, then the packaged ones of its compute capability)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where <database>-validate.json goes (default: tuning_db/reports "
        "in a checkout, else reports/ beside the user database)",
    )
    p.add_argument("--fix", action="store_true", help="remove failing entries from the user database")
    p.add_argument("--no-defaults", action="store_true", help="check database entries only")
    p.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="check only the rows whose key (e.g. 'chunkwise:exp/fwbw bfloat16 S~8192', or 'default'), direction "
        "and variant contain this text (repeatable: every one); the report is <database>-validate-subset.json",
    )
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("report", help="markdown table and PNG plot of tuned against default times from a database")
    p.add_argument("--db", metavar="FILE", help="a database file (default: every file of the user database)")
    p.add_argument("--out", default=".", metavar="DIR", help="where to write <GPU>-report.md and .png")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("db", help="tuning databases: list, validate, merge A B, import FILE, export DIR")
    p.add_argument("action", choices=["list", "validate", "merge", "import", "export"])
    p.add_argument("files", nargs="*")
    p.add_argument("-v", "--verbose", action="store_true", help="list: print every entry")
    p.set_defaults(func=_cmd_db)
    p = sub.add_parser("show", help="which generated variant and launch configuration a call would run, and its source")
    p.add_argument("--kernel", default="chunkwise--triton_auto", help="a Triton entry of the registry")
    for dim, default in (("B", 8), ("NH", 8), ("S", 8192), ("DHQK", 256), ("DHHV", 512), ("chunk-size", 64)):
        p.add_argument(f"--{dim}", dest=dim.replace("-", "_"), type=int, default=default)
    p.add_argument("--dtype", default="bfloat16", help="the inputs' dtype: bfloat16, float16, float32")
    p.add_argument("--gpu", help="GPU model as torch names it (default: this machine's GPU, or the interpreter)")
    p.add_argument("--capability", default="9.0", help="with --gpu: its compute capability, e.g. 9.0")
    p.add_argument("--direction", choices=("fw", "fwbw"), default="fw", help="fwbw: the backward of a training step")
    p.add_argument("--no-source", action="store_true", help="do not print the generated source")
    p.set_defaults(func=_cmd_show)
    p = sub.add_parser("bench", help="ours (tuned and default) against upstream mlstm_kernels, FLA and SDPA")
    p.add_argument("--out", default="tuning_db/reports", help="folder for <GPU>-bench.json/.md/.png")
    p.add_argument(
        "--only",
        choices=("chunkwise", "step", "packed", "long"),
        default=None,
        help="only these rows (long: one sequence of 65,536 tokens and more, B=1)",
    )
    p.add_argument("--pass", dest="pass_", choices=("fw", "fwbw"), default=None, help="only rows of this pass")
    p.add_argument("--reps-ms", type=float, default=200.0, help="timing budget per measurement (do_bench rep)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes; without a GPU, under Triton's interpreter")
    p.add_argument("--shard", metavar="I/N", help="only shard I (from 0) of N, e.g. one per GPU: 0/2 and 1/2")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="merge the <GPU>-bench.json of several runs "
                   "(shards; a later file's row replaces an earlier one of the same shape) into one table under "
                   "--out; measures nothing")  # fmt: skip
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("compile-check", help="compile every generated kernel for a GPU target, no GPU needed")
    p.add_argument("--arch", type=int, default=90, help="compute capability as an int, e.g. 90 for sm_90 (H100/H200)")
    p.set_defaults(func=_cmd_compile_check)
    return parser


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
