"""The kernel families' specs (autotune.families): reading configurations in any knob names, the named rules, the
defaults, and the one path by which a new knob reaches its kernels (bind)."""

from __future__ import annotations

import dataclasses

import pytest

from autotune import families
from autotune.checks import MLSTMInputError
from autotune.variants import VARIANTS, find


@pytest.mark.parametrize("family", families.FAMILIES, ids=[f.template for f in families.FAMILIES])
def test_every_knob_and_rule_is_named_and_explained(family):
    names = [k.name for k in family.knobs]
    assert len(set(names)) == len(names)
    assert all(k.meaning and k.choices for k in family.knobs)
    olds = [k.old for k in family.knobs if k.old]
    assert len(set(olds)) == len(olds) and not set(olds) & set(names)
    rules = [r.name for r in family.rules]
    assert len(set(rules)) == len(rules)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.parametrize("dims", [(16, 16), (48, 96), (128, 128), (256, 512)])
def test_every_default_passes_its_own_checks(variant, dims):
    config = families.default_config(variant, *dims)
    assert families.checked(variant.template, config) == config
    assert families.invalid(variant, config, *dims, 2, families.H100_LIMITS) is None


def test_old_names_are_read_and_renamed():
    old = {"LI": 16, "LO": 32, "BKS": 16, "BVS": 32, "BKO": 32, "BVO": 16, "num_warps_states": 4,
           "num_warps_out": 4, "num_stages": 1}  # fmt: skip
    got = families.checked("chunkwise_twopass_fw.py.j2", old)
    assert got["chunk_inter"] == 16 and got["chunk_intra"] == 32 and got["out_warps"] == 4
    # knobs added after such an entry: filled with what it ran with
    assert (got["out_values"], got["states_gates"], got["states_weighting"], got["states_n"]) == (
        "tiles", "inline", "k", "sum")  # fmt: skip


def test_a_knob_filled_from_another_takes_its_value():
    old = {"L": 64, "BK": 64, "BV": 32, "BKS": 64, "BVS": 128, "num_warps": 4, "num_warps_state": 4, "num_stages": 1}
    assert families.canonical("chunkwise_bw.py.j2", old)["dv_dhhv_tile"] == 32


@pytest.mark.parametrize(
    "config,message",
    [
        ({"LI": 16, "chunk_inter": 16}, "chunk_inter given twice .as chunk_inter and its former name LI"),
        ({"chunk_inter": 16, "LI": 16}, "chunk_inter given twice .as chunk_inter and its former name LI"),
        ({"chunk_inter": 16, "chunk_intra": 24}, "chunk_intra must be a power of two"),
        ({"chunk_inter": 32, "chunk_intra": 16}, "chunk_intra=16 not a multiple of chunk_inter=32"),
        ({"out_values": "halves"}, r"out_values must be one of \('tiles', 'loop'\)"),
        ({"states_weighting": "v", "states_n": "dot"}, 'states_n "dot" needs states_weighting'),
        ({"out_warps": 3}, "out_warps must be a power of two"),
        ({"chunk_size": 64}, r"unknown launch parameters \['chunk_size'\]"),
    ],
)  # fmt: skip
def test_launch_checks_name_the_problem(config, message):
    variant = find("chunkwise_twopass_fw.py.j2", cell="exp", state="input")
    base = families.default_config(variant, 64, 64)
    with pytest.raises(MLSTMInputError, match=message):
        families.checked(variant.template, {**base, **config})


def test_a_retired_knob_is_read_at_its_last_value_only():
    variant = find("chunkwise_bw.py.j2", cell="exp", kernels="split")
    base = families.default_config(variant, 64, 64)
    assert "states_every" not in families.checked(variant.template, {**base, "states_every": 1})
    with pytest.raises(MLSTMInputError, match="states_every=2 of chunkwise_bw.py.j2 is retired"):
        families.checked(variant.template, {**base, "states_every": 2})


