"""The search space per op and cell, read from the kernel families' specs (autotune.families).

A point of the space is (structural variant, launch configuration). Every variant's default configuration
(``families.default_config``) is a point of its space. ``PARAMS[template]`` lists, per launch parameter, the values
the search tries; ``invalid(variant, config, DHQK, DHHV, dtype_bytes, limits)`` returns the first named rule of the
variant's family that the point breaks (divisibility, tiles wider than the padded head dims, estimates of shared
memory and registers against the device's limits, measured faults), or None. Invalid points are pruned and recorded
by the search, never silently clamped.
"""

from __future__ import annotations

from . import families
from .families import H100_LIMITS, STAGES, TILES, WARPS, Limits  # noqa: F401  (the space's public names)
from .variants import VARIANTS, Variant

# template -> launch parameter -> the values the search tries
PARAMS: dict[str, dict[str, tuple]] = {f.template: f.choices() for f in families.FAMILIES}

FORMS = {"chunkwise": "chunkwise_fw", "parallel": "parallel_fw", "step": "step_fw", "sequence": "sequence_fw"}
# the backward of a training step (direction "fwbw"): the variants searched per form
BACKWARD_FORMS = {"chunkwise": "chunkwise_bw", "parallel": "parallel_bw"}


def seeds(default: tuple[Variant, dict], candidates: list[Variant]) -> list[tuple[Variant, dict]]:
    """The family's seeds as points: each change applied to the default configuration, in the candidate variant of
    the same template and cell whose parameters match (skipped when there is none)."""
    variant, config = default
    out = []
    for params, changes in families.of(variant.template).seeds:
        want = {**variant.params, **params}
        match = [v for v in candidates if v.template == variant.template and v.params == want]
        if match:
            out.append((match[0], {**config, **changes}))
    return out


def inert(variant: Variant) -> tuple[str, ...]:
    """The launch parameters of ``variant``'s template that its kernels do not read."""
    return families.inert(variant)


def upgrade(variant: Variant, config: dict) -> dict:
    """``config`` as written by any version of the database, in current knob names, with knobs added since it was
    tuned filled in as it ran (families.canonical)."""
    return families.canonical(variant.template, config)


def variants_of(form: str, cell: str, direction: str = "fw") -> list[Variant]:
    """The structural variants the search may choose for a form and cell, in catalogue order; for direction "fwbw"
    the backward variants (the forward keeps its own "fw" choice)."""
    family = FORMS[form] if direction == "fw" else BACKWARD_FORMS[form]
    return [v for v in VARIANTS if v.family == family and v.params.get("cell") == cell]


def invalid(variant: Variant, config: dict, DHQK: int, DHHV: int, dtype_bytes: int, limits: Limits) -> str | None:
    """Why (variant, config) cannot run for these head dims on this device, or None if it can."""
    return families.invalid(variant, config, DHQK, DHHV, dtype_bytes, limits)
