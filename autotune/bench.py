"""``mlstm-tune bench``: our kernels against the alternatives, side by side on the same inputs, in one run.

Rows: the chunkwise form, forward ("fw") and forward+backward ("fwbw"), at 65,536 tokens with
S in {2048, 8192, 32768} on the head layouts NH=8 DHQK=256 DHHV=512 and NH=32 DHQK=DHHV=128; the step kernel
at B in {1, 16, 128, 512} on NH=8 256/512 with an fp32 state (also under torch.compile: ours_compiled_ms); packed
documents (64 of random lengths in 65,536 tokens, cu_seqlens, 7B layout) against the same documents padded to the
longest (measure_packed); one long sequence (B=1, 7B layout, S in LONG_LENGTHS, ``--only long``), compared per
token with the batched rows. Columns, where they can be measured:
    ours_ms             chunkwise--triton_auto / the Triton step kernel, as dispatched from the tuning database
    default_ms          the same with every structure's built-in default (MLSTM_AUTOTUNE_DISPATCH=0)
    upstream_ms         mlstm_kernels' chunkwise--triton_xl_chunk (chunk 128) / its Triton step kernel
    upstream_limit_ms   mlstm_kernels' chunkwise--triton_limit_chunk (chunk 64)
    fla_ms              FLA's chunk_simple_gla, forward only (a simpler cell: no input gate, no normaliser)
    sdpa_ms             torch's scaled_dot_product_attention, causal (only where DHQK == DHHV)
    jax_ms              the same kernel as ours_ms from JAX (autotune.jax, under jax.jit; the step with its state
                        donated), and ours_wall_ms the PyTorch call timed the same way: wall clock per call to
                        completion, the median (JAX runs on its own stream, which CUDA events of torch's miss)
    jax_scan_ms         the JAX step kernel in a decoding loop: SCAN_STEPS steps in one jitted lax.fori_loop, the
                        state carried through it; wall clock per loop / SCAN_STEPS (step rows)
    floor_ms            the least time any kernel could take for the row on this GPU (autotune/floor.py: the
                        row's minimal traffic at the copy bandwidth and its matrix work at the bf16 matmul rate,
                        both rates measured in the same run; floor_traffic_ms, floor_compute_ms, copy_tb_s and
                        matmul_tflop_s beside it)
Comparison libraries are optional imports: a missing one, or a call that fails, is reported in the row's
"notes", never fatal. Timing: triton.testing.do_bench (warm-up, then the median), inputs of 65,536 tokens (far
beyond the 60 MB L2), bf16, never zeros. Without a GPU, ``--smoke`` runs the same code on tiny shapes under
Triton's interpreter: wall-clock numbers that say nothing about speed, labelled as such.
Output: <out>/<GPU>-bench.json (the rows), -bench.md (a table with ratios) and -bench.png (a plot).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import db as tdb
from . import floor
from .measure import graphed
from .report import _text, write_png

TOKENS = 65536
LAYOUTS = ((8, 256, 512), (32, 128, 128))
COLUMNS = ("ours_ms", "default_ms", "upstream_ms", "upstream_limit_ms", "fla_ms", "sdpa_ms", "jax_ms", "ours_wall_ms")
WALL_COLUMNS = ("jax_ms", "ours_wall_ms")


@dataclass(frozen=True)
class Row:
    op: str  # "chunkwise" | "step"
    pass_: str  # "fw" | "fwbw"
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int


def rows(smoke: bool) -> list[Row]:
    if smoke:
        return ([Row("chunkwise", p, 1, 2, 64, 16, 16) for p in ("fw", "fwbw")] + [Row("step", "fw", 2, 2, 1, 16, 16)]
                + [Row("packed", p, 1, 2, 64, 16, 16) for p in ("fw", "fwbw")])  # fmt: skip
    out = [Row("chunkwise", p, TOKENS // S, NH, S, K, V) for NH, K, V in LAYOUTS for S in (2048, 8192, 32768)
           for p in ("fw", "fwbw")]  # fmt: skip
    out += [Row("step", "fw", B, 8, 1, 256, 512) for B in (1, 16, 128, 512)]
    out += [Row("packed", p, 1, 8, TOKENS, 256, 512) for p in ("fw", "fwbw")]
    return out + [Row("chunkwise", p, 1, 8, S, 256, 512) for S in LONG_LENGTHS for p in ("fw", "fwbw")]


LONG_LENGTHS = (65536, 262144)  # one long sequence, B=1, at the 7B layout: compared per token with the batched rows


def _is_long(op: str, B: int, S: int) -> bool:
    """One chunkwise sequence of at least 65,536 tokens (the "long" rows)."""
    return op == "chunkwise" and B == 1 and S >= TOKENS


def group(row: Row) -> str:
    """The name ``--only`` selects a row by: its op, or "long" for one sequence of at least 65,536 tokens."""
    return "long" if _is_long(row.op, row.B, row.S) else row.op


DOCUMENTS = 64  # a packed row: this many documents of random lengths, PACKED_SMOKE_DOCUMENTS in the smoke run
PACKED_SMOKE_DOCUMENTS = 4


def document_lengths(total: int, n: int) -> list[int]:
    """``n`` random document lengths (seeded, each at least 1, log-uniform-ish spread) summing to ``total``."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.exp(3.0 * torch.rand(n, generator=gen))
    lengths = (weights / weights.sum() * (total - n)).floor().long() + 1
    lengths[0] += total - int(lengths.sum())
    return lengths.tolist()


