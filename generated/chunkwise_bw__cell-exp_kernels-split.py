# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        chunkwise_bw.py.j2
# template hash:   90b4311695ffe674
# parameters:      cell=exp, kernels=split
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""Chunkwise mLSTM backward (exp cell), exact (docs/math.md §6), "split" within-chunk kernels.

The forward saves, per token, s_t (the normaliser's argument, n_t^T q_t / sqrt(d) in stabilised units) and m_t (the
max state; 0 for the sig cell), besides h. The backward of chunks of L tokens is then (the derivation is in
autotune/launch/chunkwise_bw.py):
  1. bw_prep_kernel (templates/_bw.py.j2), per token: delta = dh . h, r = 1/den, ds (the gradient of s),
     G = -eps delta / den (the gradient of m_t: it enters h only through eps);
     grid (cdiv(S, BT), B * NH).
  2. chunkwise_bw_dstate_kernel, the reverse recurrence over chunk borders: dC_c = decay_c dC_{c+1} +
     scale sum_t D0_t q_t (r_t dh_t)^T (n likewise), storing the gradient of the state after every chunk. Program
     (0, 0) of each head also runs the max state's reverse chain R_t = G_t + [m_{t+1} came from m_t] R_{t+1};
     grid (cdiv(DHQK, BK), cdiv(DHHV, BV), B * NH). With the launch parameter "dstate_gates": "pre",
     bw_dstate_weights_kernel first computes every chunk's weights D0 scale r, D0 scale ds and decay in parallel
     (PRE_WEIGHTS); "inline" computes them in the sequential loop.
  3. chunkwise_bw_dqk_kernel (grid (cdiv(DHQK, BK), NC, B * NH)) and chunkwise_bw_dv_kernel (grid
     (cdiv(DHHV, BV), NC, B * NH)): more programs, each reading its own tile of the chunk's states once. A dq, dk
     program forms dP in its one pass over v and dh, and leaves its key tile's share of every vector the gate
     gradients need in a partial buffer; a dv program recomputes q k^T. chunkwise_bw_gates_kernel (grid
     (NC, B * NH)) sums the partials and forms di, df.
