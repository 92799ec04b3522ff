"""What a tuning journal says about its studies: per study the failures by kind and where they began, and how far
the correct candidates' gate errors strayed from the default's; for the two-pass forward, the gate errors by output
chunk and warps. Two findings in tuning_db/reports/NOTES.md come from this report: a worker poisoned by one illegal
memory access, and 128-token output chunks at 8 warps computing less accurately.

    python bench/tools/journal_report.py [--journal FILE_OR_DATABASE_URL] [--code FINGERPRINT]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from autotune.families import canonical  # noqa: E402
from autotune.search import failure_kind, interrupted_trials, is_url, open_storage  # noqa: E402


def studies(journal: Path | str, code: str | None = None) -> list[optuna.Study]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = open_storage(journal)  # a journal file or a database URL
    names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    return [optuna.load_study(study_name=n, storage=storage) for n in names if code is None or n.endswith(code)]


def study_rows(all_studies: list[optuna.Study]) -> list[dict]:
    """Per study: trials, failures by kind, the first failure (trial, point), the default's gate error and the largest
    ratio of a correct candidate's error to it."""
    rows = []
    for s in all_studies:
        trials = s.trials
        interrupted = interrupted_trials(s)
        failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in interrupted]
        default = next((t for t in trials if t.user_attrs.get("default") and t.state == TrialState.COMPLETE), None)
        d_err = default.user_attrs.get("error") if default else None
        errors = [t.user_attrs["error"] for t in trials
                  if t.state == TrialState.COMPLETE and t.user_attrs.get("error") is not None]  # fmt: skip
        rows.append({
            "study": s.study_name, "trials": len(trials),
            "failures": dict(collections.Counter(failure_kind(t.user_attrs.get("reason", "")) for t in failed)),
            "first_failure": (failed[0].number, failed[0].user_attrs.get("point")) if failed else None,
            "default_error": d_err,
            "worst_error_ratio": max(errors) / d_err if errors and d_err else None,
        })  # fmt: skip
    return rows


def forward_errors(all_studies: list[optuna.Study]) -> dict[tuple, list[float]]:
    """Gate errors of the two-pass forward's measured candidates by (head dims, output chunk, output warps, output
    kernel); studies in the knob names of any version (autotune.families.canonical)."""
    groups = collections.defaultdict(list)
    for s in all_studies:
        dims = next((p for p in s.study_name.split("|") if p.startswith("DHQK")), "?")
        for t in s.trials:
            err = t.user_attrs.get("error")
            if "point" not in t.user_attrs or err is None:
                continue
            point = json.loads(t.user_attrs["point"])
            if not point["variant"].startswith("chunkwise_twopass_fw"):
                continue
            c = canonical("chunkwise_twopass_fw.py.j2", point["config"])
            groups[(dims, c["chunk_intra"], c["out_warps"], c["out_values"])].append(err)
    return dict(groups)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--journal", default=".tuning/studies.journal", help="a journal file or a database URL")
    ap.add_argument("--code", help="only the studies of this kernel-code fingerprint (the end of their names)")
    args = ap.parse_args()
    if not is_url(args.journal) and not Path(args.journal).exists():
        print(f"journal_report: no journal at {args.journal}", file=sys.stderr)
        return 2
    found = studies(args.journal, args.code)
    print("study | trials | failures by kind | first failure | default error | worst correct / default")
    for r in study_rows(found):
        first = f"trial {r['first_failure'][0]}" if r["first_failure"] else "-"
        d_err = f"{r['default_error']:.4f}" if r["default_error"] is not None else "-"
        ratio = f"{r['worst_error_ratio']:.2f}x" if r["worst_error_ratio"] is not None else "-"
        print(f"{r['study'].split('|', 1)[-1]} | {r['trials']} | {r['failures'] or '-'} | {first} | {d_err} | {ratio}")
    print(
        "\ntwo-pass forward: head dims, chunk_intra, output warps, output kernel | candidates | median error | largest"
    )
    for key, errs in sorted(forward_errors(found).items()):
        print(f"{key} | {len(errs)} | {statistics.median(errs):.4f} | {max(errs):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
