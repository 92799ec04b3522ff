"""Registers and spills (sm_90, no GPU needed) of a bare states recurrence in FLA's shape: one program per value
tile of BV over all 256 keys, held as KT accumulators of [64, BV], each fed by its own [64, 64] k^T tile and the
same v tile, the state stored every chunk. Nothing else: no masks on k, no n, no weights, no max-state chain. It is
the floor that our states kernel (``chunkwise_states_kernel``) is compared with at one and four warps, to tell
whether a narrow program can hold a 256-wide key at all (tuning_db/reports/NOTES.md). Not a test, and not a
kernel of the library:

    python bench/tools/narrow_states_registers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_registers import ptxas_report  # noqa: E402

from autotune import compile_check  # noqa: E402


@triton.jit
def bare_states_kernel(k_ptr, v_ptr, h_ptr, S, NC, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BV: tl.constexpr, KT: tl.constexpr):  # fmt: skip
    """States every BT tokens of one value tile: KT key tiles of 64 (1, 2 or 4), decayed by a constant."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_v = i_v * BV + tl.arange(0, BV)
    o_k = tl.arange(0, 64)
    o_l = tl.arange(0, BT)
    b_h0 = tl.zeros([64, BV], dtype=tl.float32)
    b_h1 = tl.zeros([64, BV], dtype=tl.float32)
    b_h2 = tl.zeros([64, BV], dtype=tl.float32)
    b_h3 = tl.zeros([64, BV], dtype=tl.float32)
    k_ptr += i_bh * S * K
    v_ptr += i_bh * S * V
    for i_c in range(0, NC):
        p_h = h_ptr + (i_bh * NC + i_c) * K * V + o_k[:, None] * V + o_v[None, :]
        tl.store(p_h, b_h0.to(tl.bfloat16))
        if KT > 1:
            tl.store(p_h + 64 * V, b_h1.to(tl.bfloat16))
        if KT > 2:
            tl.store(p_h + 128 * V, b_h2.to(tl.bfloat16))
            tl.store(p_h + 192 * V, b_h3.to(tl.bfloat16))
        o_t = i_c * BT + o_l
        b_v = tl.load(v_ptr + o_t[:, None] * V + o_v[None, :], mask=(o_t < S)[:, None], other=0.0)
        p_kT = k_ptr + o_t[None, :] * K + o_k[:, None]
        b_h0 = 0.9 * b_h0 + tl.dot(tl.load(p_kT), b_v)
        if KT > 1:
            b_h1 = 0.9 * b_h1 + tl.dot(tl.load(p_kT + 64), b_v)
        if KT > 2:
            b_h2 = 0.9 * b_h2 + tl.dot(tl.load(p_kT + 128), b_v)
            b_h3 = 0.9 * b_h3 + tl.dot(tl.load(p_kT + 192), b_v)


def main() -> int:
    t = torch.empty(1, dtype=torch.bfloat16)
    print(f"{'key tiles':>9} {'BV':>3} {'warps':>5} {'regs':>5} {'spill st':>9} {'spill ld':>9}")
    for KT in (1, 2, 4):
        for BV in (16, 32):
            for warps in (1, 4):
                compiled = compile_check._compile(bare_states_kernel, [t, t, t, 100, 10],
                                                  dict(K=256, V=512, BT=64, BV=BV, KT=KT, num_warps=warps),
                                                  GPUTarget("cuda", 90, 32))  # fmt: skip
                r = ptxas_report(compiled.asm["ptx"])
                print(f"{KT:>9} {BV:>3} {warps:>5} {r['registers']:>5} {r['spill_stores']:>9} {r['spill_loads']:>9}",
                      flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