def test_search_rules_are_named_in_the_reason():
    variant = find("chunkwise_fused_fw.py.j2", cell="exp", state="input")
    config = dict(families.default_config(variant, 256, 512), dhhv_tile=128, num_warps=2)
    reason = families.invalid(variant, config, 256, 512, 2, families.H100_LIMITS)
    assert reason.startswith("registers_state_and_chunk_tiles:"), reason
    # a search rule is not a launch error: a forced configuration may still run it
    assert families.checked(variant.template, config) == config


@pytest.mark.parametrize(
    "state,DHHV,dtype_bytes,reason",
    [
        ("input", 512, 2, None),
        ("float32", 12, 2, None),  # fp32 states of 16-bit inputs: 48-byte rows
        ("input", 12, 2, "DHHV=12 of 2-byte elements"),
        ("input", 3, 4, "DHHV=3 of 4-byte elements"),
        ("planes", 512, 2, "not planes"),
    ],
)  # fmt: skip
def test_a_descriptor_store_needs_one_aligned_tile_per_chunk(state, DHHV, dtype_bytes, reason):
    variant = find("chunkwise_twopass_fw.py.j2", cell="exp", state=state)
    config = dict(families.default_config(variant, 64, DHHV), states_store="tma")
    got = families.invalid(variant, config, 64, DHHV, dtype_bytes, families.H100_LIMITS)
    if reason is None:
        assert got is None
    else:
        assert got.startswith("tma_store_rows_states_store:") and reason in got, got
        assert families.invalid(variant, dict(config, states_store="plain"), 64, DHHV, dtype_bytes,
                                families.H100_LIMITS) is None  # fmt: skip


@pytest.mark.parametrize(
    "buffers,DHHV,dtype_bytes,reason",
    [
        ("float32", 12, 2, None),
        ("input", 24, 2, None),
        ("input", 12, 2, "DHHV=12 of 2-byte elements"),
        ("planes", 512, 2, "not planes"),
    ],
)  # fmt: skip
def test_a_backward_descriptor_store_needs_one_aligned_tile_per_chunk(buffers, DHHV, dtype_bytes, reason):
    variant = find("chunkwise_bw.py.j2", cell="exp", kernels="fused")
    config = dict(families.default_config(variant, 64, DHHV), state_buffers=buffers, state_stores="tma")
    got = families.invalid(variant, config, 64, DHHV, dtype_bytes, families.H100_LIMITS)
    if reason is None:
        assert got is None, got
    else:
        assert got.startswith("tma_store_rows_state_stores:") and reason in got, got


class _Recorder:
    """Stands for a generated module: its kernels record the keyword arguments of every launch."""

    def __init__(self):
        self.launches = []

    def __getattr__(self, name):
        recorder = self

        class Kernel:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.launches.append((name, kwargs))

        return Kernel()


def test_a_knob_that_is_a_constexpr_reaches_its_kernels_without_a_launcher_edit(monkeypatch):
    """bind: a knob declared with its constexpr and kernels is passed to those kernels' launches, to no other."""
    knob = families.Knob("evict_kv", "cache policy of the key and value loads", ("", "evict_last"),
                         constexpr="EVICT_KV", kernels=("parallel_fw_kernel",))  # fmt: skip
    family = dataclasses.replace(families.PARALLEL_FW, knobs=(*families.PARALLEL_FW.knobs, knob))
    monkeypatch.setitem(families._BY_TEMPLATE, "parallel_fw.py.j2", family)
    monkeypatch.setattr(families, "_WIRED", {})  # the knobs each template wires, cached per process
    module = _Recorder()
    bound = families.bind(module, "parallel_fw.py.j2", {"evict_kv": "evict_last"})
    bound.parallel_fw_kernel[(1,)](1, 2, BQ=64)
    bound.other_kernel[(1,)](BQ=64)
    assert module.launches == [("parallel_fw_kernel", {"EVICT_KV": "evict_last", "BQ": 64}),
                               ("other_kernel", {"BQ": 64})]  # fmt: skip
    # a family without such knobs: the module itself, nothing added to the launches
    assert families.bind(module, "recurrent_step.py.j2", {}) is module
