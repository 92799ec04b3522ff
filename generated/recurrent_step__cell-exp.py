# GENERATED FILE - DO NOT EDIT. Rendered by autotune.render from templates/.
# template:        recurrent_step.py.j2
# template hash:   e6da8595e1e7c262
# parameters:      cell=exp
# regenerate with: mlstm-tune render   (or: python -m autotune render)
"""mLSTM step (exp cell): one token, docs/math.md §5. recurrent_step_kernel: one program per (value tile,
batch x head), DHQK in tiles of BK ("k_tiles": "loop"); recurrent_step_split_kernel: one program per [BK, BV] tile of C
("k_tiles": "programs", below).

Each program reads and writes only its own columns of C, so C can be updated in place. n and m are shared by all
value tiles of a head: every program reads the old ones, so with INPLACE the last program of a head to arrive (an
atomic counter per head, which it resets to 0) writes the new n and m. Nothing is allocated per call, and the
launch is CUDA-graph safe once the counter buffer exists.
Grid: (NV = cdiv(DHHV, BV), B * NH).
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
def _step_gates(i_ptr, f_ptr, m_ptr, i_bh):
    """(decay of the old state, weight of the new token, new max state) of one head's step; the sig cell has no max
    state (0 returned)."""
    b_i = tl.load(i_ptr + i_bh).to(tl.float32)
    b_lf = _logsigmoid(tl.load(f_ptr + i_bh).to(tl.float32))
    b_m = tl.load(m_ptr + i_bh).to(tl.float32)
    b_m_new = tl.maximum(b_lf + b_m, b_i)
    return tl.exp(b_lf + b_m - b_m_new), tl.exp(b_i - b_m_new), b_m_new


@triton.jit
def _step_den(b_qn, b_m_new, eps, NORMALIZE: tl.constexpr):
    """The denominator of h from q . n (scaled): max(|q . n|, floor) + eps, the floor exp(-m) for the exp cell and 1
    for the sig cell (1 in all, without NORMALIZE, for the sig cell)."""
    return tl.maximum(tl.abs(b_qn), tl.exp(-b_m_new)) + eps


@triton.jit
def recurrent_step_kernel(
    q_ptr,  # (B, NH, DHQK) contiguous
    k_ptr,  # (B, NH, DHQK)
    v_ptr,  # (B, NH, DHHV)
    i_ptr,  # (B, NH) gate pre-activations
    f_ptr,  # (B, NH)
    C_ptr,  # (B, NH, DHQK, DHHV) state in
    n_ptr,  # (B, NH, DHQK)
    m_ptr,  # (B, NH)
    Cout_ptr,  # (B, NH, DHQK, DHHV) state out (== C_ptr when INPLACE)
    nout_ptr,  # (B, NH, DHQK)
    mout_ptr,  # (B, NH)
    h_ptr,  # (B, NH, DHHV) output
    count_ptr,  # (B * NH,) int32 arrival counters, all 0 between calls (INPLACE only)
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NV: tl.constexpr,
    INPLACE: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    scale, eps = _fp32(scale), _fp32(eps)
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DHHV
    b_decay, b_w, b_m_new = _step_gates(i_ptr, f_ptr, m_ptr, i_bh)
    b_v = tl.load(v_ptr + i_bh * DHHV + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_num = tl.zeros([BV], dtype=tl.float32)
    b_s = tl.zeros([BK], dtype=tl.float32)
    b_n = tl.zeros([BK], dtype=tl.float32)  # after the loop: the new n, whole when one key tile covers DHQK
    for i_k in range(0, tl.cdiv(DHQK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DHQK
        b_q = tl.load(q_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
        o_kv = i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_C = b_decay * tl.load(C_ptr + o_kv, mask=m_kv, other=0.0).to(tl.float32) + b_w * b_k[:, None] * b_v[None, :]
        tl.store(Cout_ptr + o_kv, b_C.to(Cout_ptr.dtype.element_ty), mask=m_kv)
        b_num += tl.sum(b_C * b_q[:, None], axis=0)
        b_n = b_decay * tl.load(n_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32) + b_w * b_k
        b_s += b_n * b_q
        if not INPLACE:
            if i_v == 0:
                tl.store(nout_ptr + i_bh * DHQK + o_k, b_n.to(nout_ptr.dtype.element_ty), mask=m_k)
    b_qn = tl.sum(b_s, axis=0) * scale
    b_num = b_num * scale
    b_h = b_num / _step_den(b_qn, b_m_new, eps, NORMALIZE)
    tl.store(h_ptr + i_bh * DHHV + o_v, b_h.to(h_ptr.dtype.element_ty), mask=m_v)
    if INPLACE:
        # every program of this head has consumed the old n and m (b_qn, b_m_new above); the last one writes.
        # Relaxed: the counter orders only those reads, and no release fence waits for this program's C and h stores
        # to land. The reads have returned before the barrier lets the atomic go, since the stores above consume
        # them (C through the decay; h through q . n, unless the sig cell skips normalising, when no other program
        # uses n). That is ordering by data dependence, which GPUs keep, not one the PTX memory model promises for
        # relaxed atomics; the GPU tests run the in-place step token by token against the oracle.
        tl.debug_barrier()
        if tl.atomic_add(count_ptr + i_bh, 1, sem="relaxed") == NV - 1:
            if BK >= DHQK:  # one key tile: the new n is still in registers (no second round trip to memory)
                o_k = tl.arange(0, BK)
                tl.store(nout_ptr + i_bh * DHQK + o_k, b_n.to(nout_ptr.dtype.element_ty), mask=o_k < DHQK)
            else:
                for i_k in range(0, tl.cdiv(DHQK, BK)):
                    o_k = i_k * BK + tl.arange(0, BK)
                    m_k = o_k < DHQK
                    b_k = tl.load(k_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
                    b_n = b_decay * tl.load(n_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32) + b_w * b_k
                    tl.store(nout_ptr + i_bh * DHQK + o_k, b_n.to(nout_ptr.dtype.element_ty), mask=m_k)
            tl.store(mout_ptr + i_bh, b_m_new.to(mout_ptr.dtype.element_ty))
            tl.atomic_xchg(count_ptr + i_bh, 0, sem="relaxed")  # the next launch reads it: the kernel's end orders it
    else:
        if i_v == 0:
            tl.store(mout_ptr + i_bh, b_m_new.to(mout_ptr.dtype.element_ty))


@triton.jit
def recurrent_step_split_kernel(
    q_ptr,  # (B, NH, DHQK) contiguous
    k_ptr,  # (B, NH, DHQK)
    v_ptr,  # (B, NH, DHHV)
    i_ptr,  # (B, NH) gate pre-activations
    f_ptr,  # (B, NH)
    C_ptr,  # (B, NH, DHQK, DHHV) state in
    n_ptr,  # (B, NH, DHQK)
    m_ptr,  # (B, NH)
    Cout_ptr,  # (B, NH, DHQK, DHHV) state out (== C_ptr when INPLACE)
    nout_ptr,  # (B, NH, DHQK)
    mout_ptr,  # (B, NH)
    h_ptr,  # (B, NH, DHHV) output
    count_ptr,  # (B * NH,) int32 arrival counters, all 0 between calls
    part_ptr,  # (B * NH, NK, DHHV) fp32 scratch: each key tile's share of the numerator
    parts_ptr,  # (B * NH, NK) fp32 scratch: each key tile's share of n . q
    scale,
    eps,
    DHQK: tl.constexpr,
    DHHV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NK: tl.constexpr,
    NKP: tl.constexpr,  # NK padded to a power of two
    NV: tl.constexpr,
    INPLACE: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """The launch parameter "k_tiles": "programs": one program per [BK, BV] tile of C (grid (NK * NV, B * NH)), for
    small batches, where one program per value tile walking DHQK leaves the GPU idle. Each program updates its tile,
    stores its share of the numerator (and, in the first value tile, its slice of n and its share of n . q); the last
    program of a head to arrive (the arrival counter) sums the shares in a fixed order (so h is deterministic),
    normalises, writes h (and m), and resets the counter. Only the first value tile's programs read or write a slice
    of n, and each program only its own tile of C, so INPLACE needs no further ordering; m is written last."""
    scale, eps = _fp32(scale), _fp32(eps)
    i_kv, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_k, i_v = i_kv // NV, i_kv % NV
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DHQK, o_v < DHHV
    b_decay, b_w, b_m_new = _step_gates(i_ptr, f_ptr, m_ptr, i_bh)
    b_q = tl.load(q_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(k_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_v = tl.load(v_ptr + i_bh * DHHV + o_v, mask=m_v, other=0.0).to(tl.float32)
    o_kv = i_bh * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_C = b_decay * tl.load(C_ptr + o_kv, mask=m_kv, other=0.0).to(tl.float32) + b_w * b_k[:, None] * b_v[None, :]
    tl.store(Cout_ptr + o_kv, b_C.to(Cout_ptr.dtype.element_ty), mask=m_kv)
    tl.store(part_ptr + (i_bh * NK + i_k) * DHHV + o_v, tl.sum(b_C * b_q[:, None], axis=0), mask=m_v)
    if i_v == 0:
        b_n = b_decay * tl.load(n_ptr + i_bh * DHQK + o_k, mask=m_k, other=0.0).to(tl.float32) + b_w * b_k
        tl.store(nout_ptr + i_bh * DHQK + o_k, b_n.to(nout_ptr.dtype.element_ty), mask=m_k)
        tl.store(parts_ptr + i_bh * NK + i_k, tl.sum(b_n * b_q, axis=0))
    tl.debug_barrier()  # this program's shares are stored before it counts itself in
    if tl.atomic_add(count_ptr + i_bh, 1) == NK * NV - 1:
        o_nk = tl.arange(0, NKP)
        b_qn = tl.load(parts_ptr + i_bh * NK + o_nk, mask=o_nk < NK, other=0.0, cache_modifier=".cg")
        b_qn = tl.sum(b_qn, axis=0) * scale
        b_den = _step_den(b_qn, b_m_new, eps, NORMALIZE)
        for j_v in range(0, NV):
            o_hv = j_v * BV + tl.arange(0, BV)
            m_hv = o_hv < DHHV
            b_num = tl.zeros([BV], dtype=tl.float32)
            for j_k in range(0, NK):  # in order: the same h whichever program came last
                b_num += tl.load(part_ptr + (i_bh * NK + j_k) * DHHV + o_hv, mask=m_hv, other=0.0,
                                 cache_modifier=".cg")  # fmt: skip
            tl.store(h_ptr + i_bh * DHHV + o_hv, (b_num * scale / b_den).to(h_ptr.dtype.element_ty), mask=m_hv)
        tl.store(mout_ptr + i_bh, b_m_new.to(mout_ptr.dtype.element_ty))
        tl.atomic_xchg(count_ptr + i_bh, 0)