def measure_packed(row: Row, device: str, reps_ms: float) -> dict:
    """A packed row: the documents packed into one sequence (cu_seqlens, ours_ms) against the same documents padded
    to the longest (padded_ms, one batch of B = documents), both through chunkwise--triton_auto."""
    from .torch import get_mlstm_kernel

    timer = _timer(device, reps_ms)
    n = DOCUMENTS if row.S == TOKENS else PACKED_SMOKE_DOCUMENTS
    lengths = document_lengths(row.S, n)
    x = _inputs(row, device, torch.bfloat16 if device == "cuda" else torch.float32)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    kernel = get_mlstm_kernel("chunkwise--triton_auto")
    out = {"op": row.op, "pass": row.pass_, "B": row.B, "NH": row.NH, "S": row.S, "DHQK": row.DHQK,
           "DHHV": row.DHHV, "documents": n, "longest": max(lengths), "notes": {}}  # fmt: skip
    longest = max(lengths)
    padded = {}
    for name, t in x.items():  # each document's tokens at the start of its own row, zeros after
        rows_ = [torch.nn.functional.pad(t[0, :, a:b], (0, 0, 0, longest - (b - a)) if t.dim() == 4
                 else (0, longest - (b - a))) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]  # fmt: skip
        padded[name] = torch.stack(rows_)
    calls = {
        "ours_ms": _sequence_call(kernel, x, row.pass_, chunk_size=64, cu_seqlens=cu.to(device), cu_seqlens_cpu=cu),
        "padded_ms": _sequence_call(kernel, padded, row.pass_, chunk_size=64),
    }
    for column, fn in calls.items():
        try:
            out[column] = float(timer(fn))
        except Exception as err:  # noqa: BLE001 - reported, not fatal
            out["notes"][column] = f"{type(err).__name__}: {str(err)[:200]}"
    return _with_floor(out, device, reps_ms)


def _timer(device: str, reps_ms: float):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=reps_ms, return_mode="median")

    def wall(fn):  # interpreter: one warm-up, then one timed call
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return wall


def _wall_timer(device: str, reps_ms: float):
    """Median wall-clock time per call of ``fn`` (which returns once its work is done), after a warm-up."""

    def wall(fn):
        for _ in range(3):
            fn()
        times, spent = [], 0.0
        while spent < reps_ms or len(times) < 5:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
            spent += times[-1]
        return float(np.median(times))

    return wall if device == "cuda" else _timer(device, reps_ms)


