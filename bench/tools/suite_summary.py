"""A line per GPU test file from outcomes files written by bench/tools/suite_record.py (a test's last line wins, and
later files come later): collected, passed, skipped, failed, in error, cut (started, never finished: running when
its run stopped) and not run; then the ids of every test that failed, erred or was cut.

    python bench/tools/suite_summary.py OUTCOMES.tsv [MORE.tsv ...]
"""

import collections
import subprocess
import sys

from suite_record import read_outcomes


def collected(paths=("tests/gpu",)) -> list[str]:
    """The GPU suite's node ids, as pytest collects them here."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          *paths], capture_output=True, text=True, check=False).stdout  # fmt: skip
    return [line for line in out.splitlines() if "::" in line]


def main(files: list[str]) -> int:
    outcomes: dict[str, str] = {}
    for path in files:
        outcomes.update(read_outcomes(path))
    ids = collected()
    rows = collections.defaultdict(collections.Counter)
    for node in ids:
        rows[node.split("::")[0]][outcomes.get(node, "not run")] += 1
    print(f"{'file':40} {'tests':>6} {'passed':>7} {'skipped':>8} {'failed':>7} {'error':>6} {'cut':>4} {'not run':>8}")
    for path, c in sorted(rows.items()):
        print(f"{path:40} {sum(c.values()):6} {c['passed']:7} {c['skipped']:8} {c['failed']:7} {c['error']:6} "
              f"{c['started']:4} {c['not run']:8}")  # fmt: skip
    bad = [n for n in ids if outcomes.get(n) in ("failed", "error", "started")]
    for node in bad:
        print(f"{outcomes[node].replace('started', 'cut').upper()} {node}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
