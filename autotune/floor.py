"""The floor of a bench row: the least time any kernel could take for it on the GPU the bench runs on.

A row's floor is the larger of two times (a kernel that overlapped its memory traffic with its matrix work
perfectly would reach it, none does better):
    traffic   the bytes the row must move at least, at this GPU's copy bandwidth;
    compute   the matrix work of the chunkwise form, at this GPU's bf16 matmul rate.
Both rates are measured in the same run as the row (``measure_peaks``), so a floor and the times it is compared
with come from one GPU under one clock.

Bytes: the inputs read once and the outputs written once, nothing else. Forward: q, k, v, i, f read, h written.
Forward+backward: that, then q, k, v, i, f and dh read, dq, dk, dv, di, df written (a backward may recompute
whatever it needs from the inputs; nothing of the forward's but h counts). A step: its fp32 state (C, n, m) read
and written, its inputs and h.

Matrix work per token and head (chunk L = ``CHUNK``, DK = DHQK, DV = DHHV):
    4 DK DV       the state's two products: q C (the output's inter-chunk part) and k^T v (the state update)
    L (DK + DV)   the within-chunk products q k^T and (weighted) S v over the causal half of an L x L block
Forward+backward is three times the forward: each product A B of the forward has the two products dA and dB of
the backward. Smaller chunks do less within-chunk work and move more states, whose traffic the floor leaves out;
L = 64 is the bench's chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

CHUNK = 64
GATE_BYTES = 4  # the bench's gates are fp32, as a model computes them


@dataclass(frozen=True)
class Peaks:
    """What this GPU does at best, measured in the run: a device-to-device copy (bytes read + written per second)
    and a bf16 matmul of 8192^3."""

    copy_tb_s: float
    matmul_tflop_s: float


def traffic_bytes(row: dict, element_bytes: int = 2) -> int:
    """Bytes the row must move at least (the module's docstring says which)."""
    B, NH, S, K, V = (row[k] for k in ("B", "NH", "S", "DHQK", "DHHV"))
    if row["op"] == "step":
        state = 2 * 4 * (K * V + K + 1)  # read and written in fp32
        return B * NH * (state + element_bytes * (2 * K + 2 * V) + 2 * GATE_BYTES)
    inputs = element_bytes * (2 * K + V) + 2 * GATE_BYTES
    forward = inputs + element_bytes * V  # h written
    per_token = forward if row["pass"] == "fw" else forward + (inputs + element_bytes * V) + inputs
    return B * NH * S * per_token


def matrix_flops(row: dict) -> int:
    """Floating-point operations of the chunkwise form's matrix products (the module's docstring says which)."""
    B, NH, S, K, V = (row[k] for k in ("B", "NH", "S", "DHQK", "DHHV"))
    if row["op"] == "step":
        return B * NH * 4 * K * V  # k v^T into C and C^T q: matrix-vector work, far below the traffic's time
    forward = B * NH * S * (4 * K * V + CHUNK * (K + V))
    return forward if row["pass"] == "fw" else 3 * forward


def floor_columns(row: dict, peaks: Peaks) -> dict:
    """The row's floor in ms, its two parts and the rates they come from (columns of the bench's JSON)."""
    traffic_ms = traffic_bytes(row) / (peaks.copy_tb_s * 1e12) * 1e3
    compute_ms = matrix_flops(row) / (peaks.matmul_tflop_s * 1e12) * 1e3
    return {"floor_ms": max(traffic_ms, compute_ms), "floor_traffic_ms": traffic_ms, "floor_compute_ms": compute_ms,
            "copy_tb_s": peaks.copy_tb_s, "matmul_tflop_s": peaks.matmul_tflop_s}  # fmt: skip


_PEAKS: Peaks | None = None


def measure_peaks(reps_ms: float = 200.0) -> Peaks:
    """The copy bandwidth (2 GiB copied between two device buffers) and the bf16 matmul rate (8192^3), each the
    median of triton.testing.do_bench; measured once per process."""
    global _PEAKS
    if _PEAKS is None:
        import torch
        import triton.testing

        src = torch.randn(2**29, device="cuda", dtype=torch.float32)  # 2 GiB, far beyond L2
        dst = torch.empty_like(src)
        copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=reps_ms, return_mode="median")
        copy_tb_s = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e12
        del src, dst
        n = 8192
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        mm_ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=reps_ms, return_mode="median")
        _PEAKS = Peaks(copy_tb_s=copy_tb_s, matmul_tflop_s=2 * n**3 / (mm_ms * 1e-3) / 1e12)
        del a, b
        torch.cuda.empty_cache()
    return _PEAKS