def _inputs(row: Row, device: str, dtype: torch.dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    B, NH, S, K, V = row.B, row.NH, row.S, row.DHQK, row.DHHV

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    x = {"q": rnd(B, NH, S, K).to(dtype), "k": rnd(B, NH, S, K).to(dtype), "v": rnd(B, NH, S, V).to(dtype),
         "i": rnd(B, NH, S, scale=2.0), "f": rnd(B, NH, S, scale=2.0) + 3.0}  # fmt: skip
    return x


def _sequence_call(kernel, x: dict, pass_: str, **kw):
    """fw: one call without autograd; fwbw: forward and backward of sum(h * w), the gradients returned
    (torch.autograd.grad), not added into .grad: a training step with the optimizer's default zero_grad(set_to_none)
    does no such addition, which cost 0.73 ms per call at the 7B layout (a bf16 add per input; profile_backward.py),
    for every implementation alike."""
    if pass_ == "fw":

        def fw():
            with torch.no_grad():
                kernel(**x, **kw)

        return fw
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    w = None

    def fwbw():
        nonlocal w
        h = kernel(**leaves, **kw)
        h = h[0] if isinstance(h, tuple) else h
        if w is None:
            w = torch.randn_like(h)
        torch.autograd.grad(h, list(leaves.values()), w, allow_unused=True)  # SDPA has no gates

    return fwbw


def _dispatch(on: bool) -> None:
    """Calls made from now on (PyTorch's, and JAX's traces) run the tuning database's choice, or with ``on`` False
    every structure's built-in default (MLSTM_AUTOTUNE_DISPATCH=0)."""
    from .dispatch import dispatcher

    os.environ["MLSTM_AUTOTUNE_DISPATCH"] = "1" if on else "0"
    dispatcher().reset()


def _ours(row: Row, x: dict, dispatch: bool):
    from .torch import get_mlstm_kernel, get_mlstm_step_kernel

    _dispatch(dispatch)
    if row.op == "step":
        kernel = get_mlstm_step_kernel("triton")
        state = _step_state(row, x)
        args = [x[n][:, :, 0] for n in "qkv"] + [x[n][:, :, :1] for n in "if"]
        return lambda: kernel(*args, *state, inplace=True)
    return _sequence_call(get_mlstm_kernel("chunkwise--triton_auto"), x, row.pass_, chunk_size=64)


def _synced(fn):
    def call():
        fn()
        torch.cuda.synchronize()

    return call


def _jax(row: Row, x: dict):
    """The JAX entry of the same kernel under jax.jit, on the same inputs (shared through DLPack); returns once its
    results are ready."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to both frameworks
    import jax  # optional: the jax extra
    import jax.numpy as jnp

    from .jax import get_mlstm_kernel, get_mlstm_step_kernel

    if x["q"].is_cuda:
        torch.cuda.synchronize()
    if row.op == "step":
        step = jax.jit(get_mlstm_step_kernel("triton"), donate_argnums=(5, 6, 7))
        args, state = _jax_step_inputs(row, x)

        def step_call():
            nonlocal state
            h, new = step(*args, *state)
            state = list(new)
            h.block_until_ready()

        return step_call
    kernel = get_mlstm_kernel("chunkwise--triton_auto")
    inputs = [jax.dlpack.from_dlpack(x[n].contiguous()) for n in "qkvif"]
    if row.pass_ == "fw":
        fw = jax.jit(lambda *a: kernel(*a, chunk_size=64))
        return lambda: fw(*inputs).block_until_ready()
    w = jnp.ones((row.B, row.NH, row.S, row.DHHV), jnp.bfloat16)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum((kernel(*a, chunk_size=64) * w).astype(jnp.float32)),
                             argnums=(0, 1, 2, 3, 4)))  # fmt: skip
    return lambda: jax.block_until_ready(grads(*inputs))


SCAN_STEPS = 64  # steps per call of the jax_scan_ms loop


def _jax_scan(row: Row, x: dict, steps: int):
    """``steps`` JAX Triton steps in one jitted ``lax.fori_loop`` (the state carried through the loop and donated
    to the call, so every step updates it where it lies): a decoding loop without a host round trip per step.
    Returns a call that runs the loop once and waits for its state."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax  # optional: the jax extra

    from .jax import get_mlstm_step_kernel

    if x["q"].is_cuda:
        torch.cuda.synchronize()
    kernel = get_mlstm_step_kernel("triton")

    def loop(state, args):
        return jax.lax.fori_loop(0, steps, lambda _, st: tuple(kernel(*args, *st)[1]), tuple(state))

    run = jax.jit(loop, donate_argnums=0)
    args, state = _jax_step_inputs(row, x)

    def call():
        nonlocal state
        state = run(state, args)
        jax.block_until_ready(state)

    return call


def _jax_step_inputs(row: Row, x: dict):
    """The step's inputs (q, k, v, i, f of the first token) and a zero fp32 state, as JAX arrays (through DLPack)."""
    import jax

    args = [jax.dlpack.from_dlpack(x[n][:, :, 0].contiguous()) for n in "qkv"]
    args += [jax.dlpack.from_dlpack(x[n][:, :, :1].contiguous()) for n in "if"]
    return args, [jax.dlpack.from_dlpack(t) for t in _step_state(row, x)]


def _step_state(row: Row, x: dict):
    kw = dict(device=x["q"].device, dtype=torch.float32)
    return (torch.zeros(row.B, row.NH, row.DHQK, row.DHHV, **kw), torch.zeros(row.B, row.NH, row.DHQK, **kw),
            torch.zeros(row.B, row.NH, 1, **kw))  # fmt: skip


def _upstream(row: Row, x: dict, name: str):
    from mlstm_kernels.torch import get_mlstm_kernel, get_mlstm_step_kernel  # optional

    if row.op == "step":
        if name != "chunkwise--triton_xl_chunk":
            raise RuntimeError("no such column for the step kernel")
        kernel = get_mlstm_step_kernel("triton")
        state = _step_state(row, x)
        args = [x[n][:, :, 0] for n in "qkv"] + [x[n][:, :, :1] for n in "if"]
        return lambda: kernel(*args, *state)
    chunk = 128 if name.endswith("xl_chunk") else 64
    return _sequence_call(get_mlstm_kernel(name), x, row.pass_, chunk_size=chunk)


def _fla(row: Row, x: dict):
    if row.op == "step" or row.pass_ != "fw":
        raise RuntimeError("FLA is compared on the chunkwise forward only (its backward does not run on Hopper)")
    from fla.ops.simple_gla import chunk_simple_gla  # optional

    q, k, v = (x[n].transpose(1, 2).contiguous() for n in "qkv")  # FLA's layout: (B, S, NH, D)
    g = torch.nn.functional.logsigmoid(x["f"]).transpose(1, 2).contiguous()

    def fw():
        with torch.no_grad():
            chunk_simple_gla(q, k, v, g)

    return fw


def _sdpa(row: Row, x: dict):
    if row.op == "step" or row.DHQK != row.DHHV:
        raise RuntimeError("SDPA needs DHQK == DHHV (and a sequence)")
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def kernel(q, k, v, i, f):
        return sdpa(q, k, v, is_causal=True)

    return _sequence_call(kernel, x, row.pass_)


# the step kernel is also timed replayed from a CUDA graph (as serving stacks run it; GPU.md's latency targets)
GRAPHED = {"ours_ms": "ours_graph_ms", "upstream_ms": "upstream_graph_ms"}


class StateCopies:
    """Two ways to move the step's bytes with torch, each one kernel: the fp32 state (C, n, m, laid end to end in one
    buffer) copied into another buffer, and read and written back in place. The faster one, timed as the step's graph
    column, is the copy bandwidth the step is held to at its own size (a copy of 134 MB does not reach the bandwidth
    of a copy of gigabytes). One buffer, not three: in a graph each further kernel adds its launch to the floor."""

    def __init__(self, row: Row, x: dict):
        self.src = torch.cat([t.flatten() for t in _step_state(row, x)])
        self.dst = torch.empty_like(self.src)

    def copy(self):
        self.dst.copy_(self.src)

    def in_place(self):
        self.src.mul_(1.0)


def step_bytes(r: dict) -> int:
    """Bytes an in-place step must move at least: the fp32 state (C, n, m) read and written."""
    return 2 * 4 * r["B"] * r["NH"] * (r["DHQK"] * r["DHHV"] + r["DHQK"] + 1)


def measure(row: Row, device: str, reps_ms: float) -> dict:
    if row.op == "packed":
        return measure_packed(row, device, reps_ms)
    timer, wall = _timer(device, reps_ms), _wall_timer(device, reps_ms)
    x = _inputs(row, device, torch.bfloat16 if device == "cuda" else torch.float32)
    out = {"op": row.op, "pass": row.pass_, "B": row.B, "NH": row.NH, "S": row.S, "DHQK": row.DHQK,
           "DHHV": row.DHHV, "notes": {}}  # fmt: skip
    makers = {
        "ours_ms": lambda: _ours(row, x, dispatch=True),
        "default_ms": lambda: _ours(row, x, dispatch=False),
        "upstream_ms": lambda: _upstream(row, x, "chunkwise--triton_xl_chunk"),
        "upstream_limit_ms": lambda: _upstream(row, x, "chunkwise--triton_limit_chunk"),
        "fla_ms": lambda: _fla(row, x),
        "sdpa_ms": lambda: _sdpa(row, x),
        "jax_ms": lambda: _jax(row, x),
        "ours_wall_ms": lambda: _synced(_ours(row, x, dispatch=True)) if device == "cuda" else _ours(row, x, True),
    }
    saved_env = os.environ.get("MLSTM_AUTOTUNE_DISPATCH")
    try:
        for column, make in makers.items():
            if row.op == "step" and column in ("upstream_limit_ms", "fla_ms", "sdpa_ms"):
                out["notes"][column] = "no step kernel to compare"
                continue
            try:
                _dispatch(column != "default_ms")  # every column of ours but the defaults' runs the database's choice
                fn = make()
                out[column] = float((wall if column in WALL_COLUMNS else timer)(fn))
                if row.op == "step" and device == "cuda" and column in GRAPHED:
                    out[GRAPHED[column]] = float(timer(graphed(fn)))
            except ImportError as err:
                out["notes"][column] = f"not installed ({err.name or str(err)[:200]})"
            except Exception as err:  # noqa: BLE001 - a comparison that fails is reported, not fatal
                out["notes"][column] = f"{type(err).__name__}: {str(err)[:200]}"
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
        if row.op == "step":
            try:  # the same step under torch.compile(fullgraph=True): custom operator, no graph break
                compiled = torch.compile(_ours(row, x, dispatch=True), fullgraph=True,
                                         backend="inductor" if device == "cuda" else "aot_eager")  # fmt: skip
                out["ours_compiled_ms"] = float(timer(compiled))
            except Exception as err:  # noqa: BLE001 - reported, not fatal
                out["notes"]["ours_compiled_ms"] = f"{type(err).__name__}: {str(err)[:200]}"
        if row.op == "step":
            try:  # JAX's own decoding loop: the steps in one jitted lax.fori_loop, the state carried through it
                steps = SCAN_STEPS if device == "cuda" else 2
                out["jax_scan_ms"] = float(wall(_jax_scan(row, x, steps))) / steps
            except ImportError as err:
                out["notes"]["jax_scan_ms"] = f"not installed ({err.name or str(err)[:200]})"
            except Exception as err:  # noqa: BLE001 - reported, not fatal
                out["notes"]["jax_scan_ms"] = f"{type(err).__name__}: {str(err)[:200]}"
        if row.op == "step" and device == "cuda":
            copies = StateCopies(row, x)
            out["copy_graph_ms"] = min(float(timer(graphed(fn))) for fn in (copies.copy, copies.in_place))
    finally:
        if saved_env is None:
            os.environ.pop("MLSTM_AUTOTUNE_DISPATCH", None)
        else:
            os.environ["MLSTM_AUTOTUNE_DISPATCH"] = saved_env
    return _with_floor(out, device, reps_ms)


def _with_floor(out: dict, device: str, reps_ms: float) -> dict:
    """The row with its floor (autotune/floor.py) from this GPU's copy and matmul rates, measured in this run."""
    if device != "cuda":
        out["notes"]["floor_ms"] = "measured on a GPU only"
        return out
    try:
        out.update(floor.floor_columns(out, floor.measure_peaks(reps_ms)))
    except Exception as err:  # noqa: BLE001 - reported, not fatal
        out["notes"]["floor_ms"] = f"{type(err).__name__}: {str(err)[:200]}"
    return out


def markdown(gpu: str, table: list[dict], timing: str) -> str:
    lines = [f"Benchmark on {gpu} ({timing}); times in ms; ratios: the other's time / ours", "",
             "| op | pass | B | NH | S | DHQK/DHHV | ours | default | upstream xl_chunk | upstream limit_chunk | FLA "
             "simple_gla | SDPA | JAX (wall) | ours (wall) | vs upstream | vs FLA | JAX vs ours (wall) | floor | "
             "floor / ours |", "|---" * 19 + "|"]  # fmt: skip

    def ms(r, c):
        return f"{r[c]:.3f}" if r.get(c) is not None else "-"

    def ratio(r, c):
        return f"{r[c] / r['ours_ms']:.2f}x" if r.get(c) and r.get("ours_ms") else "-"

    def of_floor(r):
        return f"{r['floor_ms'] / r['ours_ms']:.0%}" if r.get("floor_ms") and r.get("ours_ms") else "-"

    for r in (r for r in table if r["op"] != "packed"):
        cells = " | ".join(ms(r, c) for c in COLUMNS)
        jax_vs = f"{r['jax_ms'] / r['ours_wall_ms']:.2f}x" if r.get("jax_ms") and r.get("ours_wall_ms") else "-"
        lines.append(f"| {r['op']} | {r['pass']} | {r['B']} | {r['NH']} | {r['S']} | {r['DHQK']}/{r['DHHV']} | {cells} "
                     f"| {ratio(r, 'upstream_ms')} | {ratio(r, 'fla_ms')} | {jax_vs} | {ms(r, 'floor_ms')} "
                     f"| {of_floor(r)} |")  # fmt: skip
    graphed = [r for r in table if r["op"] == "step" and r.get("ours_graph_ms")]
    if graphed:
        lines += ["", "Step kernel, eager and replayed from a CUDA graph; bandwidth = the fp32 state read and written "
                  "once / the graph time; copy = the faster of torch copying that state into another buffer and in "
                  "place, replayed the same way; compiled = the eager call under torch.compile(fullgraph=True); "
                  f"JAX fori_loop = the JAX step in a jitted loop of {SCAN_STEPS} steps, per step", "",
                  "| B | NH | DHQK/DHHV | ours eager | ours compiled | ours graph | JAX fori_loop | upstream eager "
                  "| upstream graph | copy graph | ours GB/s | copy GB/s | ours vs copy | vs upstream (graph) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in graphed:
            cols = ("ours_ms", "ours_compiled_ms", "ours_graph_ms", "jax_scan_ms", "upstream_ms", "upstream_graph_ms",
                    "copy_graph_ms")  # fmt: skip
            cells = " | ".join(ms(r, c) for c in cols)
            gbs = step_bytes(r) / (r["ours_graph_ms"] * 1e-3) / 1e9
            copy_gbs = f"{step_bytes(r) / (r['copy_graph_ms'] * 1e-3) / 1e9:.0f}" if r.get("copy_graph_ms") else "-"
            of_copy = f"{r['copy_graph_ms'] / r['ours_graph_ms']:.0%}" if r.get("copy_graph_ms") else "-"
            vs = f"{r['upstream_graph_ms'] / r['ours_graph_ms']:.2f}x" if r.get("upstream_graph_ms") else "-"
            lines.append(f"| {r['B']} | {r['NH']} | {r['DHQK']}/{r['DHHV']} | {cells} | {gbs:.0f} | {copy_gbs} "
                         f"| {of_copy} | {vs} |")  # fmt: skip
    packed = [r for r in table if r["op"] == "packed"]
    if packed:
        lines += ["", "Packed documents (cu_seqlens) against the same documents padded to the longest, both "
                  "chunkwise--triton_auto", "", "| pass | NH | tokens | documents | longest | DHQK/DHHV | packed | "
                  "padded | padded / packed |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in packed:
            vs = f"{r['padded_ms'] / r['ours_ms']:.2f}x" if r.get("padded_ms") and r.get("ours_ms") else "-"
            docs = f"{r.get('documents', '-')} | {r.get('longest', '-')}"
            lines.append(f"| {r['pass']} | {r['NH']} | {r['S']} | {docs} | {r['DHQK']}/{r['DHHV']} | "
                         f"{ms(r, 'ours_ms')} | {ms(r, 'padded_ms')} | {vs} |")  # fmt: skip
    lines += _long_table(table)
    notes = sorted({f"{c}: {n}" for r in table for c, n in r["notes"].items()})
    if notes:
        lines += ["", "Not measured:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _long_table(table: list[dict]) -> list[str]:
    """One long sequence (B=1) against the batched rows of its layout and pass: ms per 65,536 tokens, and that over
    the mean per 65,536 tokens of the batched rows (B * S = 65,536) of the same run."""
    long = [r for r in table if _is_long(r["op"], r["B"], r["S"]) and r.get("ours_ms")]
    if not long:
        return []
    lines = ["", "One long sequence (B=1) against the batched rows (B x S = 65,536 tokens) of the same layout and "
             "pass, ours, ms per 65,536 tokens", "",
             "| pass | NH | S | DHQK/DHHV | ours | per 65,536 tokens | batched rows (mean) | long / batched |",
             "|---" * 8 + "|"]  # fmt: skip
    for r in long:
        same = [b["ours_ms"] for b in table if b["op"] == "chunkwise" and b["pass"] == r["pass"] and b.get("ours_ms")
                and b["B"] * b["S"] == TOKENS and b["B"] > 1 and (b["NH"], b["DHQK"], b["DHHV"])
                == (r["NH"], r["DHQK"], r["DHHV"])]  # fmt: skip
        per = r["ours_ms"] * TOKENS / r["S"]
        batched = f"{np.mean(same):.3f} | {per / np.mean(same):.3f}" if same else "- | -"
        lines.append(f"| {r['pass']} | {r['NH']} | {r['S']} | {r['DHQK']}/{r['DHHV']} | {r['ours_ms']:.3f} | "
                     f"{per:.3f} | {batched} |")  # fmt: skip
    return lines


_COLOURS = ((40, 100, 200), (170, 170, 170), (200, 80, 60), (230, 160, 60), (60, 160, 90), (140, 90, 170),
            (20, 170, 190), (90, 130, 210))  # fmt: skip


def plot(table: list[dict]) -> np.ndarray:
    """One group of bars per row, one bar per column (ours blue, default grey, upstream red/orange, FLA green, SDPA
    purple, JAX teal, ours by wall clock light blue), each group on its own scale (its longest bar full width),
    numbered like the table rows."""
    table = [r for r in table if r["op"] != "packed"]  # the packed rows have a table of their own
    bar, gap, left, width = 8, 14, 70, 520
    height = max(1, len(table)) * (len(COLUMNS) * bar + gap) + gap
    img = np.full((height, left + width + 20, 3), 255, dtype=np.uint8)
    for n, r in enumerate(table):
        y = gap + n * (len(COLUMNS) * bar + gap)
        _text(img, 6, y + bar, f"#{n + 1}")
        longest = max([r.get(c) or 0 for c in COLUMNS] + [1e-9])
        for k, c in enumerate(COLUMNS):
            length = int(width * (r.get(c) or 0) / longest)
            img[y + k * bar : y + (k + 1) * bar - 1, left : left + length] = _COLOURS[k]
    return img


def shard(selected: list[Row], spec: str | None) -> list[Row]:
    """The rows of shard "I/N" (I from 0): rows alternate in pairs so that each shard gets forward and
    forward+backward rows, e.g. for N=2 rows 0, 3, 4, 7, 8, ... and 1, 2, 5, 6, ...."""
    if spec is None:
        return selected
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard wants I/N with integers, e.g. 0/2, not {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {spec}: I must be in 0..N-1")
    return [r for n, r in enumerate(selected) if (n + n // 2) % count == index]


def write(out_dir: Path, gpu: str, table: list[dict], timing: str, quiet: bool = False) -> None:
    """<GPU>-bench.json, .md and .png under out_dir (rewritten after every row, so a cut-off run keeps its rows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = tdb.file_name(gpu).removesuffix(".json")
    tmp = out_dir / f".{stem}-bench.json.tmp"
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, out_dir / f"{stem}-bench.json")
    text = markdown(gpu, table, timing) + f"\n![rows numbered as in the table]({stem}-bench.png)\n"
    (out_dir / f"{stem}-bench.md").write_text(text)
    write_png(out_dir / f"{stem}-bench.png", plot(table))
    if not quiet:
        print(text)
        print(f"wrote {out_dir / (stem + '-bench.json')}, .md and .png")


_ROW_KEYS = ("op", "pass", "B", "NH", "S", "DHQK", "DHHV")
_GPU_TIMING = "GPU, median of triton.testing.do_bench"
_INTERPRETER_TIMING = "Triton interpreter, wall clock: says nothing about speed"


def combine(files: list[str], out: str) -> int:
    """Entry point of ``mlstm-tune bench --combine``: the rows of several runs (e.g. shards on several GPUs of one
    model) as one table. A row of a later file replaces an earlier file's row of the same shape (a rerun of some rows,
    e.g. ``--only step`` after a new tuning of the step kernel); every row keeps its own run's baselines."""
    table, gpus = {}, set()
    for name in files:
        path = Path(name)
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"mlstm-tune bench: cannot read {path}: {err}", file=sys.stderr)
            return 2
        if not isinstance(part, list) or not all(isinstance(r, dict) and set(_ROW_KEYS) <= set(r) for r in part):
            print(f"mlstm-tune bench: {path} is not a bench table (a list of rows with keys {_ROW_KEYS})",
                  file=sys.stderr)  # fmt: skip
            return 2
        rows_of_part = {tuple(r[k] for k in _ROW_KEYS): r for r in part}
        replaced = len(rows_of_part.keys() & table.keys())
        if replaced:
            print(f"mlstm-tune bench: {path} replaces {replaced} row(s) of the files before it")
        table.update(rows_of_part)
        gpus.add(path.name.removesuffix("-bench.json"))
    if len(gpus) != 1:
        print(f"mlstm-tune bench: --combine wants runs of one GPU model, got {sorted(gpus)}", file=sys.stderr)
        return 2
    (stem,) = gpus
    gpu = stem.replace("_", " ")
    timing = _INTERPRETER_TIMING if stem == "cpu-interpreter" else _GPU_TIMING
    known = [tuple(asdict(r).values()) for r in rows(False)]  # table order; rows of other shapes last

    def order(r: dict) -> int:
        key = tuple(r[k] for k in _ROW_KEYS)
        return known.index(key) if key in known else len(known)

    write(Path(out), gpu, sorted(table.values(), key=order), timing)
    return 0


def run(args) -> int:
    """Entry point of ``mlstm-tune bench``."""
    if args.combine:
        return combine(args.combine, args.out)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.smoke:
        print("mlstm-tune bench: no GPU; use --smoke for the interpreted dry run on tiny shapes", flush=True)
        return 2
    try:
        chosen = [r for r in rows(args.smoke) if args.only in (None, group(r)) and getattr(args, "pass_", None) in
                  (None, r.pass_)]  # fmt: skip
        selected = shard(chosen, args.shard)
    except ValueError as err:
        print(f"mlstm-tune bench: {err}", file=sys.stderr)
        return 2
    if not selected:
        print(f"mlstm-tune bench: no {'smoke ' if args.smoke else ''}rows match --only {args.only} "
              f"--pass {getattr(args, 'pass_', None)}", file=sys.stderr)  # fmt: skip
        return 2
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"
    device = "cuda" if on_gpu else "cpu"
    gpu = torch.cuda.get_device_name() if on_gpu else "cpu-interpreter"
    timing = _GPU_TIMING if on_gpu else _INTERPRETER_TIMING
    table = []
    for n, row in enumerate(selected, 1):
        start = time.perf_counter()
        table.append(measure(row, device, args.reps_ms))
        r = table[-1]
        print(f"[{n}/{len(selected)}] {row.op} {row.pass_} B={row.B} NH={row.NH} S={row.S} {row.DHQK}/{row.DHHV}: "
              + ", ".join(f"{c[:-3]} {r[c]:.3f}" for c in COLUMNS if c in r)
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        write(Path(args.out), gpu, table, timing, quiet=n < len(selected))
    return 0
