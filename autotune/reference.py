"""The oracle: the mLSTM of docs/math.md in plain PyTorch, in its three forms.

    mlstm_recurrent  the definition (docs/math.md §1/§2): a loop over time steps
    mlstm_parallel   the quadratic form (§3), with the initial-state column
    mlstm_chunkwise  the chunkwise form (§4): a recurrence over chunk borders, the parallel form within a chunk

All three compute in ``promote(q.dtype, float32)``: pass float64 tensors (on the CPU) to get the oracle the tests
and the tuner's correctness gate compare against. They are written for clarity, not speed, and are differentiable
with autograd, which makes them the judge of every gradient too.

Shapes: q, k (B, NH, S, DHQK); v (B, NH, S, DHHV); i, f (B, NH, S); states C (B, NH, DHQK, DHHV), n (B, NH, DHQK),
m (B, NH, 1) (``(B, NH)`` is accepted on input). Returns h (B, NH, S, DHHV) and, when ``return_last_states``,
``(C, n, m)`` for the exp cell or ``(C, n)`` for the sig cell (which has no max state).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Cell = Literal["exp", "sig"]

__all__ = ["mlstm_recurrent", "mlstm_parallel", "mlstm_chunkwise", "random_inputs", "Cell"]


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def _initial_states(q, v, c_initial, n_initial, m_initial, dtype):
    """Cast the given initial states to ``dtype`` or make the default zeros (C_0 = 0, n_0 = 0, m_0 = 0)."""
    B, NH, _, DHQK = q.shape
    DHHV = v.shape[-1]
    kw = dict(dtype=dtype, device=q.device)
    C0 = torch.zeros(B, NH, DHQK, DHHV, **kw) if c_initial is None else c_initial.to(dtype)
    n0 = torch.zeros(B, NH, DHQK, **kw) if n_initial is None else n_initial.to(dtype)
    m0 = torch.zeros(B, NH, 1, **kw) if m_initial is None else m_initial.to(dtype).reshape(B, NH, 1)
    return C0, n0, m0


def _pack_states(cell: Cell, C, n, m):
    return (C, n, m) if cell == "exp" else (C, n)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    *,
    cell: Cell = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    return_last_states: bool = False,
):
    """The definition: docs/math.md §1 (cell="exp") or §2 (cell="sig"), one time step after the other."""
    dtype = _compute_dtype(q)
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    C, n, m = _initial_states(q, v, c_initial, n_initial, m_initial, dtype)
    scale = q.shape[-1] ** -0.5
    hs = []
    for t in range(q.shape[2]):
        q_t, k_t, v_t = q[:, :, t] * scale, k[:, :, t], v[:, :, t]
        i_t, f_t = i[:, :, t, None], f[:, :, t, None]  # (B, NH, 1)
        if cell == "exp":
            lf_t = F.logsigmoid(f_t)
            m_new = torch.maximum(lf_t + m, i_t)
            f_gate = torch.exp(lf_t + m - m_new)
            i_gate = torch.exp(i_t - m_new)
            m = m_new
        else:
            f_gate, i_gate = torch.sigmoid(f_t), torch.sigmoid(i_t)
        C = f_gate[..., None] * C + i_gate[..., None] * (k_t[..., :, None] * v_t[..., None, :])
        n = f_gate * n + i_gate * k_t
        num = torch.einsum("bhkv,bhk->bhv", C, q_t)
        s = (n * q_t).sum(-1, keepdim=True)
        if cell == "exp":
            h_t = num / (torch.maximum(s.abs(), torch.exp(-m)) + eps)
        elif normalize:
            h_t = num / (torch.clamp(s.abs(), min=1.0) + eps)
        else:
            h_t = num
        hs.append(h_t)
    h = torch.stack(hs, dim=2)
    if return_last_states:
        return h, _pack_states(cell, C, n, m)
    return h


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    *,
    cell: Cell = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    return_last_states: bool = False,
):
    """The quadratic form of docs/math.md §3, including the initial-state column ``log D_t0 = F_t + m_0``.

    ``F_t - F_j`` is summed segment by segment (a masked cumulative sum), so it does not cancel for long S.
    """
    dtype = _compute_dtype(q)
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    C0, n0, m0 = _initial_states(q, v, c_initial, n_initial, m_initial, dtype)
    S = q.shape[2]
    lf = F.logsigmoid(f)  # (B, NH, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    strictly_lower = causal.tril(-1)
    # seg[t, j] = sum_{s=j+1..t} lf_s for j <= t: a cumulative sum down each column of the strictly lower part
    seg = torch.where(strictly_lower, lf[..., :, None].expand(*lf.shape, S), 0.0).cumsum(-2)
    F_t = lf.cumsum(-1)  # (B, NH, S)
    i_log = i if cell == "exp" else F.logsigmoid(i)
    log_D = torch.where(causal, seg + i_log[..., None, :], -math.inf)  # (B, NH, S, S)
    log_D0 = F_t + m0 if cell == "exp" else F_t  # (B, NH, S)
    if cell == "exp":
        m = torch.maximum(log_D.amax(-1), log_D0)  # (B, NH, S)
    else:
        m = torch.zeros_like(F_t)
    D = torch.exp(log_D - m[..., None])
    D0 = torch.exp(log_D0 - m)
    q_s = q * q.shape[-1] ** -0.5
    P = (q_s @ k.transpose(-1, -2)) * D  # (B, NH, S, S)
    num = P @ v + D0[..., None] * (q_s @ C0)
    s = P.sum(-1) + D0 * (q_s @ n0[..., None])[..., 0]
    if cell == "exp":
        h = num / (torch.maximum(s.abs(), torch.exp(-m)) + eps)[..., None]
    elif normalize:
        h = num / (torch.clamp(s.abs(), min=1.0) + eps)[..., None]
    else:
        h = num
    if not return_last_states:
        return h
    w = D[:, :, -1, :]  # (B, NH, S) weights of each token in the last state
    w0 = D0[:, :, -1, None]  # (B, NH, 1)
    C_last = torch.einsum("bhs,bhsk,bhsv->bhkv", w, k, v) + w0[..., None] * C0
    n_last = torch.einsum("bhs,bhsk->bhk", w, k) + w0 * n0
    return h, _pack_states(cell, C_last, n_last, m[:, :, -1, None])


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    c_initial: torch.Tensor | None = None,
    n_initial: torch.Tensor | None = None,
    m_initial: torch.Tensor | None = None,
    *,
    cell: Cell = "exp",
    normalize: bool = True,
    eps: float = 1e-6,
    return_last_states: bool = False,
    chunk_size: int = 64,
):
    """The chunkwise form of docs/math.md §4: the parallel form within each chunk, the previous chunk's last state as
    its initial-state column; chunk-border states are carried from chunk to chunk. The last chunk may be short."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    S = q.shape[2]
    state = (c_initial, n_initial, m_initial)
    hs = []
    for start in range(0, S, chunk_size):
        sl = slice(start, min(start + chunk_size, S))
        h_c, last = mlstm_parallel(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], f[:, :, sl], *state,
            cell=cell, normalize=normalize, eps=eps, return_last_states=True,
        )  # fmt: skip
        hs.append(h_c)
        state = tuple(last) + (None,) * (3 - len(last))
    h = torch.cat(hs, dim=2)
    if return_last_states:
        return h, last
    return h


