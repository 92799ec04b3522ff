"""The tables a generated kernel reads to walk the documents of a packed sequence itself (cu_seqlens, batch size 1):
no per-document launch, and no copy of the offsets to the host.

Each document is cut into chunks of L tokens of its own (its last one short); the chunks of all documents take
consecutive "slots", document j the slots cs[j] to cs[j + 1]. The slots per head are allocated for the most there
can be, cdiv(T, L) + N (each document adds at most one short chunk), so nothing here waits for the device; slots past
the last document's chunks belong to the sentinel document N and their programs do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import cdiv


@dataclass(frozen=True)
class Packing:
    """Documents of a packed sequence of T tokens per head, in chunks of L tokens."""

    cu: torch.Tensor  # (N + 1) int64: token offsets of the documents
    cs: torch.Tensor  # (N + 1) int32: first chunk slot of each document; cs[N] the slots in use
    ss: torch.Tensor  # (slots) int32: the document of each slot, N past the last document's chunks
    N: int

    @property
    def slots(self) -> int:
        return self.ss.numel()


def packing(cu_seqlens: torch.Tensor, T: int, L: int) -> Packing:
    """The tables for checked offsets ``cu_seqlens`` (N + 1 on the kernels' device, from 0 to T, increasing) and
    chunks of ``L`` tokens: a few small device operations, no synchronisation."""
    cu = cu_seqlens.to(torch.int64)
    N = cu.numel() - 1
    chunks = torch.div(cu[1:] - cu[:-1] + (L - 1), L, rounding_mode="floor")
    cs = torch.zeros(N + 1, dtype=torch.int64, device=cu.device)
    cs[1:] = torch.cumsum(chunks, 0)
    slots = torch.arange(cdiv(T, L) + N, dtype=torch.int64, device=cu.device)
    ss = torch.searchsorted(cs[1:], slots, right=True)
    return Packing(cu=cu.contiguous(), cs=cs.to(torch.int32), ss=ss.to(torch.int32), N=N)


def no_packing(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stand-ins for the three tables of a launch over a batch (never read; three tensors, as a recorded launch
    binds each buffer to one parameter, autotune/launch/trace.py)."""
    return tuple(torch.zeros(1, dtype=torch.int32, device=device) for _ in range(3))