Gate gradients never subtract two long cumulative sums: within a chunk they are sums over the masked [L, L]
matrix of dlogD = dP * P and reverse sums of non-cancelling terms. For 16-bit inputs (SEGMENT_SUMS off), two
chunk-local ones: F_t - F_j as a difference of prefix sums and dlf's share of dlogD as a difference of two [L]
scans, as the forward does (their rounding is far below the inputs'); fp32 inputs keep [L, L] segment sums. Every
dot takes the inputs' dtype (tensor cores for bf16/fp16) and accumulates in fp32; the recurrences run in fp32.
No dot operand is the transpose of a dot result (dk and dv are formed transposed, dk^T = q^T dA, dv^T = dh^T (P r)):
Triton 3.4-3.7.0 miscompiles that on sm_90 (triton-lang/triton#6124); tests/test_kernel_hazards.py checks for it.
PACKED (constexpr): the rows are the documents of one packed sequence of S tokens per head (cu_seqlens, batch size 1)
instead of a batch's rows, as in the two-pass forward whose states the backward reads: the chunks of a document take
consecutive slots of its head's NC (_packed_row, _packed_chunk_row); the per-row tensors (last states and their
cotangents, initial states and their gradients) have a row per (document, head).
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
def _border_m(mb_ptr, mS_ptr, slot, c, NC, row):
    """(m before chunk c of a row of NC chunks, m after it), in the frames of the states the backward pairs them with:
    the states before every chunk (mb, chunk c's at ``slot``, the row's chunks in consecutive slots, from the same
    recurrence as those states) and the row's last state (mS[row]) after its last chunk."""
    b_mc = tl.load(mb_ptr + slot)
    b_mn = tl.load(mb_ptr + slot + tl.where(c + 1 < NC, 1, 0))
    return b_mc, tl.where(c + 1 < NC, b_mn, tl.load(mS_ptr + row))


@triton.jit
def _dstate_weights(i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, S, slot, c, NC, row, scale,
                    L: tl.constexpr):  # fmt: skip
    """What chunk c's tokens weigh in the reverse recurrence, none of it depending on the gradient carried:
    (D0 scale r, D0 scale ds, decay), D0_t the weight of the state before the chunk in output t, decay that of the
    state before the chunk in the state after it. 0 past S. The row: S tokens from token tok0, NC chunks, chunk c's
    state at ``slot`` (_border_m)."""
    o_t = c * L + tl.arange(0, L)
    m_t = o_t < S
    b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
    b_mc, b_mn = _border_m(mb_ptr, mS_ptr, slot, c, NC, row)
    b_mt = tl.load(mt_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_D0 = tl.where(m_t, tl.exp(tl.cumsum(b_lf, axis=0) + b_mc - b_mt), 0.0)
    b_decay = tl.exp(tl.sum(b_lf, axis=0) + b_mc - b_mn)
    b_r = tl.load(r_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_ds = tl.load(ds_ptr + tok0 + o_t, mask=m_t, other=0.0)
    return b_D0 * scale * b_r, b_D0 * scale * b_ds, b_decay


@triton.jit
def bw_dstate_weights_kernel(
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    mt_ptr,  # (B, NH, S) fp32 forward max state (exp cell)
    mb_ptr,  # (B, NH, NC) fp32 max state before each chunk (exp cell)
    mS_ptr,  # (B, NH) fp32 max state after the last chunk (exp cell)
    r_ptr,  # (B, NH, S) fp32 from the prep kernel
    ds_ptr,  # (B, NH, S) fp32
    wr_ptr,  # (B, NH, NC * L) fp32 out: D0 scale r per token (0 past S)
    wds_ptr,  # (B, NH, NC * L) fp32 out: D0 scale ds
    dec_ptr,  # (B, NH, NC) fp32 out: decay per chunk
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    NH,
    scale,
    L: tl.constexpr,
    PACKED: tl.constexpr,
):
    """_dstate_weights for every chunk at once (grid (NC, B * NH)), so that the reverse recurrence's sequential loop
    keeps only loads and one product per chunk (the launch parameter "dstate_gates": "pre"; the forward's states
    kernel gained 15-31% from the same split, tuning_db/reports/NOTES.md)."""
    scale = _fp32(scale)
    i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    tok0, S_r, c, NC_r, row = _packed_chunk_row(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, NH, PACKED)
    slot = i_bh * NC + i_c
    b_wr, b_wds, b_decay = _dstate_weights(i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, S_r, slot, c,
                                           NC_r, row, scale, L)  # fmt: skip
    o_w = slot * L + tl.arange(0, L)
    tl.store(wr_ptr + o_w, b_wr)
    tl.store(wds_ptr + o_w, b_wds)
    tl.store(dec_ptr + slot, b_decay)


@triton.jit
def chunkwise_bw_dstate_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    dh_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    mt_ptr,  # (B, NH, S) fp32 forward max state (exp cell)
    mb_ptr,  # (B, NH, NC) fp32 max state before each chunk (exp cell)
    mS_ptr,  # (B, NH) fp32 max state after the last chunk (exp cell)
    r_ptr,  # (B, NH, S) fp32 from the prep kernel
    ds_ptr,  # (B, NH, S) fp32
    G_ptr,  # (B, NH, S) fp32
    dCS_ptr,  # (B, NH, DHQK, DHHV) cotangent of the last state (read when HAS_LAST_GRAD)
    dnS_ptr,  # (B, NH, DHQK)
    T_ptr,  # (B, NH) fp32: dm_S - <C_S, dC_S> - <n_S, dn_S>, the max-state chain's start (exp, HAS_LAST_GRAD)
    dCa_ptr,  # (B, NH, NC, DHQK, DHHV) out: gradient of the state after each chunk (fp32 or the inputs' dtype;
    #            with DC_PLANES (B, NH, NC, 2, DHQK, DHHV), its planes in the inputs' dtype; with DC_TMA a tensor
    #            descriptor of it as (B * NH * NC, DHQK, DHHV) in blocks [1, BK, BV]; DC_FP32: in fp32)
    dna_ptr,  # (B, NH, NC, DHQK) fp32 out
    R_ptr,  # (B, NH, S) fp32 out: the max-state chain R_t (exp cell)
    dC0_ptr,  # (B, NH, DHQK, DHHV) fp32 out: gradient of the initial state (written when HAS_STATE)
    dn0_ptr,  # (B, NH, DHQK) fp32 out
    wr_ptr,  # (B, NH, NC * L) fp32 from bw_dstate_weights_kernel (read when PRE_WEIGHTS)
    wds_ptr,  # (B, NH, NC * L) fp32
    dec_ptr,  # (B, NH, NC) fp32
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    S,
    NC,
    NH,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    HAS_LAST_GRAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PRE_WEIGHTS: tl.constexpr,
    PACKED: tl.constexpr,
    DC_PLANES: tl.constexpr,
    DC_TMA: tl.constexpr,
    DC_FP32: tl.constexpr,
):
    scale = _fp32(scale)
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    tok0, S_r, slot0, NC_r = _packed_row(i_bh, S, NC, cu_ptr, cs_ptr, NH, PACKED)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_l = tl.arange(0, L)
    m_k, m_v = o_k < DHQK, o_v < DHHV
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * DHHV + o_v[None, :]
    if HAS_LAST_GRAD:
        b_dC = tl.load(dCS_ptr + i_bh * DHQK * DHHV + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_dn = tl.load(dnS_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_carry = tl.load(T_ptr + i_bh)
    else:
        b_dC = tl.zeros([BK, BV], dtype=tl.float32)
        b_dn = tl.zeros([BK], dtype=tl.float32)
        b_carry = tl.full([], 0.0, tl.float32)
    chain = (i_k == 0) & (i_v == 0)  # one program per head runs the max state's chain
    q_ptr += tok0 * DHQK
    dh_ptr += tok0 * DHHV
    for it in range(0, NC_r):
        i_c = NC_r - 1 - it
        i_bhc = slot0 + i_c
        if DC_PLANES:
            _store_planes(dCa_ptr + i_bhc * 2 * DHQK * DHHV + o_kv, b_dC, m_kv, DHQK * DHHV)
        elif DC_TMA:  # the descriptor's bounds clip a tile past DHQK or DHHV, as the masks do
            dCa_ptr.store([i_bhc.to(tl.int32), i_k * BK, i_v * BV], tl.reshape(b_dC.to(dCa_ptr.dtype), [1, BK, BV]))
        else:
            tl.store(dCa_ptr + i_bhc * DHQK * DHHV + o_kv, b_dC.to(dCa_ptr.dtype.element_ty), mask=m_kv)
        if i_v == 0:
            tl.store(dna_ptr + i_bhc * DHQK + o_k, b_dn, mask=m_k)
        o_t = i_c * L + o_l
        m_t = o_t < S_r
        # the state before the chunk reaches output t with weight D0_t and the state after the chunk with decay
        if PRE_WEIGHTS:
            b_wr = tl.load(wr_ptr + i_bhc * L + o_l)
            b_wds = tl.load(wds_ptr + i_bhc * L + o_l)
            b_decay = tl.load(dec_ptr + i_bhc)
        else:
            b_wr, b_wds, b_decay = _dstate_weights(i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, S_r,
                                                   i_bhc, i_c, NC_r, i_bh, scale, L)  # fmt: skip
        # q^T loaded as such (no transposed copy in registers), weighted per token; dnum = r dh: r goes with q, so
        # that dh enters the dot exactly (a scaled dh in 16 bits could overflow under fp16 loss scaling)
        b_qT = tl.load(q_ptr + o_t[None, :] * DHQK + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_dh = tl.load(dh_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_qwT = b_qT.to(tl.float32) * b_wr[None, :]  # [BK, L]
        if DC_PLANES or DC_FP32:  # fp32 gradients kept: the weighted q^T in two parts
            b_dC = b_decay * b_dC + _parts_dot(b_qwT, b_dh, DOT_PRECISION)  # [BK, L] @ [L, BV] -> [BK, BV]
        else:
            b_dC = b_decay * b_dC + tl.dot(b_qwT.to(b_dh.dtype), b_dh, input_precision=DOT_PRECISION)
        if i_v == 0:  # only these programs store dn
            b_dn = b_decay * b_dn + tl.sum(b_qT.to(tl.float32) * b_wds[None, :], axis=1)
        if chain:
            b_mc = tl.load(mb_ptr + i_bhc)
            b_carry = _chain_tile(i_ptr, f_ptr, mt_ptr, G_ptr, R_ptr, tok0, i_c * L, S_r, b_mc, b_carry, L)
    if HAS_STATE:
        tl.store(dC0_ptr + i_bh * DHQK * DHHV + o_kv, b_dC, mask=m_kv)
        if i_v == 0:
            tl.store(dn0_ptr + i_bh * DHQK + o_k, b_dn, mask=m_k)


@triton.jit
def bw_dm0_kernel(
    Ya_ptr,  # (B, NH, NC, 2) fp32 (Y_c, a_c) from the within-chunk kernels: dm_c = Y_c + a_c dm_{c+1}
    dmS_ptr,  # (B, NH) fp32 cotangent of the last state's m (read when HAS_LAST_GRAD)
    dm0_ptr,  # (B, NH) fp32 out: the gradient of the initial state's m
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    NC,
    NH,
    HAS_LAST_GRAD: tl.constexpr,
    PACKED: tl.constexpr,
):
    """dm_0 = Y_0 + a_0 (Y_1 + a_1 (... (Y_{NC-1} + a_{NC-1} dm_S))) of one row (grid (B * NH), or N * NH with
    PACKED), in float64 from its last chunk back."""
    i_bh = tl.program_id(0).to(tl.int64)
    _, _, slot0, NC_r = _packed_row(i_bh, 0, NC, cu_ptr, cs_ptr, NH, PACKED)
    if HAS_LAST_GRAD:
        b_dm = tl.load(dmS_ptr + i_bh).to(tl.float64)
    else:
        b_dm = tl.full([], 0.0, tl.float64)
    for it in range(0, NC_r):
        slot = slot0 + NC_r - 1 - it
        b_dm = tl.load(Ya_ptr + 2 * slot).to(tl.float64) + tl.load(Ya_ptr + 2 * slot + 1).to(tl.float64) * b_dm
    tl.store(dm0_ptr + i_bh, b_dm.to(tl.float32))


@triton.jit
def _chunk_setup(i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, o_t, m_t, slot, c, NC, row,
                 L: tl.constexpr, SEGMENT_SUMS: tl.constexpr):
    """Per-token quantities of chunk c of a row (as in _dstate_weights): gates, D [L, L] and D0 [L] (relative to the
    forward's max state), the transition weights w [L] and decay of the state across the chunk, r = 1/den, ds, and
    the validity mask. F_t - F_j in D: summed segment by segment with SEGMENT_SUMS (fp32 inputs), else the difference
    of prefix sums, as in the forward (_chunk_decay_matrix): no [L, L] scan. o_t, m_t: _chunk_tokens."""
    o_l = tl.arange(0, L)
    b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
    b_mc, b_mn = _border_m(mb_ptr, mS_ptr, slot, c, NC, row)
    b_mt = tl.load(mt_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_F = tl.cumsum(b_lf, axis=0)
    if SEGMENT_SUMS:
        b_seg = tl.cumsum(tl.where(o_l[:, None] > o_l[None, :], b_lf[:, None], 0.0), axis=0)
    else:
        b_seg = b_F[:, None] - b_F[None, :]
    b_D = tl.where(o_l[:, None] >= o_l[None, :], tl.exp(b_seg + b_li[None, :] - b_mt[:, None]), 0.0)
    b_D = tl.where(m_t[:, None], b_D, 0.0)
    b_D0 = tl.where(m_t, tl.exp(b_F + b_mc - b_mt), 0.0)
    b_g = tl.cumsum(b_lf, axis=0, reverse=True) - b_lf + b_li
    b_w = tl.where(m_t, tl.exp(b_g - b_mn), 0.0)
    b_decay = tl.exp(tl.sum(b_lf, axis=0) + b_mc - b_mn)
    b_r = tl.load(r_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_ds = tl.load(ds_ptr + tok0 + o_t, mask=m_t, other=0.0)
    return b_lf, b_li, b_mc, b_D, b_D0, b_w, b_decay, b_r, b_ds


@triton.jit
def _chunk_tokens(c, S, L: tl.constexpr):
    """The offsets of chunk c's tokens in its row of S tokens, and which of them exist. Kept apart from
    _chunk_setup: torch.compile finds what a kernel writes by following each store's address back through the
    code, and through a call to every pointer the call takes; an address made from _chunk_setup's results would mark
    the inputs it reads (i, f, ...) as written, and torch.compile would copy them back."""
    o_t = c * L + tl.arange(0, L)
    return o_t, o_t < S


@triton.jit
def _state_dot(b_a, x_ptr, i_bhc, o_vk, m_vk, KV, PLANES: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(b_a @ X, X in fp32 for registers) for the tile at offsets o_vk of chunk slot i_bhc's state (or state
    gradient) X in x_ptr: one tile of KV elements per slot (fp32, split in registers by _dot_parts, or 16-bit), or
    with PLANES its two planes (_store_planes), whose products are the same."""
    if PLANES:
        p_x = x_ptr + i_bhc * 2 * KV + o_vk
        return _dot_planes(b_a, p_x, m_vk, KV, DOT_PRECISION), _planes_for_registers(p_x, m_vk, KV)
    else:
        p_x = x_ptr + i_bhc * KV + o_vk
        b_x = tl.load(p_x, mask=m_vk, other=0.0)
        return _dot_parts(b_a, b_x, DOT_PRECISION), _for_registers(p_x, m_vk, b_x, b_a)


@triton.jit
def _state_terms(q_ptr, k_ptr, v_ptr, dh_ptr, Cb_ptr, nb_ptr, dCa_ptr, dna_ptr, i_bhc, o_t, m_t, o_k, b_r, b_ds,
                 b_D0, b_w, scale, DHQK: tl.constexpr, DHHV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, DOT_PRECISION: tl.constexpr, WITH_DP: tl.constexpr, C_PLANES: tl.constexpr,
                 DC_PLANES: tl.constexpr):  # fmt: skip
    """For one DHQK tile o_k: the state parts of dq and dk,
        dq_inter = scale D0 (dnum C^T + ds n^T)      (the state before the chunk, read by every output),
        dk_trans = w (v dC_after^T + dn_after)       (the chunk's tokens, written into the state after it),
    the tile's share of <C, dC_after> + <n, dn_after>, and with WITH_DP dP = dnum v^T + ds [L, L] from the same
    loads of v and dh (else zeros, left unused). C and dC_after are read as one tile each, or (C_PLANES, DC_PLANES)
    as planes (_store_planes), whose products are those of the fp32 tile split in registers."""
    m_k = o_k < DHQK
    b_dqi = tl.zeros([L, BK], dtype=tl.float32)
    b_dkt = tl.zeros([L, BK], dtype=tl.float32)
    b_dP = tl.zeros([L, L], dtype=tl.float32)
    b_X = tl.full([], 0.0, tl.float32)
    for i_v in range(0, tl.cdiv(DHHV, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < DHHV
        m_tv = m_t[:, None] & m_v[None, :]
        b_v = tl.load(v_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_tv, other=0.0)
        b_dh = tl.load(dh_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_tv, other=0.0)
        # C^T and dC_after^T [BV, BK] loaded as such: no transposes in registers
        o_vk = o_v[:, None] + o_k[None, :] * DHHV
        m_vk = m_v[:, None] & m_k[None, :]
        if C_PLANES or DC_PLANES:
            b_dqiv, b_C32 = _state_dot(b_dh, Cb_ptr, i_bhc, o_vk, m_vk, DHQK * DHHV, C_PLANES, DOT_PRECISION)
            b_dktv, b_dC32 = _state_dot(b_v, dCa_ptr, i_bhc, o_vk, m_vk, DHQK * DHHV, DC_PLANES, DOT_PRECISION)
            b_dqi += b_dqiv  # [L, BV] @ [BV, BK]
            b_dkt += b_dktv  # [L, BV] @ [BV, BK]
            b_X += tl.sum(b_C32 * b_dC32)
        else:  # one tile each, in the statement order the shipped entries were validated with (it sets registers)
            o_vkc = i_bhc * DHQK * DHHV + o_vk
            b_CT = tl.load(Cb_ptr + o_vkc, mask=m_vk, other=0.0)
            b_dCaT = tl.load(dCa_ptr + o_vkc, mask=m_vk, other=0.0)
            b_C32 = _for_registers(Cb_ptr + o_vkc, m_vk, b_CT, b_v)
            b_X += tl.sum(b_C32 * _for_registers(dCa_ptr + o_vkc, m_vk, b_dCaT, b_v))
            b_dqi += _dot_parts(b_dh, b_CT, DOT_PRECISION)  # [L, BV] @ [BV, BK]
            b_dkt += _dot_parts(b_v, b_dCaT, DOT_PRECISION)  # [L, BV] @ [BV, BK]
        if WITH_DP:
            b_dP += tl.dot(b_dh, tl.trans(b_v), input_precision=DOT_PRECISION)  # [L, BV] @ [BV, L]
    b_n = tl.load(nb_ptr + i_bhc * DHQK + o_k, mask=m_k, other=0.0)
    b_dna = tl.load(dna_ptr + i_bhc * DHQK + o_k, mask=m_k, other=0.0)
    b_X += tl.sum(b_n * b_dna)
    b_dqi = (scale * b_D0)[:, None] * (b_r[:, None] * b_dqi + b_ds[:, None] * b_n[None, :])  # r: dnum = r dh
    b_dkt = b_w[:, None] * (b_dkt + b_dna[None, :])
    return b_dqi, b_dkt, b_X, b_dP * b_r[:, None] + b_ds[:, None]  # r factored out of the dot, as in _dP_block


@triton.jit
def _dv_tile(k_ptr, dh_ptr, dCa_ptr, i_bhc, o_t, m_t, o_v, b_Pr16, b_w, DHQK: tl.constexpr, DHHV: tl.constexpr,
             BK: tl.constexpr, DOT_PRECISION: tl.constexpr, DC_PLANES: tl.constexpr):
    """dv^T [BV, L] for one DHHV tile o_v: dv = P^T dnum + w (k dC_after), with b_Pr16 = P r in the inputs' dtype (r
    the per-row 1/den, so P^T dnum = (P r)^T dh: one rounding to 16 bits instead of two), formed once per chunk by
    the caller."""
    m_v = o_v < DHHV
    m_tv = m_t[:, None] & m_v[None, :]
    b_dh = tl.load(dh_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_tv, other=0.0)
    # transposed output, not a transposed dot result as operand: miscompiled on sm_90 (triton-lang/triton#6124)
    b_dvT = tl.dot(tl.trans(b_dh), b_Pr16, input_precision=DOT_PRECISION)  # [BV, L] @ [L, L] -> [BV, L]
    b_kdCT = tl.zeros_like(b_dvT)
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        # dC_after^T [BV, BK] loaded as such
        o_vk = o_v[:, None] + o_k[None, :] * DHHV
        m_vk = m_v[:, None] & m_k[None, :]
        if DC_PLANES:  # [BV, BK] @ [BK, L] -> [BV, L]
            b_kdCT += _planes_dot(dCa_ptr + i_bhc * 2 * DHQK * DHHV + o_vk, m_vk, tl.trans(b_k), DHQK * DHHV,
                                  DOT_PRECISION)  # fmt: skip
        else:
            b_dCaT = tl.load(dCa_ptr + i_bhc * DHQK * DHHV + o_vk, mask=m_vk, other=0.0)
            b_kdCT += _parts_dot(b_dCaT, tl.trans(b_k), DOT_PRECISION)  # [BV, BK] @ [BK, L] -> [BV, L]
    return b_dvT + b_w[None, :] * b_kdCT


@triton.jit
def _gate_E_terms(b_E, L: tl.constexpr, SEGMENT_SUMS: tl.constexpr):
    """The share of E = dP * P (the gradient of log D within the chunk) in the gate gradients, reduced to vectors as
    soon as E is formed, so that no [L, L] fp32 matrix stays live through a kernel's loops: (dlf_E, col, row), with
    col_j = sum_t E[t, j], row_t = sum_j E[t, j] and dlf_E_s = sum_{t >= s, j < s} E[t, j]. E is lower triangular,
    so dlf_E_s is also sum_{j < s} col_j - sum_{t < s} row_t: two scans of [L] instead of one of [L, L], used unless
    SEGMENT_SUMS (fp32 inputs, where that difference of sums could cancel)."""
    b_col = tl.sum(b_E, axis=0)
    b_row = tl.sum(b_E, axis=1)
    if SEGMENT_SUMS:
        o_l = tl.arange(0, L)
        b_before = tl.cumsum(b_E, axis=1) - b_E  # [t, s]: sum_{j < s} E[t, j]
        b_dlf = tl.sum(tl.where(o_l[:, None] >= o_l[None, :], b_before, 0.0), axis=0)
    else:
        b_dlf = (tl.cumsum(b_col, axis=0) - b_col) - (tl.cumsum(b_row, axis=0) - b_row)
    return b_dlf, b_col, b_row


@triton.jit
def _gate_grads(i_ptr, f_ptr, mt_ptr, R_ptr, Fl_ptr, dm_ptr, tok0, i_bhc, o_t, m_t, b_lf, b_li, b_mc, b_dlfE,
                b_colE, b_rowE, b_u, b_dD0, b_X, S, L: tl.constexpr):  # fmt: skip
    """di, df of the chunk's tokens (docs/math.md §6), of a row of S tokens from token tok0, the chunk's state at slot
    i_bhc. b_dlfE, b_colE, b_rowE: E's share (_gate_E_terms), where
    E = dP * P is the gradient of log D[t, j] within the chunk,
    b_u_j = k_j . dk_trans_j that of the state after the chunk's log weight of token j, b_dD0_t = q_t . dq_inter_t that
    of log D0[t], b_X that of the decay of the state across the chunk. log D[t, j] = F_t - F_j + li_j and
    log D0[t] = F_t + m, so
        dli_j = sum_t E[t, j] + u_j,
        dlf_s = sum_{t >= s, j < s} E[t, j] + sum_{j < s} u_j + sum_{t >= s} dD0_t + X,
    plus the max state's chain R (exp cell), which reaches i_t where m_t = i_t and lf_t where m_t = lf_t + m_{t-1}.

    Exp cell, for dm0: the gradient of the max state before the chunk is dm_c = Y_c + a_c dm_{c+1}, routed as in the
    native backward: rows whose max came from the state before the chunk ("alive") give -sum_j E[t, j] + Fl_t,
    the others dD0_t; the last row adds -sum_j u_j and passes dm_{c+1} on if alive, else adds X. (Y_c, a_c) go to
    dm_ptr; the launcher chains them. (<C0, dC0> + <n0, dn0> + chain is the same value, but its two dot products
    nearly cancel where the state dominates the outputs: 5e-4 relative error in fp32 against 6e-6.)"""
    b_dlf = b_dlfE + (tl.cumsum(b_u, axis=0) - b_u) + tl.cumsum(b_dD0, axis=0, reverse=True) + b_X
    b_dli = b_colE + b_u
    o_l = tl.arange(0, L)
    b_mp = tl.load(mt_ptr + tok0 + o_t - 1, mask=m_t & (o_l > 0), other=0.0)
    b_mp = tl.where(o_l == 0, b_mc, b_mp)
    forget_won = b_li <= b_lf + b_mp
    b_R = tl.load(R_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_dli += tl.where(forget_won, 0.0, b_R)
    b_dlf += tl.where(forget_won, b_R, 0.0)
    b_di = b_dli
    alive = (tl.cumsum(tl.where(forget_won | (o_t >= S), 0, 1), axis=0) == 0) & m_t
    n_valid = tl.minimum(S - (o_t - o_l), L)  # o_t - o_l: the chunk's first token
    last_alive = tl.sum(tl.where((o_l == n_valid - 1) & alive, 1.0, 0.0), axis=0)
    b_Fl = tl.load(Fl_ptr + tok0 + o_t, mask=m_t, other=0.0)
    b_Y = tl.sum(tl.where(alive, b_Fl - b_rowE, tl.where(m_t, b_dD0, 0.0)), axis=0)
    b_Y += tl.where(last_alive > 0, -tl.sum(b_u, axis=0), b_X)
    tl.store(dm_ptr + 2 * i_bhc, b_Y)
    tl.store(dm_ptr + 2 * i_bhc + 1, last_alive)
    b_df = b_dlf * tl.sigmoid(-tl.load(f_ptr + tok0 + o_t, mask=m_t, other=0.0).to(tl.float32))
    return b_di, b_df


@triton.jit
def _store_shares(part_ptr, i_k, n_bh, tok0, S, o_t, m_t, b_dD0, b_u, b_dlf, b_col, b_row):
    """Key tile i_k's shares of the gate gradients' vectors for tokens tok0 + o_t, as five rows of part_ptr
    (row j at offset j * n_bh * S): q . dq_inter, k . dk_trans, and E's dlf, column and row sums."""
    p_part = part_ptr + i_k * 5 * n_bh * S + tok0 + o_t
    tl.store(p_part, b_dD0, mask=m_t)
    tl.store(p_part + n_bh * S, b_u, mask=m_t)
    tl.store(p_part + 2 * n_bh * S, b_dlf, mask=m_t)
    tl.store(p_part + 3 * n_bh * S, b_col, mask=m_t)
    tl.store(p_part + 4 * n_bh * S, b_row, mask=m_t)


@triton.jit
def chunkwise_bw_dqk_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    mb_ptr,  # (B, NH, NC) fp32 max state before each chunk (exp cell)
    mS_ptr,  # (B, NH) fp32 max state after the last chunk (exp cell)
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    Cb_ptr,  # (B, NH, NC, DHQK, DHHV) state before each chunk (C_PLANES: (B, NH, NC, 2, DHQK, DHHV))
    nb_ptr,  # (B, NH, NC, DHQK) fp32
    dCa_ptr,  # (B, NH, NC, DHQK, DHHV) gradient of the state after each chunk (fp32 or the inputs' dtype; with
    #            DC_PLANES (B, NH, NC, 2, DHQK, DHHV), its planes)
    dna_ptr,  # (B, NH, NC, DHQK) fp32
    dq_ptr,  # (B, NH, S, DHQK) out
    dk_ptr,  # (B, NH, S, DHQK) out
    part_ptr,  # (cdiv(DHQK, BK), 5, B, NH, S) fp32 out: this tile's shares of the gate gradients' vectors (below)
    partX_ptr,  # (cdiv(DHQK, BK), B, NH, NC) fp32 out: this tile's <C, dC_after> + <n, dn_after>
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    NH,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
    PACKED: tl.constexpr,
    C_PLANES: tl.constexpr,
    DC_PLANES: tl.constexpr,
):
    """One DHQK tile of dq and dk for one chunk. v and dh are read once, in the loop over value tiles that also forms
    dP (no separate pass over them); the programs of a chunk's key tiles are neighbours in the grid, so they share
    those reads through L2. Partial vectors per tile (summed by chunkwise_bw_gates_kernel): q . dq_inter, k . dk_trans,
    and E's share of the gate gradients (_gate_E_terms) for E_tile = dA * (q_tile k_tile^T): E = dP * P is linear in
    q k^T, which is the sum of its key tiles' shares, so no program needs all of DHQK."""
    scale = _fp32(scale)
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    n_bh = tl.num_programs(2).to(tl.int64)
    tok0, S_r, c, NC_r, row = _packed_chunk_row(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, NH, PACKED)
    i_bhc = i_bh * NC + i_c
    o_t, m_t = _chunk_tokens(c, S_r, L)
    b_lf, b_li, b_mc, b_D, b_D0, b_w, b_decay, b_r, b_ds = _chunk_setup(
        i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, o_t, m_t, i_bhc, c, NC_r, row, L, SEGMENT_SUMS)
    q_ptr += tok0 * DHQK
    k_ptr += tok0 * DHQK
    v_ptr += tok0 * DHHV
    dh_ptr += tok0 * DHHV
    o_k = i_k * BK + tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < DHQK)[None, :]
    b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_tk, other=0.0)
    b_dqi, b_dkt, b_X, b_dP = _state_terms(q_ptr, k_ptr, v_ptr, dh_ptr, Cb_ptr, nb_ptr, dCa_ptr, dna_ptr, i_bhc, o_t,
                                           m_t, o_k, b_r, b_ds, b_D0, b_w, scale, DHQK, DHHV, L, BK, BV,
                                           DOT_PRECISION, True, C_PLANES, DC_PLANES)
    b_dA = b_dP * scale * b_D
    b_Ak = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [L, BK] @ [BK, L]: this tile's share of q k^T
    b_dlfE, b_colE, b_rowE = _gate_E_terms(b_dA * b_Ak, L, SEGMENT_SUMS)
    b_dA16 = b_dA.to(b_k.dtype)
    b_dq = tl.dot(b_dA16, b_k, input_precision=DOT_PRECISION) + b_dqi  # [L, L] @ [L, BK]
    # transposed output, not a transposed dot result as operand: miscompiled on sm_90 (triton-lang/triton#6124)
    b_dkT = tl.dot(tl.trans(b_q), b_dA16, input_precision=DOT_PRECISION)  # [BK, L] @ [L, L] -> [BK, L]
    b_dkT += tl.trans(b_dkt)
    o_tk = tok0 * DHQK + o_t[:, None] * DHQK + o_k[None, :]
    tl.store(dq_ptr + o_tk, b_dq.to(dq_ptr.dtype.element_ty), mask=m_tk)
    o_kt = tok0 * DHQK + o_t[None, :] * DHQK + o_k[:, None]
    tl.store(dk_ptr + o_kt, b_dkT.to(dk_ptr.dtype.element_ty), mask=(o_k < DHQK)[:, None] & m_t[None, :])
    _store_shares(part_ptr, i_k, n_bh, tok0, S, o_t, m_t, tl.sum(b_q.to(tl.float32) * b_dqi, axis=1),
                  tl.sum(b_k.to(tl.float32) * b_dkt, axis=1), b_dlfE, b_colE, b_rowE)  # fmt: skip
    tl.store(partX_ptr + i_k * n_bh * NC + i_bhc, b_X)


@triton.jit
def chunkwise_bw_dv_kernel(
    q_ptr,  # (B, NH, S, DHQK)
    k_ptr,  # (B, NH, S, DHQK)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    dh_ptr,  # (B, NH, S, DHHV)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    mb_ptr,  # (B, NH, NC) fp32 max state before each chunk (exp cell)
    mS_ptr,  # (B, NH) fp32 max state after the last chunk (exp cell)
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    dCa_ptr,  # (B, NH, NC, DHQK, DHHV) gradient of the state after each chunk (fp32 or the inputs' dtype; with
    #            DC_PLANES (B, NH, NC, 2, DHQK, DHHV), its planes)
    dv_ptr,  # (B, NH, S, DHHV) out
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    NH,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
    PACKED: tl.constexpr,
    DC_PLANES: tl.constexpr,
):
    scale = _fp32(scale)
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    tok0, S_r, c, NC_r, row = _packed_chunk_row(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, NH, PACKED)
    i_bhc = i_bh * NC + i_c
    o_t, m_t = _chunk_tokens(c, S_r, L)
    b_lf, b_li, b_mc, b_D, b_D0, b_w, b_decay, b_r, b_ds = _chunk_setup(
        i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, o_t, m_t, i_bhc, c, NC_r, row, L, SEGMENT_SUMS)
    b_P = _qk_block(q_ptr + tok0 * DHQK, k_ptr + tok0 * DHQK, o_t, m_t, o_t, m_t, DHQK, L, L, BK, DOT_PRECISION)
    b_Pr16 = (b_P * scale * b_D * b_r[:, None]).to(q_ptr.dtype.element_ty)
    o_v = i_v * BV + tl.arange(0, BV)
    b_dvT = _dv_tile(k_ptr + tok0 * DHQK, dh_ptr + tok0 * DHHV, dCa_ptr, i_bhc, o_t, m_t, o_v, b_Pr16, b_w, DHQK,
                     DHHV, BK, DOT_PRECISION, DC_PLANES)
    p_dv = dv_ptr + tok0 * DHHV + o_t[None, :] * DHHV + o_v[:, None]
    tl.store(p_dv, b_dvT.to(dv_ptr.dtype.element_ty), mask=(o_v < DHHV)[:, None] & m_t[None, :])


@triton.jit
def chunkwise_bw_gates_kernel(
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    mt_ptr,  # (B, NH, S) fp32 forward max state
    mb_ptr,  # (B, NH, NC) fp32 max state before each chunk (exp cell)
    mS_ptr,  # (B, NH) fp32 max state after the last chunk (exp cell)
    r_ptr,  # (B, NH, S) fp32
    ds_ptr,  # (B, NH, S) fp32
    R_ptr,  # (B, NH, S) fp32 max-state chain (exp cell)
    Fl_ptr,  # (B, NH, S) fp32 the floor's part of the gradient of m_t (exp cell)
    dm_ptr,  # (B, NH, NC, 2) fp32 out: (Y_c, a_c) of the max state's gradient, dm_c = Y_c + a_c dm_{c+1} (exp)
    part_ptr,  # (NKT, 5, B, NH, S) fp32 from chunkwise_bw_dqk_kernel
    partX_ptr,  # (NKT, B, NH, NC) fp32
    di_ptr,  # (B, NH, S) fp32 out
    df_ptr,  # (B, NH, S) fp32 out
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    NH,
    NKT,
    scale,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
    PACKED: tl.constexpr,
):
    """di, df of one chunk from the key tiles' partial vectors (no [L, L] product here)."""
    scale = _fp32(scale)
    i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n_bh = tl.num_programs(1).to(tl.int64)
    tok0, S_r, c, NC_r, row = _packed_chunk_row(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, NH, PACKED)
    i_bhc = i_bh * NC + i_c
    o_t, m_t = _chunk_tokens(c, S_r, L)
    b_lf, b_li, b_mc, b_D, b_D0, b_w, b_decay, b_r, b_ds = _chunk_setup(
        i_ptr, f_ptr, mt_ptr, mb_ptr, mS_ptr, r_ptr, ds_ptr, tok0, o_t, m_t, i_bhc, c, NC_r, row, L, SEGMENT_SUMS)
    b_dD0 = tl.zeros([L], dtype=tl.float32)
    b_u = tl.zeros([L], dtype=tl.float32)
    b_dlfE = tl.zeros([L], dtype=tl.float32)
    b_colE = tl.zeros([L], dtype=tl.float32)
    b_rowE = tl.zeros([L], dtype=tl.float32)
    b_X = tl.full([], 0.0, tl.float32)
    for i_k in range(0, NKT):
        p_part = part_ptr + i_k * 5 * n_bh * S + tok0 + o_t
        b_dD0 += tl.load(p_part, mask=m_t, other=0.0)
        b_u += tl.load(p_part + n_bh * S, mask=m_t, other=0.0)
        b_dlfE += tl.load(p_part + 2 * n_bh * S, mask=m_t, other=0.0)
        b_colE += tl.load(p_part + 3 * n_bh * S, mask=m_t, other=0.0)
        b_rowE += tl.load(p_part + 4 * n_bh * S, mask=m_t, other=0.0)
        b_X += tl.load(partX_ptr + i_k * n_bh * NC + i_bhc)
    b_di, b_df = _gate_grads(i_ptr, f_ptr, mt_ptr, R_ptr, Fl_ptr, dm_ptr, tok0, i_bhc, o_t, m_t, b_lf, b_li, b_mc,
                             b_dlfE, b_colE, b_rowE, b_u, b_dD0, b_decay * b_X, S_r, L)
    tl.store(di_ptr + tok0 + o_t, b_di, mask=m_t)
    tl.store(df_ptr + tok0 + o_t, b_df, mask=m_t)
