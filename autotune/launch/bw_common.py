"""What both generated backwards (chunkwise_bw, parallel_bw) do first: inputs made contiguous, the optional states
and last-state cotangents normalised, the per-token preparation kernel (1/den, ds, and the max state's gradients G
and Fl), and the start of the max state's chain."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..checks import MLSTMInputError
from .common import cdiv, contiguous, dot_precision, empty, next_pow2


def dot64(a: torch.Tensor, b: torch.Tensor, dims: int) -> torch.Tensor:
    """sum(a * b) over the last ``dims`` dims, in float64."""
    return (a.double() * b.double()).sum(tuple(range(-dims, 0)))


def prepare(module, cell: str, q, k, v, i, f, C0, n0, m0, h, s, mt, dh, dC, dn, dm, last, *, eps: float,
            normalize: bool, rows: int | None = None) -> SimpleNamespace:  # fmt: skip
    """Everything the kernels of a backward share, as a namespace (see the module docstring). Without an initial
    state, C0/n0/m0 are 1-element dummies; without a last-state cotangent, dC/dn/T are. States and their cotangents
    have ``rows`` (default B) rows of NH: one per document of a packed sequence."""
    B, NH, S, _ = q.shape
    rows = B if rows is None else rows
    DHHV = v.shape[-1]
    if dC is not None and (dn is None or (cell == "exp" and (dm is None or last is None or last[2] is None))):
        raise MLSTMInputError("a last-state cotangent needs all of dC, dn (and dm and the last state for the exp cell)")
    f32 = dict(dtype=torch.float32, device=q.device)
    dummy = torch.zeros(1, **f32)
    q, k, v, i, f, h, dh = contiguous(q, k, v, i, f, h, dh)
    has_state, has_last = C0 is not None, dC is not None
    if has_state:
        m0 = m0 if m0 is not None else torch.zeros(rows, NH, **f32)
        C0, n0, m0 = contiguous(C0, n0, m0.reshape(rows, NH))
    else:
        C0 = n0 = m0 = dummy
    r, ds, G, Fl = (empty(B, NH, S, **f32) for _ in range(4))
    module.bw_prep_kernel[(cdiv(S, 64), B * NH)](
        h, dh, s, mt, r, ds, G, Fl, S, eps, DHHV=DHHV, BT=64, BV=min(64, next_pow2(DHHV)), NORMALIZE=normalize
    )
    T = dummy
    if has_last:
        dC, dn = contiguous(dC.float(), dn.float())
        if cell == "exp":
            # the chain starts from the last state's m, its state held fixed; in float64 (a difference of dot products)
            T = (dm.reshape(rows, NH).double() - dot64(last[0], dC, 2) - dot64(last[1], dn, 1)).float()
    else:
        dC = dn = dummy
    return SimpleNamespace(q=q, k=k, v=v, i=i, f=f, h=h, dh=dh, C0=C0, n0=n0, m0=m0, has_state=has_state,
                           has_last=has_last, dC=dC, dn=dn, T=T, r=r, ds=ds, G=G, Fl=Fl, f32=f32, dummy=dummy,
                           prec=dot_precision(q.dtype))  # fmt: skip
