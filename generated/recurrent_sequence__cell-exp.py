# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        recurrent_sequence.py.j2
# template hash:   ebc34f96e3c68d64
# parameters:      cell=exp
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""mLSTM over a whole sequence in one launch (exp cell), docs/math.md §1-§2 step by step: one program per
(value tile, batch x head) keeps its columns of C, and all of n and m, on chip for all S tokens. For inference
(prefill of a remainder shorter than a chunk, or short prompts): the work per token is tiny, so S steps run back
to back.
Grid: (cdiv(DHHV, BV), B * NH); BK is DHQK padded to a power of two.
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
def recurrent_sequence_kernel(
    q_ptr,  # (B, NH, S, DHQK) contiguous
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    C0_ptr,  # (B, NH, DHQK, DHHV) initial state (read when HAS_STATE)
    n0_ptr,  # (B, NH, DHQK)
    m0_ptr,  # (B, NH)
    h_ptr,  # (B, NH, S, DHHV) output
    CS_ptr,  # (B, NH, DHQK, DHHV) last state (written when STORE_LAST), any float dtype
    nS_ptr,  # (B, NH, DHQK)
    mS_ptr,  # (B, NH)
    S,
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    STORE_LAST: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DHQK, o_v < DHHV
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
    if HAS_STATE:
        b_C = tl.load(C0_ptr + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_n = tl.load(n0_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_m = tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        b_C = tl.zeros([BK, BV], dtype=tl.float32)
        b_n = tl.zeros([BK], dtype=tl.float32)
        b_m = tl.full([], 0.0, tl.float32)
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    v_ptr += i_bh * S * DHHV
    h_ptr += i_bh * S * DHHV
    for t in range(0, S):
        b_i = tl.load(i_ptr + i_bh * S + t).to(tl.float32)
        b_lf = _logsigmoid(tl.load(f_ptr + i_bh * S + t).to(tl.float32))
        b_m_new = tl.maximum(b_lf + b_m, b_i)
        b_decay = tl.exp(b_lf + b_m - b_m_new)
        b_w = tl.exp(b_i - b_m_new)
        b_m = b_m_new
        b_q = tl.load(q_ptr + t * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k_ptr + t * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v_ptr + t * DHHV + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_C = b_decay * b_C + b_w * b_k[:, None] * b_v[None, :]
        b_n = b_decay * b_n + b_w * b_k
        b_num = tl.sum(b_C * b_q[:, None], axis=0)
        b_qn = tl.sum(b_n * b_q, axis=0)
        b_h = b_num / (tl.maximum(tl.abs(b_qn), tl.exp(-b_m)) + eps)
        tl.store(h_ptr + t * DHHV + o_v, b_h.to(h_ptr.dtype.element_ty), mask=m_v)
    if STORE_LAST:
        tl.store(CS_ptr + o_kv, b_C.to(CS_ptr.dtype.element_ty), mask=m_kv)
        if i_v == 0:
            tl.store(nS_ptr + i_bh * DHQK + o_k, b_n.to(nS_ptr.dtype.element_ty), mask=m_k)
            tl.store(mS_ptr + i_bh, b_m.to(mS_ptr.dtype.element_ty))
