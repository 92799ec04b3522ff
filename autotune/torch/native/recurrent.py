"""Native PyTorch recurrent mLSTM kernels for inference: one step (docs/math.md §5), and a whole sequence step by step.

    mlstm_recurrent_step__native       step interface: (q, k, v, i, f, c, n, m, eps) -> (h, (c, n, m))
    mlstm_recurrent_sequence__native   sequence interface; loops the step kernel over S (any S >= 1)

C and n are kept in ``dtype_state`` (float32 by default; float64 when an input is float64), m in at least fp32.
With ``inplace=True`` the step kernel writes the new state into the caller's c, n, m buffers and returns them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...checks import MLSTMInputError, check_cell, check_eps, check_sequence_inputs, check_step_inputs, compute_dtype


def _state_dtype(dtype_state: torch.dtype, *tensors) -> torch.dtype:
    if dtype_state not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise MLSTMInputError(f"dtype_state must be a floating torch.dtype, got {dtype_state!r}")
    return torch.float64 if compute_dtype(*tensors) == torch.float64 else dtype_state


def _max_state_dtype(state_dtype: torch.dtype) -> torch.dtype:
    """The dtype of m: at least fp32. m is the log-scale of C and n; rounded to 16 bits (bf16 keeps 3 digits) it
    would rescale the whole state by up to a few percent."""
    return torch.promote_types(state_dtype, torch.float32)


def _step(q, k, v, i, f, C, n, m, *, cell: str, normalize: bool, eps: float, dtype):
    """One step in ``dtype``: q, k (B, NH, DHQK), v (B, NH, DHHV), i, f (B, NH, 1), C, n, m in any float dtype."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    i, f = i.to(dtype).reshape(*q.shape[:2], 1), f.to(dtype).reshape(*q.shape[:2], 1)
    C, n = C.to(dtype), n.to(dtype)
    if cell == "exp":
        m = m.to(dtype).reshape(*q.shape[:2], 1)
        log_f = F.logsigmoid(f)
        m_new = torch.maximum(log_f + m, i)
        decay, weight = torch.exp(log_f + m - m_new), torch.exp(i - m_new)
    else:
        m_new, decay, weight = m, torch.sigmoid(f), torch.sigmoid(i)
    kv = torch.einsum("bhk,bhv->bhkv", k * weight, v)  # rank-1 update i' k v^T
    C_new = torch.addcmul(kv, decay[..., None], C)
    n_new = torch.addcmul(k * weight, decay, n)
    q_s = q * q.shape[-1] ** -0.5
    num = torch.einsum("bhkv,bhk->bhv", C_new, q_s)
    dot = torch.einsum("bhk,bhk->bh", n_new, q_s)[..., None]
    if cell == "exp":
        h = num / (torch.maximum(dot.abs(), torch.exp(-m_new)) + eps)
    elif normalize:
        h = num / (torch.clamp(dot.abs(), min=1.0) + eps)
    else:
        h = num
    return h, C_new, n_new, m_new


def mlstm_recurrent_step__native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c: torch.Tensor | None,
    n: torch.Tensor | None,
    m: torch.Tensor | None,
    eps: float = 1e-6,
    dtype_state: torch.dtype = torch.float32,
    inplace: bool = False,
    cell: str = "exp",
    normalize: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """One mLSTM step. q, k: (B, NH, DHQK); v: (B, NH, DHHV); i, f: (B, NH, 1) or (B, NH); state c
    (B, NH, DHQK, DHHV), n (B, NH, DHQK), m (B, NH, 1), or all None for the zero state. Returns h (B, NH, DHHV) in
    q's dtype and the new state in ``dtype_state``. ``inplace=True`` writes the new state into c, n, m (which must be
    given) and returns those buffers. ``cell="sig"`` runs docs/math.md §2 (m is passed through unchanged)."""
    check_cell(cell, normalize)
    check_eps(eps)
    dims = check_step_inputs(q, k, v, i, f, c, n, m if cell == "exp" else None, cell=cell)
    dtype = compute_dtype(q, i, c)
    if c is None:
        if inplace:
            raise MLSTMInputError("inplace=True needs the state buffers c, n, m")
        kw = dict(dtype=dtype, device=q.device)
        c = torch.zeros(dims.B, dims.NH, dims.DHQK, dims.DHHV, **kw)
        n = torch.zeros(dims.B, dims.NH, dims.DHQK, **kw)
        m = torch.zeros(dims.B, dims.NH, 1, **kw) if cell == "exp" else m
    h, C_new, n_new, m_new = _step(q, k, v, i, f, c, n, m, cell=cell, normalize=normalize, eps=eps, dtype=dtype)
    h = h.to(q.dtype)
    if inplace:
        c.copy_(C_new)
        n.copy_(n_new)
        if cell == "exp":
            m.copy_(m_new.reshape(m.shape))
        return h, (c, n, m)
    state_dtype = _state_dtype(dtype_state, q, i, c)
    m_out = m_new.to(_max_state_dtype(state_dtype)) if cell == "exp" else m
    return h, (C_new.to(state_dtype), n_new.to(state_dtype), m_out)


def mlstm_recurrent_sequence__native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    return_last_states: bool = False,
    eps: float = 1e-6,
    dtype_state: torch.dtype = torch.float32,
    cell: str = "exp",
    normalize: bool = True,
    **kwargs,
):
    """The recurrent form over a whole sequence, one native step per token (any S >= 1; differentiable by
    autograd). Shapes as the chunkwise interface; returns h (B, NH, S, DHHV) in q's dtype and, on request, the last
    state in ``dtype_state``: (C, n, m) for the exp cell, (C, n) for the sig cell."""
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None
    dims = check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell)
    state_dtype = _state_dtype(dtype_state, q, i, c_initial)
    kw = dict(dtype=state_dtype, device=q.device)
    m_dtype = _max_state_dtype(state_dtype)
    C = c_initial if c_initial is not None else torch.zeros(dims.B, dims.NH, dims.DHQK, dims.DHHV, **kw)
    n = n_initial if n_initial is not None else torch.zeros(dims.B, dims.NH, dims.DHQK, **kw)
    m = None
    if cell == "exp":
        m = m_initial.reshape(dims.B, dims.NH, 1) if m_initial is not None else torch.zeros(dims.B, dims.NH, 1, **kw)
        m = m.to(m_dtype)
    dtype = compute_dtype(q, i, c_initial)
    hs = []
    for t in range(dims.S):
        h, C, n, m = _step(
            q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], C, n, m,
            cell=cell, normalize=normalize, eps=eps, dtype=dtype,
        )  # fmt: skip
        C, n = C.to(state_dtype), n.to(state_dtype)
        m = m.to(m_dtype) if cell == "exp" else m
        hs.append(h)
    h = torch.stack(hs, dim=2).to(q.dtype)
    if not return_last_states:
        return h
    return h, ((C, n, m) if cell == "exp" else (C, n))


step_registry = {"native": mlstm_recurrent_step__native}
sequence_registry = {"native_sequence__native": mlstm_recurrent_sequence__native}
