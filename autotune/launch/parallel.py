"""Launcher of the tiled parallel forward (flash-attention-like). Last states come from the chunkwise recurrence
kernel (autotune.launch.chunkwise.last_state): the parallel form itself never holds a state."""

from __future__ import annotations

from .. import families
from ..load import load_variant
from ..variants import Variant
from .chunkwise import last_state
from .common import cdiv, contiguous, dot_precision, empty, state_args, stats_buffers


def check_config(variant: Variant, config: dict) -> dict:
    """``config`` in current knob names, checked against the variant's family spec (autotune.families)."""
    return families.checked(variant.template, config)


def parallel_fw(q, k, v, i, f, C0=None, n0=None, m0=None, *, variant: Variant, config: dict | None = None,
                eps: float = 1e-6, normalize: bool = True, return_last_states: bool = False,
                saved: dict | None = None):  # fmt: skip
    """Shapes as chunkwise_fw; returns h in q's dtype and the fp32 last state (C, n, m) or None. With a dict
    ``saved``, also the per-token statistics the backward needs (autotune.launch.common.stats_buffers)."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = check_config(variant, config or families.default_config(variant, DHQK, DHHV))
    q, k, v, i, f = contiguous(q, k, v, i, f)
    C0c, n0c, m0c, has_state = state_args(C0, n0, m0, q)
    h = empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    stats = stats_buffers(B, NH, S, q.device, saved)
    BQ, BV = config["query_tile"], config["dhhv_tile"]
    grid = (cdiv(DHHV, BV), cdiv(S, BQ), B * NH)
    families.bind(load_variant(variant), variant.template, config).parallel_fw_kernel[grid](
        q, k, v, i, f, C0c, n0c, m0c, h, *stats, S, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV, BQ=BQ,
        BKV=config["kv_tile"], BK=config["dhqk_tile"], BV=BV, HAS_STATE=has_state, NORMALIZE=normalize,
        STORE_STATS=saved is not None, DOT_PRECISION=dot_precision(q.dtype), num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    if not return_last_states:
        return h, None
    return h, last_state(k, v, i, f, C0, n0, m0, cell=variant.params["cell"])
