"""The catalogue of structural variants: which template, with which structural parameters, gets rendered.

Structure (Jinja) vs numbers (launch parameters): a variant fixes the algorithm's shape — fused single pass or two
kernels, exp or sig cell, state dtype — and leaves tile sizes, chunk sizes, ``num_warps`` and ``num_stages`` to the
launch configuration (``autotune.launch``), so one generated file serves every configuration of its structure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    family: str  # the op family, e.g. "chunkwise_fw"
    template: str  # file name under templates/
    params: dict = field(default_factory=dict, hash=False)  # structural parameters handed to Jinja

    @property
    def tag(self) -> str:
        """Parameters in the file name, e.g. ``cell-exp_state-float32``; order fixed by sorting the keys."""
        return "_".join(f"{k}-{v}" for k, v in sorted(self.params.items()))

    @property
    def name(self) -> str:
        """Module name: ``<template stem>__<tag>``; the file is ``generated/<name>.py``."""
        stem = self.template.removesuffix(".py.j2")
        return f"{stem}__{self.tag}" if self.params else stem

    def key(self) -> str:
        return json.dumps({"template": self.template, "params": self.params}, sort_keys=True)

    def short_hash(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:8]


def _grid(family: str, template: str, **axes: list) -> list[Variant]:
    """Every combination of the given parameter values, in a deterministic order."""
    combos: list[dict] = [{}]
    for name, values in axes.items():
        combos = [dict(c, **{name: v}) for c in combos for v in values]
    return [Variant(family, template, c) for c in combos]


CELLS = ["exp", "sig"]
# "input": states stored (two-pass) or multiplied (fused) in the inputs' dtype, i.e. bf16 for bf16 inputs
STATE_DTYPES = ["float32", "input"]

VARIANTS: list[Variant] = [
    # chunkwise forward, (a): a state recurrence over chunk borders writes per-chunk states, then the within-chunk
    # parallel part reads them (two kernels, separate inter/intra chunk sizes).
    *_grid("chunkwise_fw", "chunkwise_twopass_fw.py.j2", cell=CELLS, state=STATE_DTYPES),
    # chunkwise forward, (b): one pass that carries (C, n, m) on chip across chunks and writes no per-chunk states.
    *_grid("chunkwise_fw", "chunkwise_fused_fw.py.j2", cell=CELLS, state=STATE_DTYPES),
    # chunkwise backward, exact (MATH.md §6): a reverse recurrence over chunk borders, then the chunks in parallel,
    # either one program per chunk computing dq, dk, dv and the gate gradients together ("fused"), or programs per
    # DHQK / DHHV tile that each recompute q k^T and the gate matrix ("split").
    *_grid("chunkwise_bw", "chunkwise_bw.py.j2", cell=CELLS, kernels=["fused", "split"]),
    # parallel backward, exact: flash-attention-like tiles over queries and keys, no chunk states.
    *_grid("parallel_bw", "parallel_bw.py.j2", cell=CELLS),
    # parallel forward: flash-attention-like tiling over queries and keys, online max state.
    *_grid("parallel_fw", "parallel_fw.py.j2", cell=CELLS),
    # recurrent inference: one step (in place when asked), and a whole sequence in one launch.
    *_grid("step_fw", "recurrent_step.py.j2", cell=CELLS),
    *_grid("sequence_fw", "recurrent_sequence.py.j2", cell=CELLS),
]


_BY_NAME = {v.name: v for v in VARIANTS}


def by_name(name: str) -> Variant:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(_BY_NAME)}") from None


def find(template: str, **params) -> Variant:
    """The variant rendered from ``template`` with exactly these structural parameters."""
    for v in VARIANTS:
        if v.template == template and v.params == params:
            return v
    raise KeyError(f"no variant of {template} with {params}")
