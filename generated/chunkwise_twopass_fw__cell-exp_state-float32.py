# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        chunkwise_twopass_fw.py.j2
# template hash:   6b02bfc7807f0698
# parameters:      cell=exp, state=float32
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""Chunkwise mLSTM forward (exp cell), two passes (knobs: autotune/families.py, CHUNKWISE_TWOPASS_FW; LI is
"chunk_inter", LO "chunk_intra", the states kernel's BK, BV "states_dhqk_tile", "states_dhhv_tile", the output
kernels' "out_dhqk_tile", "out_dhhv_tile"):
  1. chunkwise_states_kernel walks the chunk borders (the recurrence of docs/math.md §4, in sub-chunks of LI
     tokens) and writes the state before every output chunk of LO tokens (LO a multiple of LI) to memory (with
     STORE_BORDERS; without, it only produces the last state, which is how the parallel launcher gets last states);
     grid (cdiv(DHQK, BK), cdiv(DHHV, BV), B * NH). With the launch parameter "states_gates": "pre",
     chunk_gate_weights_kernel first computes every sub-chunk's own weights in parallel (PRE_GATES), and the
     sequential loop keeps loads, one product and the scalar max-state chain; "inline" computes them in the loop.
     The launch parameter "states_weighting": "k" weights k by the tokens' weights and transposes it in registers;
     "v" (WEIGHT_V) loads k^T as such and weights v, and only the first value tile's programs reduce n; "kT"
     (WEIGHT_KT) loads k^T as such and weights it there (v goes from memory to the product unchanged, and n is the
     weighted k^T's row sum, first value tile only). "states_n": "dot" (N_DOT, with "k" or "kT") forms n on the
     tensor cores instead, in every program: the weighted k^T times one column of ones, kept in a [BK, 16] tile
     (no reduction across threads in the loop); "sum" reduces as said. "states_store": "tma" (STORE_TMA) stores each
     chunk's C tile through a tensor descriptor (the copy engine's bulk stores of a whole tile) instead of plain
     stores from registers; Cb_ptr is then that descriptor, built by the launcher.
  2. The outputs of every chunk in parallel from its stored state and its own tokens, looping over DHQK in tiles of
     BKO, in one of two kernels (the launch parameter "out_values"):
     "tiles": chunkwise_output_kernel, one program per value tile, grid (cdiv(DHHV, BVO), cdiv(S, LO), B * NH);
       each program forms q k^T and the gate matrix of its chunk again.
     "loop": chunkwise_output_loop_kernel, one program per chunk, grid (cdiv(S, LO), B * NH): q k^T and the gate
       matrix are formed once, then the program loops over the value tiles (q is read again per tile, from L2).
Stored C: fp32, split into two tiles of the inputs' dtype in registers for the products that
read it; n and m fp32.
PACKED (constexpr): the rows are the documents of one packed sequence of S tokens per head (cu_seqlens, batch size 1)
instead of a batch's rows: _packed_row and _packed_chunk say where a program's tokens and chunk slots are
(autotune/launch/packed.py builds the tables they read).
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
def chunk_gate_weights_kernel(
    i_ptr,  # (B, NH, S) gate pre-activations
    f_ptr,  # (B, NH, S)
    w_ptr,  # (B, NH, NCI * LI) fp32 out: each token's weight within its sub-chunk, exp(g_j - g_max); 0 past S
    gw_ptr,  # (B, NH, NCI, 2) fp32 out: per sub-chunk F_end (sum of lf) and g_max
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NCI * LI / LO) the document of each chunk slot, N past the last
    S,
    NCI,
    NSEQ,
    LI: tl.constexpr,
    LO: tl.constexpr,
    PACKED: tl.constexpr,
):
    """The part of every sub-chunk's transition that does not depend on the state before it, for all sub-chunks at
    once (grid (NCI, B * NH)), so the states kernel's sequential loop keeps only the scalar max-state chain."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    tok0, S_r, c = _packed_chunk(i_c // (LO // LI), i_bh, S, NCI // (LO // LI), cu_ptr, cs_ptr, ss_ptr, NSEQ, PACKED)
    o_t = c * LO + (i_c % (LO // LI)) * LI + tl.arange(0, LI)
    m_t = o_t < S_r
    b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
    b_Fend, b_g, b_g_max = _chunk_log_weights(b_lf, b_li)
    tl.store(w_ptr + i_bh * NCI * LI + i_c * LI + tl.arange(0, LI), tl.exp(b_g - b_g_max))
    tl.store(gw_ptr + 2 * (i_bh * NCI + i_c), b_Fend)
    tl.store(gw_ptr + 2 * (i_bh * NCI + i_c) + 1, b_g_max)


@triton.jit
def _states_n(b_n, N_DOT: tl.constexpr):
    """n as a vector: with N_DOT, column 0 of the [BK, 16] tile the states kernel keeps it in (the other columns
    are exactly 0), else b_n itself."""
    if N_DOT:
        return tl.sum(b_n, axis=1)
    else:
        return b_n


@triton.jit
def _ones_product(b_x16, b_E0, DOT_PRECISION: tl.constexpr):
    """The row sums of b_x16 (a [rows, LI] tile in the inputs' dtype, the operand of the product with v) in column 0
    of a [rows, 16] product on the tensor cores with b_E0 (ones in column 0)."""
    return tl.dot(b_x16, b_E0, input_precision=DOT_PRECISION)


@triton.jit
def chunkwise_states_kernel(
    k_ptr,  # (B, NH, S, DHQK) contiguous
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    C0_ptr,  # (B, NH, DHQK, DHHV) initial state (read when HAS_STATE)
    n0_ptr,  # (B, NH, DHQK)
    m0_ptr,  # (B, NH)
    Cb_ptr,  # (B, NH, NC, DHQK, DHHV) state before each output chunk; planes: (B, NH, NC, 2, DHQK, DHHV); with
    # STORE_TMA a tensor descriptor of it as (B * NH * NC, DHQK, DHHV) in blocks [1, BK, BV]
    nb_ptr,  # (B, NH, NC, DHQK) fp32
    mb_ptr,  # (B, NH, NC) fp32
    CS_ptr,  # (B, NH, DHQK, DHHV) fp32 last state (written when STORE_LAST)
    nS_ptr,  # (B, NH, DHQK) fp32
    mS_ptr,  # (B, NH) fp32
    w_ptr,  # (B, NH, NCI * LI) fp32 per-token weights within their sub-chunk (read when PRE_GATES)
    gw_ptr,  # (B, NH, NCI, 2) fp32 per sub-chunk: F_end, g_max (read when PRE_GATES)
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    S,
    NC,
    NH,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    LI: tl.constexpr,
    LO: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    STORE_LAST: tl.constexpr,
    STORE_BORDERS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PRE_GATES: tl.constexpr,
    WEIGHT_V: tl.constexpr,
    WEIGHT_KT: tl.constexpr,
    N_DOT: tl.constexpr,
    PACKED: tl.constexpr,
    STORE_TMA: tl.constexpr,
):
    # with v weighted, n on the tensor cores would need the weights as a product operand built in registers: on the
    # H200 (Triton 3.6, bf16) that faulted with an illegal memory access (tuning_db/reports/NOTES.md)
    tl.static_assert(not (N_DOT and WEIGHT_V), "n on the tensor cores needs the weights on k")
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_l = tl.arange(0, LI)
    o_e = tl.arange(0, 16)  # N_DOT: the columns of the [BK, 16] tile that holds n in column 0 (the others stay 0)
    b_E0 = tl.where((o_l[:, None] >= 0) & (o_e[None, :] == 0), 1.0, 0.0).to(k_ptr.dtype.element_ty)  # [LI, 16]
    m_k, m_v = o_k < DHQK, o_v < DHHV
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * DHHV + o_v[None, :]
    if HAS_STATE:
        b_C = tl.load(C0_ptr + i_bh * DHQK * DHHV + o_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_n = tl.load(n0_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        if N_DOT:
            b_n = tl.where(o_e[None, :] == 0, b_n[:, None], 0.0)
        b_m = tl.load(m0_ptr + i_bh).to(tl.float32)
    else:
        b_C = tl.zeros([BK, BV], dtype=tl.float32)
        if N_DOT:
            b_n = tl.zeros([BK, 16], dtype=tl.float32)
        else:
            b_n = tl.zeros([BK], dtype=tl.float32)
        b_m = tl.full([], 0.0, tl.float32)
    tok0, S_r, slot0, NC_r = _packed_row(i_bh, S, NC, cu_ptr, cs_ptr, NH, PACKED)
    k_ptr += tok0 * DHQK
    v_ptr += tok0 * DHHV
    for i_c in range(0, NC_r):
        if STORE_BORDERS:
            i_bhc = slot0 + i_c  # int64: the state buffer may hold more than 2^31 elements
            if STORE_TMA:  # the descriptor's bounds clip a tile past DHQK or DHHV, as the masks do
                Cb_ptr.store([i_bhc.to(tl.int32), i_k * BK, i_v * BV],
                             tl.reshape(b_C.to(Cb_ptr.dtype), [1, BK, BV]))  # fmt: skip
            else:
                tl.store(Cb_ptr + i_bhc * DHQK * DHHV + o_kv, b_C.to(Cb_ptr.dtype.element_ty), mask=m_kv)
            if i_v == 0:
                tl.store(nb_ptr + i_bhc * DHQK + o_k, _states_n(b_n, N_DOT), mask=m_k)
                if i_k == 0:
                    tl.store(mb_ptr + i_bhc, b_m)
        for i_s in range(0, LO // LI):
            o_t = i_c * LO + i_s * LI + o_l
            m_t = o_t < S_r
            b_v = tl.load(v_ptr + o_t[:, None] * DHHV + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
            if PRE_GATES:  # the sub-chunk's weights from chunk_gate_weights_kernel: only the max-state chain here
                i_ci = (slot0 + i_c) * (LO // LI) + i_s
                b_w = tl.load(w_ptr + slot0 * LO + o_t)
                b_decay, b_scale, b_m = _chunk_transition(tl.load(gw_ptr + 2 * i_ci), tl.load(gw_ptr + 2 * i_ci + 1),
                                                          b_m)  # fmt: skip
            else:
                b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
                b_decay, b_w, b_scale, b_m = _chunk_state_weights(b_lf, b_li, b_m)
            if WEIGHT_V:  # k^T loaded as such, the weights on v: no transposed fp32 copy of k in registers
                b_kT = tl.load(k_ptr + o_t[None, :] * DHQK + o_k[:, None], mask=m_k[:, None] & m_t[None, :],
                               other=0.0)  # [BK, LI]
                b_vw = (b_v.to(tl.float32) * b_w[:, None]).to(b_v.dtype)  # [LI, BV]
                b_C = b_decay * b_C + b_scale * tl.dot(b_kT, b_vw, input_precision=DOT_PRECISION)
                if i_v == 0:  # only the first value tile's programs store n: the others skip the reduction
                    p_kT = k_ptr + o_t[None, :] * DHQK + o_k[:, None]
                    b_kT32 = _for_registers(p_kT, m_k[:, None] & m_t[None, :], b_kT, b_vw)
                    b_n = b_decay * b_n + b_scale * tl.sum(b_kT32 * b_w[None, :], axis=1)
            elif WEIGHT_KT:  # k^T loaded as such and weighted there, v unchanged from memory; the weighted k^T
                # also gives n (first value tile only)
                b_kT = tl.load(k_ptr + o_t[None, :] * DHQK + o_k[:, None], mask=m_k[:, None] & m_t[None, :],
                               other=0.0)  # [BK, LI]
                b_kTw = b_kT.to(tl.float32) * b_w[None, :]
                b_C = b_decay * b_C + b_scale * tl.dot(b_kTw.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
                if N_DOT:
                    b_n = b_decay * b_n + b_scale * _ones_product(b_kTw.to(b_v.dtype), b_E0, DOT_PRECISION)
                elif i_v == 0:
                    b_n = b_decay * b_n + b_scale * tl.sum(b_kTw, axis=1)
            else:
                b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                              other=0.0)
                b_kw = b_k.to(tl.float32) * b_w[:, None]  # [LI, BK]
                b_kwT = tl.trans(b_kw).to(b_v.dtype)
                b_C = b_decay * b_C + b_scale * tl.dot(b_kwT, b_v, input_precision=DOT_PRECISION)  # [BK, LI] @ [LI, BV]
                if N_DOT:
                    b_n = b_decay * b_n + b_scale * _ones_product(b_kwT, b_E0, DOT_PRECISION)
                elif PRE_GATES:
                    if i_v == 0:  # only the first value tile's programs store n: the others skip the reduction
                        b_n = b_decay * b_n + b_scale * tl.sum(b_kw, axis=0)
                else:
                    b_n = b_decay * b_n + b_scale * tl.sum(b_kw, axis=0)
    if STORE_LAST:
        tl.store(CS_ptr + i_bh * DHQK * DHHV + o_kv, b_C, mask=m_kv)
        if i_v == 0:
            tl.store(nS_ptr + i_bh * DHQK + o_k, _states_n(b_n, N_DOT), mask=m_k)
            if i_k == 0:
                tl.store(mS_ptr + i_bh, b_m)


@triton.jit
def _q_dot_n(q_ptr, n_ptr, o_t, m_t, DHQK: tl.constexpr, LT: tl.constexpr, BK: tl.constexpr):
    """q_t . n for the tokens o_t ([LT]) in fp32, in a loop of its own. A tile loaded in a pipelined loop
    (num_stages >= 2) and used both as a tl.dot operand and in registers is the mixed-use hazard of Triton 3.6 on
    sm_90 (docs/hazards.md): the q tiles of the dot loops feed only dots, and these only this reduction."""
    b_qn = tl.zeros([LT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_n = tl.load(n_ptr + o_k, mask=m_k, other=0.0)
        b_qn += tl.sum(b_q.to(tl.float32) * b_n[None, :], axis=1)
    return b_qn


@triton.jit
def chunkwise_output_kernel(
    q_ptr,  # (B, NH, S, DHQK) contiguous
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    Cb_ptr,  # (B, NH, NC, DHQK, DHHV) state before each chunk, from chunkwise_states_kernel
    nb_ptr,  # (B, NH, NC, DHQK) fp32
    mb_ptr,  # (B, NH, NC) fp32
    h_ptr,  # (B, NH, S, DHHV) output, the inputs' dtype
    s_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the normaliser's argument s_t, for the backward
    mt_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the max state m_t
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    LO: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NORMALIZE: tl.constexpr,
    STORE_STATS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
    PACKED: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    i_bhc = i_bh * NC + i_c
    tok0, S_r, c = _packed_chunk(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, PACKED)
    o_l = tl.arange(0, LO)
    o_t = c * LO + o_l
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < S_r, o_v < DHHV
    q_ptr += tok0 * DHQK
    k_ptr += tok0 * DHQK
    b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
    b_D, b_D0, b_mt = _chunk_decay_matrix(b_lf, b_li, tl.load(mb_ptr + i_bhc), o_l, SEGMENT_SUMS)
    b_A = tl.zeros([LO, LO], dtype=tl.float32)
    b_qC = tl.zeros([LO, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [LO, BK] @ [BK, LO] -> [LO, LO]
    # q C from fp32 states, split in registers (_dot_parts): in a loop of its own, so that the loop above feeds
    # only a dot
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        p_C = Cb_ptr + i_bhc * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
        b_C = tl.load(p_C, mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_qC += _dot_parts(b_q, b_C, DOT_PRECISION)  # [LO, BK] @ [BK, BV] -> [LO, BV]
    b_qn = _q_dot_n(q_ptr, nb_ptr + i_bhc * DHQK, o_t, m_t, DHQK, LO, BK)
    b_P = b_A * scale * b_D
    p_v = v_ptr + tok0 * DHHV + o_t[:, None] * DHHV + o_v[None, :]
    b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_num = tl.dot(b_P.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [LO, LO] @ [LO, BV] -> [LO, BV]
    b_num += (b_D0 * scale)[:, None] * b_qC
    b_s = tl.sum(b_P, axis=1) + b_D0 * scale * b_qn
    b_h = _normalize(b_num, b_s, b_mt, eps, NORMALIZE)
    p_h = h_ptr + tok0 * DHHV + o_t[:, None] * DHHV + o_v[None, :]
    tl.store(p_h, b_h.to(h_ptr.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
    if STORE_STATS and i_v == 0:
        tl.store(s_ptr + tok0 + o_t, b_s, mask=m_t)
        tl.store(mt_ptr + tok0 + o_t, b_mt, mask=m_t)


@triton.jit
def chunkwise_output_loop_kernel(
    q_ptr,  # (B, NH, S, DHQK) contiguous
    k_ptr,  # (B, NH, S, DHQK)
    v_ptr,  # (B, NH, S, DHHV)
    i_ptr,  # (B, NH, S)
    f_ptr,  # (B, NH, S)
    Cb_ptr,  # (B, NH, NC, DHQK, DHHV) state before each chunk, from chunkwise_states_kernel
    nb_ptr,  # (B, NH, NC, DHQK) fp32
    mb_ptr,  # (B, NH, NC) fp32
    h_ptr,  # (B, NH, S, DHHV) output, the inputs' dtype
    s_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the normaliser's argument s_t, for the backward
    mt_ptr,  # (B, NH, S) fp32 out (STORE_STATS): the max state m_t
    cu_ptr,  # PACKED: (N + 1) token offsets of the documents
    cs_ptr,  # PACKED: (N + 1) their first chunk slots
    ss_ptr,  # PACKED: (NC) the document of each chunk slot, N past the last
    S,
    NC,
    NSEQ,
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    LO: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NORMALIZE: tl.constexpr,
    STORE_STATS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SEGMENT_SUMS: tl.constexpr,
    PACKED: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_bhc = i_bh * NC + i_c
    tok0, S_r, c = _packed_chunk(i_c, i_bh, S, NC, cu_ptr, cs_ptr, ss_ptr, NSEQ, PACKED)
    o_l = tl.arange(0, LO)
    o_t = c * LO + o_l
    m_t = o_t < S_r
    q_ptr += tok0 * DHQK
    k_ptr += tok0 * DHQK
    b_lf, b_li = _load_gates(i_ptr + tok0, f_ptr + tok0, o_t, m_t)
    b_D, b_D0, b_mt = _chunk_decay_matrix(b_lf, b_li, tl.load(mb_ptr + i_bhc), o_l, SEGMENT_SUMS)
    # pass 1 over DHQK: q k^T and q n, once for all value tiles
    b_A = tl.zeros([LO, LO], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [LO, BK] @ [BK, LO] -> [LO, LO]
    b_qn = _q_dot_n(q_ptr, nb_ptr + i_bhc * DHQK, o_t, m_t, DHQK, LO, BK)
    b_P = b_A * scale * b_D
    b_s = tl.sum(b_P, axis=1) + b_D0 * scale * b_qn
    b_Pv = b_P.to(v_ptr.dtype.element_ty)
    b_D0s = b_D0 * scale
    # pass 2, per value tile: the state's part q C (q again, from L2) and the chunk's own part P v
    for i_v in range(0, tl.cdiv(DHHV, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < DHHV
        b_qC = tl.zeros([LO, BV], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(DHQK, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < DHQK
            b_q = tl.load(q_ptr + o_t[:, None] * DHQK + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
            p_C = Cb_ptr + i_bhc * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
            b_C = tl.load(p_C, mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_qC += _dot_parts(b_q, b_C, DOT_PRECISION)  # [LO, BK] @ [BK, BV]
        p_v = v_ptr + tok0 * DHHV + o_t[:, None] * DHHV + o_v[None, :]
        b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_num = tl.dot(b_Pv, b_v, input_precision=DOT_PRECISION) + b_D0s[:, None] * b_qC  # [LO, LO] @ [LO, BV]
        b_h = _normalize(b_num, b_s, b_mt, eps, NORMALIZE)
        p_h = h_ptr + tok0 * DHHV + o_t[:, None] * DHHV + o_v[None, :]
        tl.store(p_h, b_h.to(h_ptr.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
    if STORE_STATS:
        tl.store(s_ptr + tok0 + o_t, b_s, mask=m_t)
        tl.store(mt_ptr + tok0 + o_t, b_mt, mask=m_t)
