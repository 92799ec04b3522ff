"""A sequence split into pieces, with the last states of each piece handed to the next as initial states, gives the
same outputs and last states as one call over the whole sequence (fp64, <= 1e-10)."""

from __future__ import annotations

import pytest
import torch
from helpers import LIMITS

from autotune.reference import random_inputs
from autotune.torch import (
    get_available_mlstm_kernels,
    get_mlstm_kernel,
    get_mlstm_sequence_kernel,
    get_mlstm_step_kernel,
    registry,
)

PIECES = [20, 1, 31, 13]  # S = 65: pieces of odd lengths, one of a single token


def _split(x: dict, sizes: list[int]):
    start = 0
    for size in sizes:
        yield {k: v[:, :, start : start + size] for k, v in x.items()}
        start += size


def _initial(states):
    if states is None:
        return {}
    return dict(zip(("c_initial", "n_initial", "m_initial")[: len(states)], states))


@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize(
    "name", [n for n in get_available_mlstm_kernels() if "--native" in n] + ["sequence:native_sequence__native"]
)
def test_pieces_equal_one_call(name, with_states, check):
    if name.startswith("sequence:"):
        fn, cell = get_mlstm_sequence_kernel(name.split(":", 1)[1]), "exp"
    else:
        fn, cell = get_mlstm_kernel(name), registry.kernel_cell(name)
    x = random_inputs(1, 2, sum(PIECES), 24, 40, dtype=torch.float64, with_states=with_states)
    init = {k: x.pop(k) for k in list(x) if k.endswith("initial")}
    if cell == "sig":
        init.pop("m_initial", None)
    h_one, states_one = fn(**x, **init, return_last_states=True, chunk_size=8)
    hs, states = [], tuple(init.values()) if init else None
    for piece in _split(x, PIECES):
        h, states = fn(**piece, **_initial(states), return_last_states=True, chunk_size=8)
        hs.append(h)
    names = ["h", "C", "n", "m"][: 1 + len(states)]
    check(target=f"{name} over pieces {PIECES}", baseline=f"{name} in one call", dims=(1, 2, 65, 24, 40),
          dtype=torch.float64, pairs=dict(zip(names, zip((torch.cat(hs, 2), *states), (h_one, *states_one)))),
          limit=LIMITS[torch.float64])  # fmt: skip


@pytest.mark.parametrize("cell", ["exp", "sig"])
@pytest.mark.parametrize("inplace", [False, True], ids=["new-state", "inplace"])
def test_step_loop_equals_sequence_kernel(cell, inplace, check):
    """The step kernel applied token by token (states fed back, or updated in place) equals the sequence kernel."""
    step = get_mlstm_step_kernel("native")
    x = random_inputs(2, 3, 17, 12, 20, dtype=torch.float64, with_states=True)
    init = {k: x.pop(k) for k in list(x) if k.endswith("initial")}
    if cell == "sig":
        init.pop("m_initial")
    h_seq, states_seq = get_mlstm_sequence_kernel("native_sequence__native")(
        **x, **init, return_last_states=True, cell=cell
    )
    c, n = init["c_initial"].clone(), init["n_initial"].clone()
    m = init["m_initial"].clone() if cell == "exp" else None
    buffers = (c, n, m)
    hs = []
    for t in range(17):
        h, (c, n, m) = step(
            x["q"][:, :, t], x["k"][:, :, t], x["v"][:, :, t], x["i"][:, :, t, None], x["f"][:, :, t, None], c, n, m,
            cell=cell, inplace=inplace,
        )  # fmt: skip
        if inplace:
            assert c is buffers[0] and n is buffers[1] and m is buffers[2], "inplace must return the caller's buffers"
        hs.append(h)
    names = ["h", "C", "n", "m"][: 1 + len(states_seq)]
    check(target=f"step kernel native x17 ({'inplace' if inplace else 'new state'})",
          baseline="sequence kernel native_sequence__native", dims=(2, 3, 17, 12, 20), dtype=torch.float64,
          pairs=dict(zip(names, zip((torch.stack(hs, 2), c, n, m), (h_seq, *states_seq)))),
          limit=LIMITS[torch.float64])  # fmt: skip
