"""Every shipped database entry and every built-in default through the correctness gate on this GPU (marked gpu;
skipped without one): the rows of `mlstm-tune validate` as tests, so that `pytest -m gpu tests/gpu` holds them to
the same check as the tuner and users (autotune.gate: the same bits on repeated calls, each output within 1.5x the
trusted kernel's error on the adversarial and model-like draws, and no known compiler hazard in what it compiles).
"""

from __future__ import annotations

import pytest
import torch

from autotune import db as tdb
from autotune import paths, validate
from autotune.measure import gate_verdict

pytestmark = pytest.mark.gpu


def _rows() -> list:
    rows = []
    for path in sorted(paths.tuning_db_dir().glob("*.json")):
        database = tdb.read(path)
        if database is not None:
            rows += [pytest.param(r, id=f"{path.stem}-{r.key}-{r.variant}") for r in validate.entry_rows(database)]
    rows += [pytest.param(r, id=f"default-{r.op}-{r.direction}-{r.dtype}-{r.variant}-D{r.DHQK}")
             for r in validate.default_rows()]  # fmt: skip
    return rows


@pytest.mark.parametrize("row", _rows())
def test_passes_the_gate(row):
    verdict = gate_verdict(row.job("cuda"))
    print(f"{torch.cuda.get_device_name()}: {row.variant} {row.config} distinct {verdict.distinct_outputs} "
          f"errors {verdict.error_by_output} trusted {verdict.reference_error_by_output}")  # fmt: skip
    assert verdict.passed, verdict.summary()


def test_a_read_of_memory_never_written_fails_through_the_caching_allocator():
    """An output element never written, in a buffer that bypasses torch.empty (allocated by an aten call, as C++ code
    would): only the caching allocator's free blocks, filled with NaN before the poisoned call, can expose it."""
    from autotune import gate

    x = gate.draw_inputs("model", 1, 2, 64, 16, 16, dtype=torch.float32, device="cuda")
    h = x["v"] * 2.0
    torch.empty(1 << 20, device="cuda").fill_(1.0)  # a freed block with finite bytes, for the plain calls to reuse

    def forgets_one_element(x):
        out = torch.ops.aten.empty.memory_format(list(h.shape), dtype=h.dtype, device=h.device)
        out.view(-1)[1:] = h.view(-1)[1:]
        return {"h": out}

    draw = gate.Draw(x, {"h": h.double()}, {"h": h})
    verdict = gate.judge(forgets_one_element, [draw], torch.float32)
    assert not verdict.passed, verdict.summary()
