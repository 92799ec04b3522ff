"""A pytest plugin for GPU suite runs that a call's time limit may cut: every test's outcome goes to a file as it
happens, and tests that passed or skipped in an earlier run are deselected, so the next run resumes.

    SUITE_OUTCOMES=out.tsv SUITE_DONE=earlier.tsv python -m pytest -p suite_record ...   (bench/tools on PYTHONPATH)

Each line of those files is ``outcome<TAB>node id`` (outcome: started, then passed, failed, skipped or error; a test
whose last line is "started" did not finish: it was running when the run stopped); ids may hold spaces.
A failure's report goes to ``<SUITE_OUTCOMES>.failures`` at once (a run cut at its limit prints no summary). Under
pytest-xdist the controller writes both files; ``bench/tools/suite_summary.py`` turns the outcomes into a line per file.
Several workers share one GPU: after each test a worker hands its cached blocks back to the driver
(``torch.cuda.empty_cache``), or the caches of the others leave a worker too little memory to run.
"""

import gc
import os
import sys

DONE = ("passed", "skipped")  # outcomes that need no rerun


def read_outcomes(path: str) -> dict[str, str]:
    """node id -> its last outcome in an outcomes file (a missing file: none)."""
    out: dict[str, str] = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                outcome, _, node = line.rstrip("\n").partition("\t")
                if node:
                    out[node] = outcome
    return out


def pytest_collection_modifyitems(config, items):
    done = {n for n, o in read_outcomes(os.environ.get("SUITE_DONE", "")).items() if o in DONE}
    if not done:
        return
    keep = [item for item in items if item.nodeid not in done]
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid in done])
    items[:] = keep


def _record(outcome: str, nodeid: str) -> str | None:
    """Appends the line; returns the outcomes file's path (None where this process writes none)."""
    path = os.environ.get("SUITE_OUTCOMES")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):  # under xdist the controller writes
        return None
    with open(path, "a") as f:  # a line at a time: a run killed at its time limit keeps what it finished
        f.write(f"{outcome}\t{nodeid}\n")
    return path


def pytest_runtest_logstart(nodeid, location):
    _record("started", nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        path = _record(outcome, report.nodeid)
        if path and report.failed:
            with open(path + ".failures", "a") as f:
                f.write(f"{outcome.upper()} {report.nodeid}\n{report.longreprtext[-3000:]}\n\n")


def pytest_runtest_teardown(item):
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
