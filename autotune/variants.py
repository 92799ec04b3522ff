"""The catalogue of structural variants: which template, with which structural parameters, gets rendered.

Structure (Jinja) vs numbers (launch parameters): a variant fixes the algorithm's shape — fused single pass or two
kernels, exp or sig cell, state dtype — and leaves tile sizes, chunk sizes, ``num_warps`` and ``num_stages`` to the
launch configuration (``autotune.launch``), so one generated file serves every configuration of its structure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .families import FAMILIES


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


def _grid(family: str, template: str, axes: dict) -> list[Variant]:
    """Every combination of the given parameter values, in a deterministic order."""
    combos: list[dict] = [{}]
    for name, values in axes.items():
        combos = [dict(c, **{name: v}) for c in combos for v in values]
    return [Variant(family, template, c) for c in combos]


# one variant per combination of each family's Jinja axes (autotune.families has each family's meaning)
VARIANTS: list[Variant] = [v for f in FAMILIES for v in _grid(f.op, f.template, f.axes)]


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
