# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        parallel_bw.py.j2
# template hash:   2545527605d52240
# parameters:      cell=exp
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""Parallel mLSTM backward (exp cell), exact (docs/math.md §6), tiled like flash attention: no chunk states.

The forward saves per token s_t and m_t (as for the chunkwise backward). Tiles of BT tokens serve as query and key
tiles; F_t - F_j is formed from partial sums of the gate logs as in the parallel forward (never as a difference of
two prefix sums). Kernels, in launch order:
  1. bw_prep_kernel (templates/_bw.py.j2): per token 1/den, ds, G (the max state's gradient), Fl (the floor's part).
  2. parallel_bw_chain_kernel (exp cell), one program per head: the max state's chain R over the whole sequence.
  3. parallel_bw_dq_kernel, grid (cdiv(DHQK, BK), NT, B * NH): dq of a query tile, walking its key tiles back to the
     first, and the initial-state column; the first DHQK tile's program also leaves the row sums of
     dlogD = dP * P (all, and before the tile), the within-tile part of df, and the block sums of dlogD.
  4. parallel_bw_dk_kernel, grid (cdiv(DHQK, BK), NT, B * NH) and parallel_bw_dv_kernel, grid
     (cdiv(DHHV, BV), NT, B * NH): dk, dv of a key tile, walking its query tiles forward, and the last state's
     terms; the first DHQK tile's program leaves the column sums of dlogD (all, and after the tile).
  5. parallel_bw_dstate_kernel, grid (cdiv(DHQK, BK), cdiv(DHHV, BV), B * NH): dC0, dn0 (with an initial state).
  6. parallel_bw_gates_kernel, one program per head: di, df and dm0 from those sums, walking the tiles in order:
       dlf_s = sum_{t >= s, j < s} dlogD[t, j] + sum_{j < s} u_j + sum_{t >= s} dD0_t + X
     where the first term is split by tiles into: within the tile (3.), rows of the tile against earlier tiles,
     columns of the tile against later tiles, and the block sums of later rows against earlier columns. Every part
     is a sum, none a difference of sums.
