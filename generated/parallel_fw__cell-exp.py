# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        parallel_fw.py.j2
# template hash:   a9367cb7de65ac85
# parameters:      cell=exp
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""Parallel mLSTM forward (exp cell), tiled like flash attention (docs/math.md §3).

One program per (value tile, query tile, batch x head) walks the key tiles from the diagonal back to the first and
keeps a running max state, rescaling its accumulators as the max grows; the initial-state column comes last.
F_t - F_j is only ever formed by adding partial sums of the gate logs (all <= 0, so nothing cancels): for a key tile
inside the query tile, by a cumulative sum down the columns of the masked [BQ, BKV] matrix; for a key tile before
it, as (F_t within the query tile) + (the tiles in between, accumulated while walking back) + (a suffix within
the key tile). Grid: (cdiv(DHHV, BV), cdiv(S, BQ), B * NH); BQ a multiple of BKV; DHQK in tiles of BK.
"""

import triton
import triton.language as tl


@triton.jit
def _logsigmoid(x):
    # log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)); the exponent is <= 0, so nothing overflows. log1p(y) as
    # log(u) * y / (u - 1) with u = 1 + y (exact to a few ulps, Goldberg 1991): log(1 + y) alone loses the digits of
    # y below the epsilon, so a forget gate near 1 (logsigmoid ~ -exp(-x)) came out 1e-3 off relatively in fp32
    y = tl.exp(-tl.abs(x))
    u = 1.0 + y
    return tl.minimum(x, 0.0) - tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _fp32(x):
    """A float argument (scale, eps) in fp32. Triton's launcher passes a Python float as fp32; a launch compiled by
    torch.compile (Inductor) or made through jax-triton passes it as fp64, which would make the fp32 values it
    multiplies fp64: a loop-carried accumulator then changes type (a compile error) and the rest other bits."""
    return tl.cast(x, tl.float32)  # a Python float (under the interpreter) has no .to

@triton.jit
def _for_registers(p_x, m_x, b_x, b_like):
    """b_x (a tile loaded from p_x, also a tl.dot operand) in fp32 for a computation in registers. Where b_x is in
    b_like's dtype the dot reads it as loaded, and a pipelined loop that also read it into registers would put it in
    a ring one buffer too shallow for the dot in flight (the mixed-use hazard of Triton 3.6 on sm_90,
    docs/hazards.md): the registers then get a load of their own, which the cache modifier keeps the compiler from
    merging with the first (a second read, from L2)."""
    if b_x.dtype == b_like.dtype:
        return tl.load(p_x, mask=m_x, other=0.0, cache_modifier=".cg").to(tl.float32)
    else:
        return b_x.to(tl.float32)


@triton.jit
def parallel_fw_kernel(
    q_ptr,  # (B, NH, S, DHQK) contiguous
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    C0_ptr,  # (B, NH, DHQK, DHHV) initial state (read when HAS_STATE)
    n0_ptr,  # (B, NH, DHQK)
    m0_ptr,  # (B, NH)
    h_ptr,  # (B, NH, S, DHHV) output, the inputs' dtype
    s_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the normaliser's argument s_t, for the backward
    mt_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the max state m_t
    S,
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    NORMALIZE: tl.constexpr,
    STORE_STATS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_v, i_q, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    t0 = i_q * BQ
    o_q = t0 + tl.arange(0, BQ)
    o_v = i_v * BV + tl.arange(0, BV)
    m_q, m_v = o_q < S, o_v < DHHV
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    v_ptr += i_bh * S * DHHV
    i_ptr += i_bh * S
    f_ptr += i_bh * S
    b_lfq = tl.where(m_q, _logsigmoid(tl.load(f_ptr + o_q, mask=m_q, other=0.0).to(tl.float32)), 0.0)
    b_Fq = tl.cumsum(b_lfq, axis=0)  # F_t - F_{t0-1}
    n_kv = tl.cdiv(tl.minimum(t0 + BQ, S), BKV)  # key tiles 0 .. n_kv-1 (the last ones lie inside the query tile)
    b_G = tl.full([], 0.0, tl.float32)  # F_{t0-1} - F_{j1-1} for a key tile [j0, j1) before t0
    b_num = tl.zeros([BQ, BV], dtype=tl.float32)
    b_s = tl.zeros([BQ], dtype=tl.float32)
    b_mt = tl.full([BQ], -1e30, tl.float32)  # running max; finite, so that rescaling never computes inf - inf
    for it in range(0, n_kv):
        j0 = (n_kv - 1 - it) * BKV
        o_j = j0 + tl.arange(0, BKV)
        m_j = o_j < S
        b_lfk = tl.where(m_j, _logsigmoid(tl.load(f_ptr + o_j, mask=m_j, other=0.0).to(tl.float32)), 0.0)
        b_ik = tl.load(i_ptr + o_j, mask=m_j, other=0.0).to(tl.float32)
        if j0 >= t0:
            # inside the query tile: F_t - F_j = sum of lf_s over j < s <= t, down the columns
            b_seg = tl.cumsum(tl.where(o_q[:, None] > o_j[None, :], b_lfq[:, None], 0.0), axis=0)  # [BQ, BKV]
        else:
            # before it: (F_t - F_{t0-1}) + (F_{t0-1} - F_{j1-1}) + (sum of lf over j < s < j1)
            b_suffix = tl.cumsum(b_lfk, axis=0, reverse=True) - b_lfk
            b_seg = b_Fq[:, None] + b_G + b_suffix[None, :]
            b_G += tl.sum(b_lfk, axis=0)
        b_logD = tl.where((o_q[:, None] >= o_j[None, :]) & m_j[None, :], b_seg + b_ik[None, :], float("-inf"))
        b_A = tl.zeros([BQ, BKV], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(DHQK, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < DHQK
            b_q = tl.load(q_ptr + o_q[:, None] * DHQK + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
            b_k = tl.load(k_ptr + o_j[:, None] * DHQK + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
            b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [BQ, BK] @ [BK, BKV] -> [BQ, BKV]
        b_m_new = tl.maximum(b_mt, tl.max(b_logD, axis=1))
        b_alpha = tl.exp(b_mt - b_m_new)
        b_num *= b_alpha[:, None]
        b_s *= b_alpha
        b_mt = b_m_new
        b_P = b_A * scale * tl.exp(b_logD - b_mt[:, None])
        b_v = tl.load(v_ptr + o_j[:, None] * DHHV + o_v[None, :], mask=m_j[:, None] & m_v[None, :], other=0.0)
        b_num += tl.dot(b_P.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [BQ, BKV] @ [BKV, BV] -> [BQ, BV]
        b_s += tl.sum(b_P, axis=1)
    # the initial-state column: log D0[t] = F_t + m0, with F_t = (F_t - F_{t0-1}) + G now that G = F_{t0-1}
    if HAS_STATE:
        b_logD0 = b_Fq + b_G + tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        b_logD0 = b_Fq + b_G
    b_m_new = tl.maximum(b_mt, b_logD0)
    b_alpha = tl.exp(b_mt - b_m_new)
    b_num *= b_alpha[:, None]
    b_s *= b_alpha
    b_mt = b_m_new
    if HAS_STATE:
        b_D0 = tl.exp(b_logD0 - b_mt) * scale
        b_qC = tl.zeros([BQ, BV], dtype=tl.float32)
        b_qn = tl.zeros([BQ], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(DHQK, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < DHQK
            b_q = tl.load(q_ptr + o_q[:, None] * DHQK + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
            p_C = C0_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
            b_C = tl.load(p_C, mask=m_k[:, None] & m_v[None, :], other=0.0).to(tl.float32)
            b_qC += tl.dot(b_q.to(tl.float32), b_C, input_precision=DOT_PRECISION)  # [BQ, BK] @ [BK, BV] -> [BQ, BV]
            b_n = tl.load(n0_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_qn += tl.sum(b_q.to(tl.float32) * b_n[None, :], axis=1)
        b_num += b_D0[:, None] * b_qC
        b_s += b_D0 * b_qn
    b_h = b_num / (tl.maximum(tl.abs(b_s), tl.exp(-b_mt)) + eps)[:, None]
    p_h = h_ptr + i_bh * S * DHHV + o_q[:, None] * DHHV + o_v[None, :]
    tl.store(p_h, b_h.to(h_ptr.dtype.element_ty), mask=m_q[:, None] & m_v[None, :])
    if STORE_STATS and i_v == 0:
        tl.store(s_ptr + i_bh * S + o_q, b_s, mask=m_q)
        tl.store(mt_ptr + i_bh * S + o_q, b_mt, mask=m_q)
