"""Launcher of the tiled parallel forward (flash-attention-like). Last states come from the chunkwise recurrence
kernel (autotune.launch.chunkwise.last_state): the parallel form itself never holds a state."""

from __future__ import annotations

from ..checks import MLSTMInputError
from ..load import load_variant
from ..variants import Variant
from .chunkwise import last_state
from .common import cdiv, contiguous, dot_precision, empty, next_pow2, require_pow2, state_args, stats_buffers


def default_config(variant: Variant, DHQK: int, DHHV: int) -> dict:
    return {"BQ": 64, "BKV": 64 if DHQK <= 128 else 32, "BK": min(128, next_pow2(DHQK)),
            "BV": min(64, next_pow2(DHHV)), "num_warps": 4, "num_stages": 1}  # fmt: skip


def check_config(variant: Variant, config: dict) -> None:
    require_pow2(config, "BQ", "BKV", "BK", "BV")
    if config["BQ"] % config["BKV"]:
        raise MLSTMInputError(f"BQ ({config['BQ']}) must be a multiple of BKV ({config['BKV']})")


def parallel_fw(q, k, v, i, f, C0=None, n0=None, m0=None, *, variant: Variant, config: dict | None = None,
                eps: float = 1e-6, normalize: bool = True, return_last_states: bool = False,
                saved: dict | None = None):  # fmt: skip
    """Shapes as chunkwise_fw; returns h in q's dtype and the fp32 last state (C, n, m) or None. With a dict
    ``saved``, also the per-token statistics the backward needs (autotune.launch.common.stats_buffers)."""
    B, NH, S, DHQK = q.shape
    DHHV = v.shape[-1]
    config = dict(config or default_config(variant, DHQK, DHHV))
    check_config(variant, config)
    q, k, v, i, f = contiguous(q, k, v, i, f)
    C0c, n0c, m0c, has_state = state_args(C0, n0, m0, q)
    h = empty(B, NH, S, DHHV, dtype=q.dtype, device=q.device)
    stats = stats_buffers(B, NH, S, q.device, saved)
    grid = (cdiv(DHHV, config["BV"]), cdiv(S, config["BQ"]), B * NH)
    load_variant(variant).parallel_fw_kernel[grid](
        q, k, v, i, f, C0c, n0c, m0c, h, *stats, S, scale=DHQK**-0.5, eps=eps, DHQK=DHQK, DHHV=DHHV, BQ=config["BQ"],
        BKV=config["BKV"], BK=config["BK"], BV=config["BV"], HAS_STATE=has_state, NORMALIZE=normalize,
        STORE_STATS=saved is not None, DOT_PRECISION=dot_precision(q.dtype), num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    if not return_last_states:
        return h, None
    return h, last_state(k, v, i, f, C0, n0, m0, cell=variant.params["cell"])
