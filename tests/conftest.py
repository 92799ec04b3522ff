"""Shared fixtures: the comparison helper that prints what it compares and writes errors under test_outputs/."""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from helpers import ComparisonLog

# Generated Triton kernels run under the interpreter on machines without a GPU (set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_gate_draws():
    """The gate keeps its draws (inputs, oracle and trusted outputs) per shape in the process: a test that patches a
    kernel must not leave them to the next test."""
    from autotune import measure

    measure._DRAWS.clear()
    yield
    measure._DRAWS.clear()


@pytest.fixture(scope="session")
def comparison_log() -> ComparisonLog:
    return ComparisonLog.for_session()


@pytest.fixture
def check(comparison_log, request):
    """check(target=..., baseline=..., dims=(B, NH, S, DHQK, DHHV), dtype=..., pairs={name: (out, ref)}, limit=...)"""

    def _check(**kwargs):
        comparison_log.check(test_id=request.node.nodeid, **kwargs)

    return _check


# files whose tests run for tens of seconds each (a fresh virtual environment, tuner and worker processes, the gate's
# full draws): collected first, so that under pytest-xdist they start early instead of ending the run on one worker
LONG_FIRST = ("test_fresh_install.py", "test_tune_cli.py", "test_study_storage.py", "test_measure.py",
              "test_validate.py", "test_bench.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: the order within a rank stays
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Every test draws fresh inputs (a seed of its own, from its id), reproducibly from run to run."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