def random_inputs(
    B: int,
    NH: int,
    S: int,
    DHQK: int,
    DHHV: int,
    *,
    dtype: torch.dtype = torch.float64,
    gate_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    with_states: bool = False,
    generator: torch.Generator | None = None,
    max_outlier: float = 20.0,
) -> dict[str, torch.Tensor]:
    """Inputs that exercise the stabiliser (docs/math.md §7): ĩ ~ N(0, 3) with a few outliers of magnitude
    max_outlier/2 .. max_outlier (default 20), f̃ spread from strongly forgetting (-6) to nearly remembering (+8);
    never zeros. Drawn on the generator's device (a CUDA generator draws a large shape in milliseconds, the CPU's
    takes seconds). Returns keyword arguments for any kernel."""
    gate_dtype = gate_dtype or dtype
    at = {"generator": generator, "device": generator.device if generator is not None else "cpu"}  # drawn there

    def randn(*shape, std=1.0):
        return torch.randn(*shape, **at, dtype=torch.float64) * std

    x = {
        "q": randn(B, NH, S, DHQK),
        "k": randn(B, NH, S, DHQK),
        "v": randn(B, NH, S, DHHV),
        "i": randn(B, NH, S, std=3.0),
        "f": torch.rand(B, NH, S, **at, dtype=torch.float64) * 14.0 - 6.0,
    }
    n_outliers = max(1, (B * NH * S) // 50)
    idx = torch.randint(0, B * NH * S, (n_outliers,), **at)
    signs = torch.where(torch.rand(n_outliers, **at) < 0.5, -1.0, 1.0).double()
    magnitude = max_outlier / 2 * (1.0 + torch.rand(n_outliers, **at, dtype=torch.float64))
    x["i"].view(-1)[idx] = signs * magnitude
    if with_states:
        x["c_initial"] = randn(B, NH, DHQK, DHHV)
        x["n_initial"] = randn(B, NH, DHQK)
        x["m_initial"] = randn(B, NH, 1, std=2.0)
    out = {}
    for name, t in x.items():
        t_dtype = (
            gate_dtype
            if name in ("i", "f")
            else (torch.promote_types(dtype, torch.float32) if "initial" in name else dtype)
        )
        out[name] = t.to(device=device, dtype=t_dtype)
    return out
