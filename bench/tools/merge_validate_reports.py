"""Merge the rows of `mlstm-tune validate --only ...` reports (<database>-validate-subset.json) into the full
reports (<database>-validate.json) of a folder: a subset row replaces the full report's row of the same point (key,
op, direction, dtype, variant, configuration, shape) and is appended where the full report has none.

    python bench/tools/merge_validate_reports.py SUBSET.json [SUBSET.json ...] --into tuning_db/reports

Each subset goes into the full report of its own database (the file name without "-subset").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POINT = ("key", "op", "direction", "dtype", "variant", "config", "B", "NH", "S", "DHQK", "DHHV")


def point(row: dict) -> str:
    return json.dumps([row.get(field) for field in POINT], sort_keys=True)


def merge(full: list[dict], subset: list[dict]) -> tuple[list[dict], int, int]:
    """``full`` with ``subset``'s rows in place of its rows of the same point; (rows, replaced, appended)."""
    new = {point(r): r for r in subset}
    rows = [new.pop(point(r), r) for r in full]
    replaced = len(subset) - len(new)
    return rows + list(new.values()), replaced, len(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("subsets", nargs="+", type=Path)
    ap.add_argument("--into", type=Path, required=True, help="the folder of the full reports")
    args = ap.parse_args()
    for subset in args.subsets:
        if not subset.name.endswith("-validate-subset.json"):
            raise SystemExit(f"{subset}: not a <database>-validate-subset.json report")
        target = args.into / subset.name.replace("-validate-subset.json", "-validate.json")
        if not target.exists():
            raise SystemExit(f"{target}: no full report to merge {subset} into")
        new = json.loads(subset.read_text())
        rows, replaced, appended = merge(json.loads(target.read_text()), new)
        target.write_text(json.dumps(rows, indent=1) + "\n")
        failed = sum(not r["passed"] for r in new)
        print(f"{target}: {replaced} rows replaced, {appended} appended from {subset} ({failed} of them failed)")


if __name__ == "__main__":
    main()
