"""The oracle's three forms agree (docs/math.md §7): recurrent = parallel = chunkwise in float64 to <= 1e-10."""

from __future__ import annotations

import pytest
import torch
from helpers import LIMITS, SHAPES

from autotune.reference import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, random_inputs

CELLS = [("exp", True), ("sig", True), ("sig", False)]


@pytest.mark.parametrize("cell,normalize", CELLS, ids=["exp", "sig-norm", "sig-nonorm"])
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_forms_agree(shape, with_states, cell, normalize, check):
    x = random_inputs(*shape.dims(), dtype=torch.float64, with_states=with_states)
    kw = dict(cell=cell, normalize=normalize, return_last_states=True)
    h_ref, states_ref = mlstm_recurrent(**x, **kw)
    names = ["h", "C", "n", "m"][: 1 + len(states_ref)]
    candidates = {"reference.mlstm_parallel": mlstm_parallel(**x, **kw)}
    for L in (16, 64):
        candidates[f"reference.mlstm_chunkwise(chunk_size={L})"] = mlstm_chunkwise(**x, **kw, chunk_size=L)
    for target, (h, states) in candidates.items():
        check(
            target=f"{target}[{cell}]", baseline="reference.mlstm_recurrent(fp64)", dims=shape.dims(),
            dtype=torch.float64, pairs=dict(zip(names, ((h, h_ref), *zip(states, states_ref)))),
            limit=LIMITS[torch.float64],
        )  # fmt: skip


def test_floor_branch_is_exercised():
    """The inputs must reach both branches of max(|n^T q|, exp(-m)); otherwise the tests above test half a cell."""
    x = random_inputs(1, 2, 200, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q, k, i, f = x["q"], x["k"], x["i"], x["f"]
    # recompute |n_t^T q_t| and exp(-m_t) with the recurrence
    n = torch.zeros(1, 2, 16, dtype=torch.float64)
    m = torch.zeros(1, 2, 1, dtype=torch.float64)
    floor_taken = 0
    for t in range(200):
        lf = torch.nn.functional.logsigmoid(f[:, :, t, None])
        m_new = torch.maximum(lf + m, i[:, :, t, None])
        n = torch.exp(lf + m - m_new) * n + torch.exp(i[:, :, t, None] - m_new) * k[:, :, t]
        m = m_new
        s = (n * q[:, :, t] / 4.0).sum(-1, keepdim=True).abs()
        floor_taken += int((torch.exp(-m) > s).sum())
    assert 0 < floor_taken < 400, floor_taken


def test_chunk_size_must_be_positive():
    x = random_inputs(1, 1, 5, 4, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm_chunkwise(**x, chunk_size=0)
