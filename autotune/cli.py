"""The ``mlstm-tune`` command (also ``python -m autotune``).

Subcommands so far:
    kernels   list the registered kernels (sequence, step, sequence-loop), one per line
    paths     print where templates/, generated/ and tuning_db/ are read from
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlstm-tune", description="mLSTM kernel autotuner.")
    parser.add_argument("--version", action="version", version=f"mlstm-autotune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("kernels", help="list the registered kernels").set_defaults(func=_cmd_kernels)
    sub.add_parser("paths", help="print where the data folders are read from").set_defaults(func=_cmd_paths)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
