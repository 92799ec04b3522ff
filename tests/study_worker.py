"""One tuning worker on replayed timings with structure (tests/test_search.py's), for tests/test_study_storage.py:
it runs ``autotune.search.run_study`` on a shared storage and logs every evaluation as a JSON line
{"point", "pid", "start", "end"}.

    python tests/study_worker.py STORAGE STUDY TRIALS LOG [--hang-at N] [--host NAME] [--seed S]

--hang-at N: the N-th evaluation (from 1) writes LOG.hang and then hangs, for the test to kill the process there.
--host NAME: the worker says it runs on host NAME, so that only its heartbeat can show it died.
The heartbeat is recorded every second and a trial is stale after GRACE_S (the defaults are 15 s and 120 s): long
enough that a live worker on a loaded 2-core CI machine is not taken for dead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # tests/, the checkout
import test_search  # noqa: E402

from autotune import search  # noqa: E402

GRACE_S = 8


class _Patch:
    """pytest's monkeypatch.setitem and setattr, for test_search.narrowed_space outside pytest."""

    def setitem(self, mapping, key, value):
        mapping[key] = value

    def setattr(self, target, name, value):
        setattr(target, name, value)


def structured(variant, config) -> float:
    """test_search's timings with structure (the default at 1.5 ms), on which 60 trials find the optimum."""
    return 1.5 if (variant, config) == test_search.DEFAULT else test_search.structured_ms(variant, config)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("storage")
    ap.add_argument("study")
    ap.add_argument("trials", type=int)
    ap.add_argument("log", type=Path)
    ap.add_argument("--hang-at", type=int, default=0)
    ap.add_argument("--host")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    search.HEARTBEAT_S, search.GRACE_S = 1, GRACE_S
    if args.host:
        search._WORKER = f"{args.host}:{os.getpid()}"
    test_search.narrowed_space(_Patch())
    test_search.replayed_ms = structured
    replay = test_search.Replay()
    evaluations = 0

    def evaluate(variant, config):
        nonlocal evaluations
        evaluations += 1
        start = time.time()
        if evaluations == args.hang_at:
            Path(f"{args.log}.hang").write_text(search._point_key(variant.name, config))
            time.sleep(3600)
        time.sleep(0.2)  # a measurement takes a while, so that the workers interleave
        outcome = replay(variant, config)
        line = {"point": search._point_key(variant.name, config), "pid": os.getpid(), "start": start,
                "end": time.time()}  # fmt: skip
        with args.log.open("a") as f:
            f.write(json.dumps(line) + "\n")
        return outcome

    study = search.open_study(args.storage, args.study, seed=args.seed)
    result = test_search.run(study, evaluate, trials=args.trials)
    print(json.dumps({"variant": result.best_variant, "config": result.best_config, "ms": result.best.p50_ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
