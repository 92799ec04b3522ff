"""How often the search finds the planted optimum of tests/test_search.py's replayed timings, per Optuna sampler
setting, over 8 sampler seeds: the tables in tuning_db/reports/NOTES.md ("The sampler"). Not a test.

    python bench/tools/compare_samplers.py          (about a minute; no GPU, no kernels)
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import test_search as T  # noqa: E402

SAMPLERS = {
    "TPE, independent": dict(n_startup_trials=8),
    "TPE multivariate": dict(n_startup_trials=8, multivariate=True),
    "TPE multivariate + group (autotune.search)": dict(n_startup_trials=8, multivariate=True, group=True),
    "TPE multivariate + group, 16 startup": dict(n_startup_trials=16, multivariate=True, group=True),
}
TABLES = {
    "random times, one planted optimum": T.replayed_ms,
    "with structure": lambda v, c: 1.5 if (v, c) == T.DEFAULT else T.structured_ms(v, c),
}


def hits(sampler_kw: dict, trials: int, seeds: int = 8) -> int:
    found = 0
    for seed in range(seeds):
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(Path(tempfile.mkdtemp()) / "journal.log"))
        )
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.TPESampler(seed=seed, **sampler_kw),
                                    direction="minimize")  # fmt: skip
        result = T.run(study, T.Replay(), trials=trials)
        found += (result.best_variant, result.best_config) == T.OPTIMUM
    return found


def main() -> None:
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    patch = pytest.MonkeyPatch()
    T.narrowed_space(patch)
    original = T.replayed_ms
    for table, times in TABLES.items():
        patch.setattr(T, "replayed_ms", times)
        print(f"\n{table}: optimum found, of 8 sampler seeds")
        print("| sampler | 30 trials | 60 trials |\n|---|---|---|")
        for label, kw in SAMPLERS.items():
            print(f"| {label} | {hits(kw, 30)} / 8 | {hits(kw, 60)} / 8 |", flush=True)
        patch.setattr(T, "replayed_ms", original)


if __name__ == "__main__":
    main()
