"""Packed variable-length sequences: ``cu_seqlens``, flash-linear-attention's convention.

Several sequences laid end to end in one of batch size 1: q, k (1, NH, T, DHQK), v (1, NH, T, DHHV), i, f (1, NH, T),
and ``cu_seqlens``, the N + 1 offsets of the N sequences (int64 or int32, from 0 to T, strictly increasing: every
sequence has at least one token). Initial states are per sequence: c (N, NH, DHQK, DHHV), n (N, NH, DHQK), m (N, NH,
1); with ``return_last_states`` so are the last states. The result is each sequence run alone, concatenated along
the tokens: outputs, last states and the gradients of every input and initial state.

Every chunkwise and parallel kernel of the registry takes ``cu_seqlens=`` (``packable``). The Triton entries with
the two-pass structure walk the documents in their kernels, forward and backward (``walk_documents``: one launch per
kernel for all of them, bit for bit each document alone under the same configuration). The other kernels, and calls
under ``torch.compile``, run once per sequence on its slice, so the result equals running each sequence alone by
construction; that needs the offsets on the host: pass ``cu_seqlens_cpu`` (a host copy, as flash-linear-attention
accepts: a CPU tensor, or a list of ints, which ``torch.compile`` traces without a graph break) to avoid one
device-to-host copy of ``cu_seqlens`` per call.
"""

from __future__ import annotations

import functools

import torch

from ..checks import MLSTMInputError


def offsets(cu_seqlens, cu_seqlens_cpu, T: int) -> list[int]:
    """The checked offsets as Python ints (from ``cu_seqlens_cpu`` when given, else one copy of ``cu_seqlens``)."""
    given = cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens
    name = "cu_seqlens_cpu" if cu_seqlens_cpu is not None else "cu_seqlens"
    if isinstance(cu_seqlens_cpu, (list, tuple)):  # Python ints: nothing to copy, and torch.compile traces through
        if len(cu_seqlens_cpu) < 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in cu_seqlens_cpu):
            raise MLSTMInputError("cu_seqlens_cpu as a list must hold N + 1 >= 2 ints")
        cu_seqlens_cpu = torch.tensor(cu_seqlens_cpu, dtype=torch.int64) if cu_seqlens is not None else None
    for label, t in (("cu_seqlens", cu_seqlens), ("cu_seqlens_cpu", cu_seqlens_cpu)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise MLSTMInputError(f"{label} must be a torch.Tensor of int64 or int32 offsets, got {type(t).__name__}")
        if t.dtype not in (torch.int64, torch.int32):
            raise MLSTMInputError(f"{label} must hold int64 or int32 offsets, got {t.dtype}")
        if t.dim() != 1 or t.numel() < 2:
            raise MLSTMInputError(f"{label} must be 1-D with N + 1 >= 2 offsets, got shape {tuple(t.shape)}")
    if cu_seqlens is not None and cu_seqlens_cpu is not None and cu_seqlens.numel() != cu_seqlens_cpu.numel():
        raise MLSTMInputError(f"cu_seqlens has {cu_seqlens.numel()} offsets, cu_seqlens_cpu {cu_seqlens_cpu.numel()}")
    values = list(given) if isinstance(given, (list, tuple)) else given.tolist()
    if values[0] != 0:
        raise MLSTMInputError(f"{name} must start at 0, got {values[0]}")
    if values[-1] != T:
        raise MLSTMInputError(f"{name} must end at the packed length T = {T}, got {values[-1]}")
    for j, (a, b) in enumerate(zip(values, values[1:])):
        if b <= a:
            raise MLSTMInputError(f"{name} must be strictly increasing (every sequence at least one token); "
                                  f"sequence {j} runs from {a} to {b}")  # fmt: skip
    return values


def _check_states(states, N: int) -> None:
    for name, t in zip(("c_initial", "n_initial", "m_initial"), states):
        if t is not None and (t.dim() < 1 or t.shape[0] != N):
            raise MLSTMInputError(f"with cu_seqlens of {N} sequences, {name} must have {N} rows (one per sequence), "
                                  f"got shape {tuple(t.shape)}")  # fmt: skip


def packed_call(kernel, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, args, kwargs, *,
                cu_seqlens, cu_seqlens_cpu):  # fmt: skip
    """``kernel`` over each packed sequence, the results concatenated (module docstring)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise MLSTMInputError("q must be a (1, NH, T, DHQK) tensor with cu_seqlens")
    if q.shape[0] != 1:
        raise MLSTMInputError(f"packed sequences (cu_seqlens) need batch size 1, got B = {q.shape[0]}")
    bounds = offsets(cu_seqlens, cu_seqlens_cpu, q.shape[2])
    N = len(bounds) - 1
    states = (c_initial, n_initial, m_initial)
    _check_states(states, N)
    walk = getattr(kernel, "walk_documents", None)
    if walk is not None and not torch.compiler.is_compiling():
        cu = cu_seqlens if cu_seqlens is not None else torch.tensor(bounds, dtype=torch.int64, device=q.device)
        out = walk(q, k, v, i, f, *states, return_last_states, *args, cu=cu.to(q.device), N=N, **kwargs)
        if out is not None:
            return out
    hs, lasts = [], []
    for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
        init = [t[j : j + 1] if t is not None else None for t in states]
        part = [x[:, :, a:b] for x in (q, k, v, i, f)]
        out = kernel(*part, *init, return_last_states, *args, **kwargs)
        if return_last_states:
            h, last = out
            lasts.append(last)
        else:
            h = out
        hs.append(h)
    h = torch.cat(hs, dim=2)
    if not return_last_states:
        return h
    return h, tuple(torch.cat([last[n] for last in lasts], dim=0) for n in range(len(lasts[0])))


def packable(kernel):
    """``kernel`` (a chunkwise or parallel kernel) that also takes ``cu_seqlens=`` and ``cu_seqlens_cpu=``."""

    @functools.wraps(kernel)
    def run(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False, *args,
            cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):  # fmt: skip
        if cu_seqlens is None and cu_seqlens_cpu is None:
            return kernel(q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, *args, **kwargs)
        return packed_call(kernel, q, k, v, i, f, c_initial, n_initial, m_initial, return_last_states, args, kwargs,
                           cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)  # fmt: skip

    run.packable = True
    return run