No dot operand is the transpose of a dot result or of a register tile (dk, dv formed transposed, q^T loaded):
Triton 3.4-3.7.0 miscompiles that on sm_90 (triton-lang/triton#6124); tests/test_kernel_hazards.py checks for it.
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
def bw_prep_kernel(
    h_ptr,  # (B, NH, S, DHHV) forward output
    dh_ptr,  # (B, NH, S, DHHV) its cotangent
    s_ptr,  # (B, NH, S) fp32 forward statistics: the normaliser's argument
    mt_ptr,  # (B, NH, S) fp32 the max state (exp cell)
    r_ptr,  # (B, NH, S) fp32 out: 1 / den
    ds_ptr,  # (B, NH, S) fp32 out: the gradient of s
    G_ptr,  # (B, NH, S) fp32 out: the gradient of the max state m_t (exp cell)
    Fl_ptr,  # (B, NH, S) fp32 out: -floor dfloor, the floor's part of the gradient of m_t (exp cell)
    S,
    eps,
    DHHV: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    eps = _fp32(eps)
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < S
    b_delta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(DHHV, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        o_tv = i_bh * S * DHHV + o_t[:, None] * DHHV + o_v[None, :]
        m_tv = m_t[:, None] & (o_v < DHHV)[None, :]
        b_h = tl.load(h_ptr + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_dh = tl.load(dh_ptr + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_delta += tl.sum(b_h * b_dh, axis=1)
    b_s = tl.load(s_ptr + i_bh * S + o_t, mask=m_t, other=0.0)
    b_mt = tl.load(mt_ptr + i_bh * S + o_t, mask=m_t, other=0.0)
    b_floor = tl.exp(-b_mt)
    b_den = tl.maximum(tl.abs(b_s), b_floor) + eps
    b_ds = tl.where(tl.abs(b_s) >= b_floor, -b_delta / b_den, 0.0)
    tl.store(G_ptr + i_bh * S + o_t, -eps * b_delta / b_den, mask=m_t)
    # floor delta / den with den = floor + eps, written so that floor = exp(-m) = inf (m < -88) gives 0, not inf/inf
    b_Fl = tl.where(tl.abs(b_s) >= b_floor, 0.0, b_delta / (1.0 + eps * tl.exp(b_mt)))
    tl.store(Fl_ptr + i_bh * S + o_t, b_Fl, mask=m_t)
    b_ds = tl.where(b_s > 0, b_ds, tl.where(b_s < 0, -b_ds, 0.0))  # times sign(s)
    tl.store(r_ptr + i_bh * S + o_t, 1.0 / b_den, mask=m_t)
    tl.store(ds_ptr + i_bh * S + o_t, b_ds, mask=m_t)


@triton.jit
def _compose_affine(a1, b1, a2, b2):
    """x -> a1 x + b1 followed by x -> a2 x + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _chain_tile(i_ptr, f_ptr, mt_ptr, G_ptr, R_ptr, tok0, t0, S, m_before, b_carry, L: tl.constexpr):
    """The max state's chain over tokens t0 .. t0 + L - 1 (those < S) of the row of S tokens from token tok0, walked
    back from the last:
    R_t = G_t + a_t R_{t+1}, a_t = [m_{t+1} came from m_t], with R of the token after the tile replaced by the carry
    (already multiplied by its a). A forward scan over reversed positions of the affine maps x -> a x + G. Stores R;
    returns the carry into the token before t0: R_{t0} where m_{t0} came from m_before (the max state before t0)."""
    o_l = tl.arange(0, L)
    o_p = t0 + (L - 1 - o_l)  # token at reversed position p
    m_p = o_p < S
    b_G = tl.load(G_ptr + tok0 + o_p, mask=m_p, other=0.0)
    o_n = o_p + 1  # the token after
    lf_n, li_n = _load_gates(i_ptr + tok0, f_ptr + tok0, o_n, o_n < S)
    m_here = tl.load(mt_ptr + tok0 + o_p, mask=m_p, other=0.0)
    b_a = tl.where((o_l == 0) | (o_n >= S), 1.0, tl.where(li_n <= lf_n + m_here, 1.0, 0.0))
    b_A, b_B = tl.associative_scan((b_a, b_G), 0, _compose_affine)
    b_R = b_A * b_carry + b_B
    tl.store(R_ptr + tok0 + o_p, b_R, mask=m_p)
    R_first = tl.sum(tl.where(o_l == L - 1, b_R, 0.0), axis=0)
    lf_f, li_f = _load_gates(i_ptr + tok0, f_ptr + tok0, t0 + o_l, o_l == 0)
    won = tl.sum(tl.where(o_l == 0, tl.where(li_f <= lf_f + m_before, 1.0, 0.0), 0.0), axis=0)
    return won * R_first


@triton.jit
def _qk_block(q_ptr, k_ptr, o_t, m_t, o_j, m_j, DHQK: tl.constexpr, LT: tl.constexpr, LJ: tl.constexpr,
              BK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """A = q k^T [LT, LJ] for query rows o_t and key rows o_j, over all of DHQK in tiles."""
    b_A = tl.zeros([LT, LJ], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k_ptr + o_j[:, None] * DHQK + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [LT, BK] @ [BK, LJ]
    return b_A


@triton.jit
def _dP_block(v_ptr, dh_ptr, o_t, m_t, o_j, m_j, b_r, b_ds, DHHV: tl.constexpr, LT: tl.constexpr, LJ: tl.constexpr,
              BV: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dP = dnum v^T + ds [LT, LJ] (dnum = r dh) for query rows o_t and key rows o_j, over all of DHHV in tiles."""
    b_dP = tl.zeros([LT, LJ], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(DHHV, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < DHHV
        b_v = tl.load(v_ptr + o_j[:, None] * DHHV + o_v[None, :], mask=m_j[:, None] & m_v[None, :], other=0.0)
        b_dh = tl.load(dh_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_dP += tl.dot(b_dh, tl.trans(b_v), input_precision=DOT_PRECISION)  # [LT, BV] @ [BV, LJ]
    # r factored out of the dot: dh and v enter it exactly (no rounding of dnum to 16 bits), and dnum v^T + ds,
    # which nearly cancels where the output is invariant to scaling q, is formed in fp32
    return b_dP * b_r[:, None] + b_ds[:, None]


@triton.jit
def _segments(lf_q, o_q, o_j, lf_k, b_G, DIAGONAL: tl.constexpr):
    """F_t - F_j for query rows o_q and key columns o_j: within one tile by a cumulative sum down the columns;
    across tiles as (F_t - F_{t0-1}) + b_G (the tiles in between) + (F_{j1-1} - F_j)."""
    if DIAGONAL:
        return tl.cumsum(tl.where(o_q[:, None] > o_j[None, :], lf_q[:, None], 0.0), axis=0)
    else:
        b_suffix = tl.cumsum(lf_k, axis=0, reverse=True) - lf_k
        return tl.cumsum(lf_q, axis=0)[:, None] + b_G + b_suffix[None, :]


@triton.jit
def _block(q_ptr, k_ptr, v_ptr, dh_ptr, o_q, m_q, o_j, m_j, b_seg, li_k, b_mt, b_r, b_ds, scale,
           DHQK: tl.constexpr, DHHV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           DOT_PRECISION: tl.constexpr):
    """P, dA = dP * D * scale and dlogD = dP * P of the block (query tile, key tile)."""
    b_logD = tl.where((o_q[:, None] >= o_j[None, :]) & m_j[None, :], b_seg + li_k[None, :], float("-inf"))
    b_D = tl.where(m_q[:, None], tl.exp(b_logD - b_mt[:, None]), 0.0)
    b_A = _qk_block(q_ptr, k_ptr, o_q, m_q, o_j, m_j, DHQK, BT, BT, BK, DOT_PRECISION)
    b_dP = _dP_block(v_ptr, dh_ptr, o_q, m_q, o_j, m_j, b_r, b_ds, DHHV, BT, BT, BV, DOT_PRECISION)
    b_P = b_A * scale * b_D
    return b_P, b_dP * scale * b_D, b_dP * b_P


@triton.jit
def _tile_stats(mt_ptr, r_ptr, ds_ptr, i_bh, o_t, m_t, S):
    """The forward's max state (0 for the sig cell), 1/den and ds of a tile's tokens."""
    b_mt = tl.load(mt_ptr + i_bh * S + o_t, mask=m_t, other=0.0)
    b_r = tl.load(r_ptr + i_bh * S + o_t, mask=m_t, other=0.0)
    b_ds = tl.load(ds_ptr + i_bh * S + o_t, mask=m_t, other=0.0)
    return b_mt, b_r, b_ds


@triton.jit
def parallel_bw_chain_kernel(
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    m0_ptr,  # (B, NH) initial max state (read when HAS_STATE)
    G_ptr,  # (B, NH, S) fp32 from the prep kernel
    T_ptr,  # (B, NH) fp32 the chain's start (read when HAS_LAST_GRAD)
    R_ptr,  # (B, NH, S) fp32 out
    S,
    NT,
    BT: tl.constexpr,
    HAS_STATE: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    if HAS_LAST_GRAD:
        b_carry = tl.load(T_ptr + i_bh)
    else:
        b_carry = tl.full([], 0.0, tl.float32)
    if HAS_STATE:
        m_first = tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        m_first = 0.0
    for it in range(0, NT):
        t0 = (NT - 1 - it) * BT
        m_before = tl.where(t0 > 0, tl.load(mt_ptr + i_bh * S + tl.maximum(t0 - 1, 0)), m_first)
        b_carry = _chain_tile(i_ptr, f_ptr, mt_ptr, G_ptr, R_ptr, i_bh * S, t0, S, m_before, b_carry, BT)


@triton.jit
def parallel_bw_dq_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    m0_ptr,  # (B, NH) initial max state (HAS_STATE)
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    C0_ptr,  # (B, NH, DHQK, DHHV) initial state (HAS_STATE)
    n0_ptr,  # (B, NH, DHQK)
    dq_ptr,  # (B, NH, S, DHQK) out
    rowall_ptr,  # (B, NH, S) fp32 out: sum_j dlogD[t, j] over every key tile
    rowbefore_ptr,  # (B, NH, S) fp32 out: the same over the key tiles before t's tile
    diag_ptr,  # (B, NH, S) fp32 out: sum_{t >= s, j < s} dlogD[t, j] with t, j in s's tile
    bs_ptr,  # (B, NH, NT, NT) fp32 out: [T, J] the sum of dlogD over the block, for J < T
    part_ptr,  # (cdiv(DHQK, BK), B, NH, S) fp32 out: this DHQK tile's q . dq_inter (the initial state's column)
    S,
    NT,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    scale = _fp32(scale)
    i_k, i_q, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_bh = tl.num_programs(2).to(tl.int64)
    t0 = i_q * BT
    o_q = t0 + tl.arange(0, BT)
    m_q = o_q < S
    o_k = i_k * BK + tl.arange(0, BK)
    m_qk = m_q[:, None] & (o_k < DHQK)[None, :]
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    v_ptr += i_bh * S * DHHV
    dh_ptr += i_bh * S * DHHV
    lf_q, li_q = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_q, m_q)
    b_mt, b_r, b_ds = _tile_stats(mt_ptr, r_ptr, ds_ptr, i_bh, o_q, m_q, S)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_rowall = tl.zeros([BT], dtype=tl.float32)
    b_rowbefore = tl.zeros([BT], dtype=tl.float32)
    b_G = tl.full([], 0.0, tl.float32)  # F_{t0-1} - F_{j1-1} for a key tile [j0, j1) before t0
    for it in range(0, i_q + 1):
        i_j = i_q - it
        o_j = i_j * BT + tl.arange(0, BT)
        m_j = o_j < S
        lf_k, li_k = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_j, m_j)
        if it == 0:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, True)
        else:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, False)
            b_G += tl.sum(lf_k, axis=0)
        b_P, b_dA, b_E = _block(q_ptr, k_ptr, v_ptr, dh_ptr, o_q, m_q, o_j, m_j, b_seg, li_k, b_mt, b_r, b_ds, scale,
                                DHQK, DHHV, BT, BK, BV, DOT_PRECISION)
        b_k = tl.load(k_ptr + o_j[:, None] * DHQK + o_k[None, :], mask=m_j[:, None] & (o_k < DHQK)[None, :],
                      other=0.0)
        b_dq += tl.dot(b_dA.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)  # [BT, BT] @ [BT, BK]
        if i_k == 0:
            b_rows = tl.sum(b_E, axis=1)
            b_rowall += b_rows
            if it == 0:
                o_l = tl.arange(0, BT)
                b_before = tl.cumsum(b_E, axis=1) - b_E  # [t, s]: sum_{j < s} dlogD[t, j] within the tile
                b_diag = tl.sum(tl.where(o_l[:, None] >= o_l[None, :], b_before, 0.0), axis=0)
                tl.store(diag_ptr + i_bh * S + o_q, b_diag, mask=m_q)
            else:
                b_rowbefore += b_rows
                tl.store(bs_ptr + (i_bh * NT + i_q) * NT + i_j, tl.sum(b_E))
    # the initial state's column: log D0[t] = F_t + m0 (F_t = (F_t - F_{t0-1}) + G now that G = F_{t0-1})
    b_dD0 = tl.zeros([BT], dtype=tl.float32)
    if HAS_STATE:
        b_logD0 = tl.cumsum(lf_q, axis=0) + b_G + tl.load(m0_ptr + i_bh).to(tl.float32)
        b_D0 = tl.where(m_q, tl.exp(b_logD0 - b_mt), 0.0)
        b_dqi = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(DHHV, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_v = o_v < DHHV
            b_dh = tl.load(dh_ptr + o_q[:, None] * DHHV + o_v[None, :], mask=m_q[:, None] & m_v[None, :], other=0.0)
            p_C = C0_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
            b_C = tl.load(p_C, mask=(o_k < DHQK)[:, None] & m_v[None, :], other=0.0)
            b_dqi += tl.dot(b_dh, tl.trans(b_C.to(b_dh.dtype)), input_precision=DOT_PRECISION)  # [BT, BV] @ [BV, BK]
        b_n = tl.load(n0_ptr + i_bh * DHQK + o_k, mask=o_k < DHQK, other=0.0).to(tl.float32)
        b_dqi = (scale * b_D0)[:, None] * (b_r[:, None] * b_dqi + b_ds[:, None] * b_n[None, :])
        b_dq += b_dqi
        b_q = tl.load(q_ptr + o_q[:, None] * DHQK + o_k[None, :], mask=m_qk, other=0.0)
        b_dD0 = tl.sum(b_q.to(tl.float32) * b_dqi, axis=1)
    tl.store(part_ptr + (i_k * n_bh + i_bh) * S + o_q, b_dD0, mask=m_q)
    tl.store(dq_ptr + i_bh * S * DHQK + o_q[:, None] * DHQK + o_k[None, :], b_dq.to(dq_ptr.dtype.element_ty),
             mask=m_qk)
    if i_k == 0:
        tl.store(rowall_ptr + i_bh * S + o_q, b_rowall, mask=m_q)
        tl.store(rowbefore_ptr + i_bh * S + o_q, b_rowbefore, mask=m_q)


@triton.jit
def _key_tile_walk_weights(i_bh, m_j, lf_k, li_k, b_G, mS_ptr):
    """w_j = exp(F_S - F_j + li_j - m_S): the weight of key token j in the last state, once b_G holds the gate logs
    of every tile after the key tile."""
    b_suffix = tl.cumsum(lf_k, axis=0, reverse=True) - lf_k
    b_mS = tl.load(mS_ptr + i_bh)
    return tl.where(m_j, tl.exp(b_suffix + b_G + li_k - b_mS), 0.0)


@triton.jit
def parallel_bw_dk_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    dCS_ptr,  # (B, NH, DHQK, DHHV) fp32 cotangent of the last state (HAS_LAST_GRAD)
    dnS_ptr,  # (B, NH, DHQK) fp32
    mS_ptr,  # (B, NH) fp32 the last state's max state
    dk_ptr,  # (B, NH, S, DHQK) out
    colall_ptr,  # (B, NH, S) fp32 out: sum_t dlogD[t, j] over every query tile
    colafter_ptr,  # (B, NH, S) fp32 out: the same over the query tiles after j's tile
    part_ptr,  # (cdiv(DHQK, BK), B, NH, S) fp32 out: this DHQK tile's k . dk_trans (the last state's row)
    S,
    NT,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    scale = _fp32(scale)
    i_k, i_j, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_bh = tl.num_programs(2).to(tl.int64)
    o_j = i_j * BT + tl.arange(0, BT)
    m_j = o_j < S
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < DHQK
    m_jk = m_j[:, None] & m_k[None, :]
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    v_ptr += i_bh * S * DHHV
    dh_ptr += i_bh * S * DHHV
    lf_k, li_k = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_j, m_j)
    b_dkT = tl.zeros([BK, BT], dtype=tl.float32)
    b_colall = tl.zeros([BT], dtype=tl.float32)
    b_colafter = tl.zeros([BT], dtype=tl.float32)
    b_G = tl.full([], 0.0, tl.float32)  # the gate logs of the tiles between the key tile and the query tile
    for it in range(0, NT - i_j):
        i_q = i_j + it
        o_q = i_q * BT + tl.arange(0, BT)
        m_q = o_q < S
        lf_q, li_q = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_q, m_q)
        b_mt, b_r, b_ds = _tile_stats(mt_ptr, r_ptr, ds_ptr, i_bh, o_q, m_q, S)
        if it == 0:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, True)
        else:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, False)
            b_G += tl.sum(lf_q, axis=0)
        b_P, b_dA, b_E = _block(q_ptr, k_ptr, v_ptr, dh_ptr, o_q, m_q, o_j, m_j, b_seg, li_k, b_mt, b_r, b_ds, scale,
                                DHQK, DHHV, BT, BK, BV, DOT_PRECISION)
        b_q = tl.load(q_ptr + o_q[:, None] * DHQK + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
        # transposed output, not a transposed dot result as operand: miscompiled on sm_90 (triton-lang/triton#6124)
        b_dkT += tl.dot(tl.trans(b_q), b_dA.to(b_q.dtype),
                        input_precision=DOT_PRECISION)  # [BK, BT] @ [BT, BT] -> [BK, BT]
        if i_k == 0:
            b_cols = tl.sum(b_E, axis=0)
            b_colall += b_cols
            if it > 0:
                b_colafter += b_cols
    b_u = tl.zeros([BT], dtype=tl.float32)
    if HAS_LAST_GRAD:
        b_w = _key_tile_walk_weights(i_bh, m_j, lf_k, li_k, b_G, mS_ptr)
        b_dktT = tl.zeros([BK, BT], dtype=tl.float32)
        for i_v in range(0, tl.cdiv(DHHV, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_v = o_v < DHHV
            b_v = tl.load(v_ptr + o_j[:, None] * DHHV + o_v[None, :], mask=m_j[:, None] & m_v[None, :], other=0.0)
            b_dC = tl.load(dCS_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :],
                           mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_dktT += tl.dot(b_dC.to(b_v.dtype), tl.trans(b_v),
                             input_precision=DOT_PRECISION)  # [BK, BV] @ [BV, BT] -> [BK, BT]
        b_dn = tl.load(dnS_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0)
        b_dktT = b_w[None, :] * (b_dktT + b_dn[:, None])
        b_dkT += b_dktT
        b_k = tl.load(k_ptr + o_j[:, None] * DHQK + o_k[None, :], mask=m_jk, other=0.0)
        b_u = tl.sum(tl.trans(b_k).to(tl.float32) * b_dktT, axis=0)
    tl.store(part_ptr + (i_k * n_bh + i_bh) * S + o_j, b_u, mask=m_j)
    tl.store(dk_ptr + i_bh * S * DHQK + o_j[None, :] * DHQK + o_k[:, None], b_dkT.to(dk_ptr.dtype.element_ty),
             mask=m_k[:, None] & m_j[None, :])
    if i_k == 0:
        tl.store(colall_ptr + i_bh * S + o_j, b_colall, mask=m_j)
        tl.store(colafter_ptr + i_bh * S + o_j, b_colafter, mask=m_j)


@triton.jit
def parallel_bw_dv_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    k_ptr,  # (B, NH, S, DHQK)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    r_ptr,  # (B, NH, S) fp32
    dCS_ptr,  # (B, NH, DHQK, DHHV) fp32 cotangent of the last state (HAS_LAST_GRAD)
    mS_ptr,  # (B, NH) fp32 the last state's max state
    dv_ptr,  # (B, NH, S, DHHV) out
    S,
    NT,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    scale = _fp32(scale)
    i_v, i_j, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_j = i_j * BT + tl.arange(0, BT)
    m_j = o_j < S
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DHHV
    q_ptr += i_bh * S * DHQK
    k_ptr += i_bh * S * DHQK
    dh_ptr += i_bh * S * DHHV
    lf_k, li_k = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_j, m_j)
    b_dvT = tl.zeros([BV, BT], dtype=tl.float32)
    b_G = tl.full([], 0.0, tl.float32)
    for it in range(0, NT - i_j):
        i_q = i_j + it
        o_q = i_q * BT + tl.arange(0, BT)
        m_q = o_q < S
        lf_q, li_q = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_q, m_q)
        b_mt = tl.load(mt_ptr + i_bh * S + o_q, mask=m_q, other=0.0)
        b_r = tl.load(r_ptr + i_bh * S + o_q, mask=m_q, other=0.0)
        if it == 0:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, True)
        else:
            b_seg = _segments(lf_q, o_q, o_j, lf_k, b_G, False)
            b_G += tl.sum(lf_q, axis=0)
        b_logD = tl.where((o_q[:, None] >= o_j[None, :]) & m_j[None, :], b_seg + li_k[None, :], float("-inf"))
        b_D = tl.where(m_q[:, None], tl.exp(b_logD - b_mt[:, None]), 0.0)
        b_P = _qk_block(q_ptr, k_ptr, o_q, m_q, o_j, m_j, DHQK, BT, BT, BK, DOT_PRECISION) * scale * b_D
        b_dh = tl.load(dh_ptr + o_q[:, None] * DHHV + o_v[None, :], mask=m_q[:, None] & m_v[None, :], other=0.0)
        # dv^T += dh^T (P r) (P^T dnum = (P r)^T dh, r the per-row 1/den)
        # transposed output, not a transposed dot result as operand: miscompiled on sm_90 (triton-lang/triton#6124)
        b_dvT += tl.dot(tl.trans(b_dh), (b_P * b_r[:, None]).to(b_dh.dtype),
                        input_precision=DOT_PRECISION)  # [BV, BT] @ [BT, BT] -> [BV, BT]
    if HAS_LAST_GRAD:
        b_w = _key_tile_walk_weights(i_bh, m_j, lf_k, li_k, b_G, mS_ptr)
        b_kdCT = tl.zeros([BV, BT], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(DHQK, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < DHQK
            b_k = tl.load(k_ptr + o_j[:, None] * DHQK + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
            b_dC = tl.load(dCS_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :],
                           mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_kdCT += tl.dot(tl.trans(b_dC.to(b_k.dtype)), tl.trans(b_k),
                             input_precision=DOT_PRECISION)  # [BV, BK] @ [BK, BT] -> [BV, BT]
        b_dvT += b_w[None, :] * b_kdCT
    p_dv = dv_ptr + i_bh * S * DHHV + o_j[None, :] * DHHV + o_v[:, None]
    tl.store(p_dv, b_dvT.to(dv_ptr.dtype.element_ty), mask=m_v[:, None] & m_j[None, :])


@triton.jit
def parallel_bw_dstate_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    m0_ptr,  # (B, NH) initial max state
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    dCS_ptr,  # (B, NH, DHQK, DHHV) fp32 cotangent of the last state (HAS_LAST_GRAD)
    dnS_ptr,  # (B, NH, DHQK) fp32
    mS_ptr,  # (B, NH) fp32 the last state's max state
    dC0_ptr,  # (B, NH, DHQK, DHHV) fp32 out
    dn0_ptr,  # (B, NH, DHQK) fp32 out
    S,
    NT,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dC0 = scale sum_t D0_t q_t (r_t dh_t)^T + decay dC_S, dn0 likewise with ds; decay = exp(F_S + m0 - m_S)."""
    scale = _fp32(scale)
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DHQK, o_v < DHHV
    m_kv = m_k[:, None] & m_v[None, :]
    b_m0 = tl.load(m0_ptr + i_bh).to(tl.float32)
    b_dC = tl.zeros([BK, BV], dtype=tl.float32)
    b_dn = tl.zeros([BK], dtype=tl.float32)
    b_F = tl.full([], 0.0, tl.float32)  # F_{t0-1}
    for i_q in range(0, NT):
        o_q = i_q * BT + tl.arange(0, BT)
        m_q = o_q < S
        lf_q, li_q = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_q, m_q)
        b_mt, b_r, b_ds = _tile_stats(mt_ptr, r_ptr, ds_ptr, i_bh, o_q, m_q, S)
        b_D0 = tl.where(m_q, tl.exp(tl.cumsum(lf_q, axis=0) + b_F + b_m0 - b_mt), 0.0)
        b_F += tl.sum(lf_q, axis=0)
        # q^T loaded as such, not a transposed register tile as operand: sm_90 hazard (triton-lang/triton#6124)
        b_qT = tl.load(q_ptr + i_bh * S * DHQK + o_q[None, :] * DHQK + o_k[:, None],
                       mask=m_k[:, None] & m_q[None, :], other=0.0)
        b_dh = tl.load(dh_ptr + i_bh * S * DHHV + o_q[:, None] * DHHV + o_v[None, :],
                       mask=m_q[:, None] & m_v[None, :], other=0.0)
        b_qwT = b_qT.to(tl.float32) * (scale * b_D0)[None, :]
        b_dC += tl.dot((b_qwT * b_r[None, :]).to(b_qT.dtype), b_dh,
                       input_precision=DOT_PRECISION)  # [BK, BT] @ [BT, BV] -> [BK, BV]
        b_dn += tl.sum(b_qwT * b_ds[None, :], axis=1)
    if HAS_LAST_GRAD:
        b_decay = tl.exp(b_F + b_m0 - tl.load(mS_ptr + i_bh))
        b_dC += b_decay * tl.load(dCS_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :], mask=m_kv,
                                  other=0.0)
        b_dn += b_decay * tl.load(dnS_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0)
    tl.store(dC0_ptr + i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :], b_dC, mask=m_kv)
    if i_v == 0:
        tl.store(dn0_ptr + i_bh * DHQK + o_k, b_dn, mask=m_k)


@triton.jit
def parallel_bw_gates_kernel(
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    m0_ptr,  # (B, NH) (HAS_STATE)
    R_ptr,  # (B, NH, S) fp32 the max state's chain (exp cell)
    Fl_ptr,  # (B, NH, S) fp32 the floor's part of the max state's gradient (exp cell)
    rowall_ptr,  # (B, NH, S) fp32 from the dq kernel
    rowbefore_ptr,  # (B, NH, S) fp32
    diag_ptr,  # (B, NH, S) fp32
    bs_ptr,  # (B, NH, NT, NT) fp32
    colall_ptr,  # (B, NH, S) fp32 from the dk kernel
    colafter_ptr,  # (B, NH, S) fp32
    partq_ptr,  # (NKT, B, NH, S) fp32 q . dq_inter per DHQK tile
    partk_ptr,  # (NKT, B, NH, S) fp32 k . dk_trans per DHQK tile
    X_ptr,  # (B, NH) fp32 decay (<C0, dC_S> + <n0, dn_S>)
    dmS_ptr,  # (B, NH) fp32 the cotangent of the last state's m (HAS_LAST_GRAD)
    di_ptr,  # (B, NH, S) fp32 out
    df_ptr,  # (B, NH, S) fp32 out
    dm0_ptr,  # (B, NH) fp32 out (exp cell, HAS_STATE)
    S,
    NT,
    NKT,
    BT: tl.constexpr,
    NTP: tl.constexpr,  # NT padded to a power of two
    HAS_STATE: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    n_bh = tl.num_programs(0).to(tl.int64)
    o_l = tl.arange(0, BT)
    o_T = tl.arange(0, NTP)
    b_X = tl.load(X_ptr + i_bh)
    # pass 1, last tile first: sum_{t >= s} dD0_t + X into df
    b_carry = tl.full([], 0.0, tl.float32)
    for it in range(0, NT):
        o_s = (NT - 1 - it) * BT + o_l
        m_s = o_s < S
        b_dD0 = tl.zeros([BT], dtype=tl.float32)
        for i_k in range(0, NKT):
            b_dD0 += tl.load(partq_ptr + (i_k * n_bh + i_bh) * S + o_s, mask=m_s, other=0.0)
        tl.store(df_ptr + i_bh * S + o_s, tl.cumsum(b_dD0, axis=0, reverse=True) + b_carry + b_X, mask=m_s)
        b_carry += tl.sum(b_dD0, axis=0)
    tl.debug_barrier()  # pass 2 reads what pass 1 stored (df) from other threads
    # pass 2, first tile first: everything else
    b_upre = tl.full([], 0.0, tl.float32)  # sum of u over the tiles before
    b_rowpref = tl.zeros([NTP], dtype=tl.float32)  # [T]: sum of the block sums of row tile T over column tiles < sigma
    b_dm0 = tl.full([], 0.0, tl.float32)
    alive = tl.full([], 1, tl.int32)  # the max state so far came from m0
    if HAS_STATE:
        b_mprev0 = tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        b_mprev0 = 0.0
    for sigma in range(0, NT):
        o_s = sigma * BT + o_l
        m_s = o_s < S
        if sigma > 0:
            p_col = bs_ptr + (i_bh * NT + o_T) * NT + (sigma - 1)
            b_rowpref += tl.load(p_col, mask=(o_T > sigma - 1) & (o_T < NT), other=0.0)
        b_W = tl.sum(tl.where((o_T > sigma) & (o_T < NT), b_rowpref, 0.0), axis=0)
        b_u = tl.zeros([BT], dtype=tl.float32)
        for i_k in range(0, NKT):
            b_u += tl.load(partk_ptr + (i_k * n_bh + i_bh) * S + o_s, mask=m_s, other=0.0)
        b_rowbefore = tl.load(rowbefore_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_colafter = tl.load(colafter_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_dlf = tl.load(df_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_dlf += tl.load(diag_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_dlf += tl.cumsum(b_rowbefore, axis=0, reverse=True)  # rows t >= s of the tile, columns before the tile
        b_dlf += tl.cumsum(b_colafter, axis=0) - b_colafter  # columns j < s of the tile, rows after the tile
        b_dlf += b_W + b_upre + (tl.cumsum(b_u, axis=0) - b_u)
        b_dli = tl.load(colall_ptr + i_bh * S + o_s, mask=m_s, other=0.0) + b_u
        lf_s, li_s = _load_gates(i_ptr + i_bh * S, f_ptr + i_bh * S, o_s, m_s)
        b_mp = tl.load(mt_ptr + i_bh * S + o_s - 1, mask=m_s & (o_s > 0), other=0.0)
        b_mp = tl.where(o_s == 0, b_mprev0, b_mp)
        forget_won = li_s <= lf_s + b_mp
        b_R = tl.load(R_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_dli += tl.where(forget_won, 0.0, b_R)
        b_dlf += tl.where(forget_won, b_R, 0.0)
        b_di = b_dli
        # dm0, routed as in the native backward: rows whose max came from m0 give -sum_j dlogD[t, j] + Fl_t, the
        # others dD0_t (= q_t . dq_inter_t)
        b_dD0 = tl.zeros([BT], dtype=tl.float32)
        for i_k in range(0, NKT):
            b_dD0 += tl.load(partq_ptr + (i_k * n_bh + i_bh) * S + o_s, mask=m_s, other=0.0)
        b_alive = ((tl.cumsum(tl.where(forget_won | (o_s >= S), 0, 1), axis=0) == 0) & (alive > 0)) & m_s
        b_Fl = tl.load(Fl_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_rowall = tl.load(rowall_ptr + i_bh * S + o_s, mask=m_s, other=0.0)
        b_dm0 += tl.sum(tl.where(b_alive, b_Fl - b_rowall, tl.where(m_s, b_dD0, 0.0)), axis=0)
        alive = tl.where(tl.sum(tl.where(m_s & ~b_alive, 1, 0), axis=0) > 0, 0, alive)
        b_df = b_dlf * tl.sigmoid(-tl.load(f_ptr + i_bh * S + o_s, mask=m_s, other=0.0).to(tl.float32))
        tl.store(di_ptr + i_bh * S + o_s, b_di, mask=m_s)
        tl.store(df_ptr + i_bh * S + o_s, b_df, mask=m_s)
        b_upre += tl.sum(b_u, axis=0)
    if HAS_STATE:
        # the last row: the last state's weights -sum_j u_j and its m's cotangent if its max came from m0, else X
        if HAS_LAST_GRAD:
            b_last = tl.load(dmS_ptr + i_bh) - b_upre
        else:
            b_last = -b_upre
        b_dm0 += tl.where(alive > 0, b_last, b_X)
        tl.store(dm0_ptr + i_bh, b_dm0)
