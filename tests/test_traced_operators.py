"""The Triton entries' operators as torch.compile traces them (torch.library.triton_op, autotune.torch.compiled_ops):
AOTAutograd's forward and backward graphs hold the very kernel launches the eager operator makes (same kernels,
grids, scalar and constexpr arguments, warp and stage counts), no opaque operator call is left, and only the
in-place step mutates its inputs (c, n, m). Traced on fake tensors without a GPU by tests/traced_operators.py in a
process with TRITON_INTERPRET unset; the GPU test (tests/gpu/test_gpu_compile.py) compiles and runs them."""

from __future__ import annotations

import json

import pytest
from helpers import compiled

STATE_POSITIONS = {"c": 5, "n": 6, "m": 7}  # of the step's arguments q, k, v, i, f, c, n, m, ...
PACKING_TABLES = {"cu_ptr", "cs_ptr", "ss_ptr"}  # autotune/launch/packed.py


@pytest.fixture(scope="module")
def traced() -> dict:
    return json.loads(compiled(["tests/traced_operators.py"]))


def test_the_operators_are_triton_ops(traced):
    assert traced.pop("traceable") is True


CASES = ["chunkwise--triton_auto", "parallel--triton_limit_headdim", "step", "step_", "scan"]


@pytest.mark.parametrize("case", CASES)
def test_the_graphs_launch_what_the_eager_operator_launches(traced, case):
    result = traced[case]
    graphs = ["backward", "forward"] if case.startswith(("chunkwise", "parallel")) else ["forward"]
    assert sorted(result["launches"]) == graphs
    for graph in graphs:
        launched, eager = result["launches"][graph], result["eager"][graph]
        assert eager, f"{case} {graph}: the eager operator launched nothing"
        assert [x["kernel"] for x in launched] == [x["kernel"] for x in eager]
        for got, want in zip(launched, eager):
            where = f"{case} {graph} {want['kernel']}"
            assert got["grid"] == want["grid"], where
            assert got["constants"] == want["constants"], where
            for option, value in (want["options"] or {}).items():  # Triton's defaults fill the rest
                assert got["options"][option] == value, where
            # PyTorch reads the writes from the kernel's TTIR: never fewer than the launcher's; more only where a
            # store's address comes from a helper that takes the packing tables (cu, cs, ss: here the launcher's
            # one-element stand-ins), as PyTorch counts every pointer a call takes
            assert set(want["writes"]) <= set(got["writes"]), where
            assert set(got["writes"]) - set(want["writes"]) <= PACKING_TABLES, where
        assert result["operators"][graph] == [], f"{case} {graph}: an operator call was not traced into"


@pytest.mark.parametrize("case", CASES)
def test_only_the_in_place_step_mutates_its_inputs(traced, case):
    mutated = set(traced[case]["mutated"])
    if case == "step_":
        assert mutated == set(STATE_POSITIONS.values())
    else:  # an input counted as written would be copied back, which torch.compile refuses for a leaf with a gradient
        assert mutated == set()


@pytest.mark.parametrize("case", CASES)
def test_the_operators_trace_with_symbolic_sizes(traced, case):
    """torch.compile makes a size that changed between calls symbolic (its automatic dynamic shapes: a decode loop
    called at another batch size). The operators still trace: the dispatcher takes the sizes as ints (a guard on
    each), since its choice and the launch grids depend on them. A size held as a key of the dispatcher's memo
    failed the compiled step of the bench on the H100 (unhashable SymInt)."""
    assert traced["symbolic"][case] == "ok"
