# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        chunkwise_fused_fw.py.j2
# template hash:   8718409fedd23a24
# parameters:      cell=exp, state=float32
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""Chunkwise mLSTM forward (exp cell), fused single pass: one program per (value tile, batch x head) walks the
sequence chunk by chunk and carries the state (C, n, m) on chip; no per-chunk state is written to memory.

State in the q @ C product: fp32 (for 16-bit inputs, two tiles of their dtype).
Grid: (cdiv(DHHV, BV), B * NH). Constexprs: L (the knob "chunk"), BV ("dhhv_tile"), BK (DHQK padded to a power
of two); the knobs of autotune/families.py (CHUNKWISE_FUSED_FW). Each program recomputes q k^T of its chunks: the
price of not materialising states.
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
def _load_gates(i_ptr, f_ptr, o_t, m_t):
    """Gate pre-activations of a chunk in fp32 -> (log forget gate, log input gate); 0 and -inf past S."""
    b_i = tl.load(i_ptr + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_f = tl.load(f_ptr + o_t, mask=m_t, other=0.0).to(tl.float32)
    b_lf = tl.where(m_t, _logsigmoid(b_f), 0.0)
    b_li = tl.where(m_t, b_i, float("-inf"))
    return b_lf, b_li


@triton.jit
def _chunk_log_weights(b_lf, b_li):
    """A chunk's own log weights, independent of the state before it: (F_end, g, g_max) with F_end the sum of its lf
    and g_j = (sum of lf after j in the chunk) + li_j token j's log weight at the chunk end."""
    # every lf <= 0: sums of them never cancel, differences of two long sums would (so: a reverse cumsum)
    b_Fend = tl.sum(b_lf, axis=0)
    b_g = (tl.cumsum(b_lf, axis=0, reverse=True) - b_lf) + b_li
    b_g_max = tl.maximum(tl.max(b_g, axis=0), -1e30)  # finite even for a chunk past S (all g = -inf)
    return b_Fend, b_g, b_g_max


@triton.jit
def _chunk_transition(b_Fend, b_g_max, b_m):
    """The max-state chain across one chunk (scalars): (decay, scale, m_new), see _chunk_state_weights."""
    b_m_new = tl.maximum(b_Fend + b_m, b_g_max)
    return tl.exp(b_Fend + b_m - b_m_new), tl.exp(b_g_max - b_m_new), b_m_new


@triton.jit
def _chunk_state_weights(b_lf, b_li, b_m):
    """How a chunk moves the state (C, n, m): C_new = decay * C + scale * sum_j w_j k_j v_j^T.

    The weights w_j = exp(g_j - g_max) are relative to the chunk's largest (so the largest is 1): in the
    low-precision dot they cannot all underflow (fp16 flushes below 6e-8); scale = exp(g_max - m_new) is applied in
    fp32. Returns (decay, w, scale, m_new).
    """
    b_Fend, b_g, b_g_max = _chunk_log_weights(b_lf, b_li)
    b_decay, b_scale, b_m_new = _chunk_transition(b_Fend, b_g_max, b_m)
    return b_decay, tl.exp(b_g - b_g_max), b_scale, b_m_new


@triton.jit
def _chunk_decay_matrix(b_lf, b_li, b_m, o_l, SEGMENT_SUMS: tl.constexpr):
    """Within-chunk decay, docs/math.md §3-§4: D[t, j] = exp(F_t - F_j + li_j - m_t) for j <= t,
    D0[t] = exp(F_t + m - m_t) for the state before the chunk, m_t the row max, F the chunk-local cumulative sum of lf.

    SEGMENT_SUMS (fp32 inputs): F_t - F_j is summed segment by segment (a cumulative sum down the columns of the
    strictly lower triangle): as a difference of two prefix sums it would cancel when the gates forget strongly
    (measured: 1e-5 relative error in the states of a 64-token chunk in fp32, against 7e-8 for the segment sums).
    Otherwise (16-bit inputs, whose own rounding is 4e-3 or 5e-4) the difference of prefix sums: the [L, L] scan
    cost about 40% of the decay matrix's time on an H200 (tuning_db/reports/NOTES.md)."""
    b_F = tl.cumsum(b_lf, axis=0)
    if SEGMENT_SUMS:
        b_seg = tl.cumsum(tl.where(o_l[:, None] > o_l[None, :], b_lf[:, None], 0.0), axis=0)  # [L, L]
    else:
        b_seg = b_F[:, None] - b_F[None, :]
    b_logD = tl.where(o_l[:, None] >= o_l[None, :], b_seg + b_li[None, :], float("-inf"))
    b_logD0 = b_F + b_m
    b_mt = tl.maximum(tl.max(b_logD, axis=1), b_logD0)
    return tl.exp(b_logD - b_mt[:, None]), tl.exp(b_logD0 - b_mt), b_mt


@triton.jit
def _normalize(b_num, b_s, b_mt, eps, NORMALIZE: tl.constexpr):
    """h = num / (max(|s|, floor) + eps): floor exp(-m) for the exp cell, 1 for the sig cell (docs/math.md §1-§2)."""
    b_den = tl.maximum(tl.abs(b_s), tl.exp(-b_mt)) + eps
    return b_num / b_den[:, None]

@triton.jit
def _dot_parts(b_a, b_x, DOT_PRECISION: tl.constexpr):
    """b_a @ b_x, b_a in the inputs' dtype, b_x in it or in fp32 (a state or a state's gradient). fp32 b_x with
    16-bit b_a: b_x as the sum of two tiles of b_a's dtype (b_x rounded, and what that rounding left out), two
    products on the tensor cores, so b_x keeps about twice the 16-bit mantissa. Rounded once, b_x would cost the
    product an error of |a| |x| where the parallel form's is |a^T k| |v|, about sqrt(DHQK) times more, and a
    training step's backward amplifies it where h's normaliser cancels (docs/hazards.md)."""
    if b_x.dtype == b_a.dtype:
        return tl.dot(b_a, b_x, input_precision=DOT_PRECISION)
    else:
        b_hi = b_x.to(b_a.dtype)
        b_lo = (b_x - b_hi.to(tl.float32)).to(b_a.dtype)
        return tl.dot(b_a, b_hi, input_precision=DOT_PRECISION) + tl.dot(b_a, b_lo, input_precision=DOT_PRECISION)


@triton.jit
def _parts_dot(b_x, b_a, DOT_PRECISION: tl.constexpr):
    """b_x @ b_a: _dot_parts with the fp32 operand on the left."""
    if b_x.dtype == b_a.dtype:
        return tl.dot(b_x, b_a, input_precision=DOT_PRECISION)
    else:
        b_hi = b_x.to(b_a.dtype)
        b_lo = (b_x - b_hi.to(tl.float32)).to(b_a.dtype)
        return tl.dot(b_hi, b_a, input_precision=DOT_PRECISION) + tl.dot(b_lo, b_a, input_precision=DOT_PRECISION)


@triton.jit
def _store_planes(p_x, b_x, m_x, KV):
    """The fp32 state tile b_x as two planes of the buffer's 16-bit dtype: hi = b_x rounded at p_x, lo = what that
    rounding left out KV elements after it, the two tiles _dot_parts and _parts_dot form in registers."""
    b_hi = b_x.to(p_x.dtype.element_ty)
    tl.store(p_x, b_hi, mask=m_x)
    tl.store(p_x + KV, (b_x - b_hi.to(tl.float32)).to(b_hi.dtype), mask=m_x)


@triton.jit
def _dot_planes(b_a, p_x, m_x, KV, DOT_PRECISION: tl.constexpr):
    """b_a @ x for a state tile stored as planes (_store_planes) at p_x: _dot_parts' two products, from memory."""
    b_hi = tl.load(p_x, mask=m_x, other=0.0)
    b_lo = tl.load(p_x + KV, mask=m_x, other=0.0)
    return tl.dot(b_a, b_hi, input_precision=DOT_PRECISION) + tl.dot(b_a, b_lo, input_precision=DOT_PRECISION)


@triton.jit
def _planes_for_registers(p_x, m_x, KV):
    """hi + lo in fp32 of a state tile stored as planes at p_x, for a computation in registers: loads of their own
    (a second read, from L2), as _for_registers does for a 16-bit tile that also feeds a dot."""
    b_hi = tl.load(p_x, mask=m_x, other=0.0, cache_modifier=".cg").to(tl.float32)
    return b_hi + tl.load(p_x + KV, mask=m_x, other=0.0, cache_modifier=".cg").to(tl.float32)


@triton.jit
def _planes_dot(p_x, m_x, b_a, KV, DOT_PRECISION: tl.constexpr):
    """x @ b_a for a state tile stored as planes at p_x: _parts_dot's two products, from memory."""
    b_hi = tl.load(p_x, mask=m_x, other=0.0)
    b_lo = tl.load(p_x + KV, mask=m_x, other=0.0)
    return tl.dot(b_hi, b_a, input_precision=DOT_PRECISION) + tl.dot(b_lo, b_a, input_precision=DOT_PRECISION)


@triton.jit
def _packed_row(i_bh, S, NC, cu_ptr, cs_ptr, NH, PACKED: tl.constexpr):
    """(first token, tokens, first chunk slot, chunks) of the sequential kernel's row i_bh: row b * NH + h of a batch
    of sequences of S tokens in NC chunks each; with PACKED, document j of head h (i_bh = j * NH + h) of a packed
    sequence of S tokens per head, whose tokens run from cu[j] to cu[j + 1] and whose chunks take the slots cs[j] to
    cs[j + 1] of the head's NC."""
    if PACKED:
        j = i_bh // NH
        a = tl.load(cu_ptr + j).to(tl.int64)
        c0 = tl.load(cs_ptr + j).to(tl.int64)
        n_t = (tl.load(cu_ptr + j + 1).to(tl.int64) - a).to(tl.int32)
        n_c = (tl.load(cs_ptr + j + 1).to(tl.int64) - c0).to(tl.int32)
        return (i_bh % NH) * S + a, n_t, (i_bh % NH) * NC + c0, n_c
    else:
        return i_bh * S, S, i_bh * NC, NC


@triton.jit
def _packed_chunk(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, PACKED: tl.constexpr):
    """(first token of the row, its tokens, the chunk's index in its row) of chunk slot i_c of row i_bh; with PACKED,
    of slot i_c of head i_bh, which belongs to document ss[i_c] (NSEQ for the slots past the last document's chunks:
    0 tokens, so every load and store of the program is masked off)."""
    if PACKED:
        j = tl.load(ss_ptr + i_c)
        used = j < NSEQ
        j = tl.minimum(j, NSEQ - 1)
        a = tl.load(cu_ptr + j).to(tl.int64)
        n_t = tl.where(used, (tl.load(cu_ptr + j + 1).to(tl.int64) - a).to(tl.int32), 0)
        return i_bh * S + a, n_t, tl.where(used, i_c - tl.load(cs_ptr + j), 0)
    else:
        return i_bh * S, S, i_c


@triton.jit
def _packed_chunk_row(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, NH, PACKED: tl.constexpr):
    """_packed_chunk, and (chunks of the row, the row): the row's index among the B * NH rows of a batch, or j * NH + h
    for document j of head h of a packed sequence (the rows of per-row tensors such as last states)."""
    tok0, S_r, c = _packed_chunk(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, PACKED)
    if PACKED:
        j = tl.minimum(tl.load(ss_ptr + i_c), NSEQ - 1)
        return tok0, S_r, c, tl.load(cs_ptr + j + 1) - tl.load(cs_ptr + j), j * NH + i_bh
    else:
        return tok0, S_r, c, NC, i_bh


@triton.jit
def chunkwise_fused_fw_kernel(
    q_ptr,  # (B, NH, S, DHQK) contiguous
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S) input gate pre-activations, any float dtype
    f_ptr,  # (B, NH, S) forget gate pre-activations
    C0_ptr,  # (B, NH, DHQK, DHHV) initial state (read when HAS_STATE)
    n0_ptr,  # (B, NH, DHQK)
    m0_ptr,  # (B, NH)
    h_ptr,  # (B, NH, S, DHHV) output, the inputs' dtype
    CS_ptr,  # (B, NH, DHQK, DHHV) fp32 last state (written when STORE_LAST)
    nS_ptr,  # (B, NH, DHQK) fp32
    mS_ptr,  # (B, NH) fp32
    s_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the normaliser's argument s_t, for the backward
    mt_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the max state m_t
    Cb_ptr,  # (B, NH, NC, DHQK, DHHV) fp32 out (STORE_BORDERS): the state before every chunk, for the backward
    nb_ptr,  # (B, NH, NC, DHQK) fp32 out (STORE_BORDERS)
    mb_ptr,  # (B, NH, NC) fp32 out (STORE_BORDERS)
    S,
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    STORE_LAST: tl.constexpr,
    NORMALIZE: tl.constexpr,
    STORE_STATS: tl.constexpr,
    STORE_BORDERS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_l = tl.arange(0, L)
    m_k, m_v = o_k < DHQK, o_v < DHHV
    # the state is carried transposed, C^T [BV, BK]: it is then the A operand of q C = (C^T q^T)^T, taken from
    # registers, and never a transposed accumulator as a dot operand (docs/hazards.md)
    m_vk = m_v[:, None] & m_k[None, :]
    o_vk = o_k[None, :] * DHHV + o_v[:, None]  # C^T's elements in C's (DHQK, DHHV) layout
    if HAS_STATE:
        b_CT = tl.load(C0_ptr + i_bh * DHQK * DHHV + o_vk, mask=m_vk, other=0.0).to(tl.float32)
        b_n = tl.load(n0_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_m = tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        b_CT = tl.zeros([BV, BK], dtype=tl.float32)
        b_n = tl.zeros([BK], dtype=tl.float32)
        b_m = tl.full([], 0.0, tl.float32)
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    v_ptr += i_bh * S * DHHV
    h_ptr += i_bh * S * DHHV
    NC = tl.cdiv(S, L)
    for i_c in range(0, NC):
        if STORE_BORDERS:
            i_bhc = i_bh * NC + i_c
            tl.store(Cb_ptr + i_bhc * DHQK * DHHV + o_vk, b_CT, mask=m_vk)
            if i_v == 0:
                tl.store(nb_ptr + i_bhc * DHQK + o_k, b_n, mask=m_k)
                tl.store(mb_ptr + i_bhc, b_m)
        o_t = i_c * L + o_l
        m_t = o_t < S
        b_lf, b_li = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_t, m_t)
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        # within the chunk: the parallel form, with the carried state as the initial-state column
        b_D, b_D0, b_mt = _chunk_decay_matrix(b_lf, b_li, b_m, o_l, SEGMENT_SUMS)
        b_P = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * scale * b_D  # [L, BK] @ [BK, L] -> [L, L]
        b_num = tl.dot(b_P.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [L, L] @ [L, BV] -> [L, BV]
        # (C^T q^T)^T: the register-resident state is the A operand. As the B operand (q @ C) Triton 3.6 gave
        # config-dependent wrong results on an H200 in bf16 (rel. error 1.6 at L=64, BV=32;
        # bench/logs/2026-11-29_H200_probe_fused_configs_state_b_operand.log)
        # the fp32 state as two tiles of the inputs' dtype (_parts_dot): a state rounded once to 16 bits every
        # 64 tokens gave bf16 h 1.5x the trusted kernel's error on an H100 (docs/hazards.md)
        b_qCT = _parts_dot(b_CT, tl.trans(b_q), DOT_PRECISION)  # [BV, BK] @ [BK, L]
        b_qC = tl.trans(b_qCT)  # [L, BV], added to the output only
        # q and k feed dots above: registers read them through loads of their own (docs/hazards.md)
        b_q32 = _for_registers(q_ptr + o_t[:, None] * DHQK + o_k[None, :], m_t[:, None] & m_k[None, :], b_q, b_v)
        b_qn = tl.sum(b_q32 * b_n[None, :], axis=1)  # [L]
        b_num += (b_D0 * scale)[:, None] * b_qC
        b_s = tl.sum(b_P, axis=1) + b_D0 * scale * b_qn
        b_h = _normalize(b_num, b_s, b_mt, eps, NORMALIZE)
        p_h = h_ptr + o_t[:, None] * DHHV + o_v[None, :]
        tl.store(p_h, b_h.to(h_ptr.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
        if STORE_STATS and i_v == 0:
            tl.store(s_ptr + i_bh * S + o_t, b_s, mask=m_t)
            tl.store(mt_ptr + i_bh * S + o_t, b_mt, mask=m_t)
        # carry the state across the chunk border
        b_decay, b_w, b_scale, b_m = _chunk_state_weights(b_lf, b_li, b_m)
        b_k32 = _for_registers(k_ptr + o_t[:, None] * DHQK + o_k[None, :], m_t[:, None] & m_k[None, :], b_k, b_v)
        b_kw = b_k32 * b_w[:, None]  # [L, BK]
        b_vkw = tl.dot(tl.trans(b_v), b_kw.to(b_v.dtype), input_precision=DOT_PRECISION)  # [BV, L] @ [L, BK]
        b_CT = b_decay * b_CT + b_scale * b_vkw
        b_n = b_decay * b_n + b_scale * tl.sum(b_kw, axis=0)
    if STORE_LAST:
        tl.store(CS_ptr + i_bh * DHQK * DHHV + o_vk, b_CT, mask=m_vk)
        if i_v == 0:
            tl.store(nS_ptr + i_bh * DHQK + o_k, b_n, mask=m_k)
            tl.store(mS_ptr + i_bh, b_m)
