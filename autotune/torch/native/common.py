"""Shared plumbing of the native kernels: validate, cast to the compute dtype, make default states, pack results."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...checks import Dims, check_cell, check_eps, check_sequence_inputs, compute_dtype


@dataclass
class Prepared:
    """Inputs in the compute dtype (float32, or float64 when an input is float64), with explicit initial states.

    ``has_state`` says whether the caller gave initial states; without them C0 = 0, n0 = 0, m0 = 0 (docs/math.md §1).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    i: torch.Tensor
    f: torch.Tensor
    C0: torch.Tensor  # (B, NH, DHQK, DHHV)
    n0: torch.Tensor  # (B, NH, DHQK)
    m0: torch.Tensor  # (B, NH, 1)
    has_state: bool
    dims: Dims
    out_dtype: torch.dtype


def prepare_sequence(q, k, v, i, f, c_initial, n_initial, m_initial, *, cell: str, normalize: bool, eps) -> Prepared:
    check_cell(cell, normalize)
    check_eps(eps)
    if cell == "sig":
        m_initial = None  # the sig cell has no max state; upstream also accepts and ignores it
    dims = check_sequence_inputs(q, k, v, i, f, c_initial, n_initial, m_initial, cell=cell)
    dtype = compute_dtype(q, i, c_initial)
    B, NH, _, DHQK, DHHV = dims.B, dims.NH, dims.S, dims.DHQK, dims.DHHV
    kw = dict(dtype=dtype, device=q.device)
    has_state = c_initial is not None
    C0 = c_initial.to(dtype) if has_state else torch.zeros(B, NH, DHQK, DHHV, **kw)
    n0 = n_initial.to(dtype) if has_state else torch.zeros(B, NH, DHQK, **kw)
    m0 = m_initial.to(dtype).reshape(B, NH, 1) if m_initial is not None else torch.zeros(B, NH, 1, **kw)
    return Prepared(
        q.to(dtype), k.to(dtype), v.to(dtype), i.to(dtype), f.to(dtype), C0, n0, m0, has_state, dims, q.dtype
    )


def pack_output(h: torch.Tensor, last, cell: str, return_last_states: bool, out_dtype: torch.dtype):
    """h in the input dtype; last states (kept in the compute dtype) as (C, n, m) for exp or (C, n) for sig."""
    h = h.to(out_dtype)
    if not return_last_states:
        return h
    C, n, m = last
    return h, ((C, n, m) if cell == "exp" else (C, n))
