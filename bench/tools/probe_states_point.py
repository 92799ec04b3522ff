"""One point of the states kernel alone, in its own process (a fault there kills only this process): its stored
states against the k-weighted kernel with gates in its loop, then its time. A diagnosis for
tuning_db/reports/NOTES.md (n on the tensor cores, and the fault of that with v weighted), not a test.

    python bench/tools/probe_states_point.py WEIGHTING N STATES_DHQK_TILE STATES_DHHV_TILE STAGES LAYOUT
    e.g. python bench/tools/probe_states_point.py kT dot 64 128 3 7b
         (4 warps, gates "pre", chunk_inter = chunk_intra = 64)
Prints: layout, the point, "ok", relative errors of C, n and m, and the median time (ms).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
import profile_forward as pf  # noqa: E402

from autotune.launch import chunkwise as launch  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402


def main() -> int:
    weighting, n, bk, bv, stages, layout = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
    variant = find(launch.TWOPASS, cell="exp", state="input")
    module = load_variant(variant)
    x, cfg, buffers = pf.lo64_setup(variant, pf.LAYOUTS[layout])
    pf.states_call(module, x, dict(cfg, states_gates="inline", states_weighting="k", states_n="sum"), buffers)()
    ref = [b.float().clone() for b in buffers]
    c = dict(cfg, states_gates="pre", states_weighting=weighting, states_n=n, states_dhqk_tile=bk,
             states_dhhv_tile=bv, states_warps=4, num_stages=stages)  # fmt: skip
    pf.states_call(module, x, c, buffers)()
    torch.cuda.synchronize()
    errs = [((b.float() - r).norm() / r.norm().clamp_min(1e-30)).item() for b, r in zip(buffers, ref)]
    ms = pf.time_ms(pf.states_call(module, x, c, buffers))
    print(layout, weighting, n, bk, bv, stages, "ok", [f"{e:.1e}" for e in errs], f"{ms:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
