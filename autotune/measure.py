"""Measure one candidate (variant, launch configuration): a correctness gate against the reference, then timing on
the real shape, inside a worker process that may die.

    evaluate_here(job)   gate + timing in this process (what the worker runs)
    IsolatedRunner       a persistent worker process; a candidate that crashes it (Triton's LLVM can abort the whole
                         process, seen on an H200) or runs past the time limit is recorded as failed, a new worker
                         starts, and the search goes on

Gate (autotune.gate, the same check as the GPU tests and ``mlstm-tune validate``): a small instance of the same
variant (B=1, NH=2, the real head dims; S from ``gate_length``: at most about 4096 tokens, ragged, compiling the very
kernels the timing runs), the adversarial and model-like draws, several calls for the same bits, and each output
(h; for a backward variant, direction "fwbw", each of dq, dk, dv, di, df of a random linear loss) within 1.5x the
error of a trusted kernel (``trusted_job``) against the float64 oracle (native chunkwise in fp64). A backward
variant is timed as forward + backward (the forward: the two-pass default with outer chunks of the backward's L, so
that ``states="reuse"`` can take its states). Timing on the real
shape: warm-up, then the median and p20/p80 of many launches (CUDA events through ``triton.testing.do_bench``),
rotating among input sets that together exceed the L2 cache (drawn once per shape and process, kept for the next
candidate); inputs are random, never zeros. Without a GPU, kernels run under Triton's interpreter and are timed with
a wall clock: such numbers are labelled "interpreter" and say nothing about GPU speed.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from .families import default_config
from .search import Outcome

L2_BYTES = 60 * 2**20  # the H200's L2 is 60 MB (GPU.md); inputs rotate over more than twice that
BACKWARD_FAMILIES = ("chunkwise_bw", "parallel_bw")


@dataclass(frozen=True)
class Job:
    variant: str
    config: dict
    B: int
    NH: int
    S: int
    DHQK: int
    DHHV: int
    dtype: str  # "bfloat16" ...
    device: str  # "cuda" or "cpu" (interpreter)
    reps_ms: float = 200.0  # timing budget per candidate on a GPU


def _inputs(job: Job, B: int, NH: int, S: int, seed: int, on_device: bool = False):
    """Random inputs (and a cotangent dh); drawn by the CPU's generator, or with ``on_device`` by the job's device's
    (for the timing sets: the real shape)."""
    from .reference import random_inputs

    dtype = getattr(torch, job.dtype)
    gen = torch.Generator(device=job.device if on_device else "cpu").manual_seed(seed)
    x = random_inputs(B, NH, S, job.DHQK, job.DHHV, dtype=dtype, gate_dtype=torch.float32, generator=gen,
                      device=gen.device, max_outlier=8.0 if dtype == torch.float16 else 20.0)  # fmt: skip
    # the cotangent of h, for backward variants
    x["dh"] = torch.randn(B, NH, S, job.DHHV, generator=gen, device=gen.device).to(dtype)
    return {k: v.to(job.device) for k, v in x.items()}


def _runner(job: Job, timing: bool = False):
    """A function running the candidate on inputs x: returns h (for the step kernel, the step output; for a backward
    variant, the gradients dq, dk, dv, di, df of forward + backward). With ``timing`` the step kernel updates one
    state in place, allocated at the first call, as a decoder does: the gate's run starts from zeros, and zeroing a
    new state per timed call (three fills and allocations) would cost more than the step at B = 1."""
    from .launch import chunkwise, chunkwise_bw, parallel, parallel_bw, recurrent
    from .variants import by_name, find

    variant = by_name(job.variant)
    if variant.family == "parallel_bw":
        fw_variant = find("parallel_fw.py.j2", cell=variant.params["cell"])
        fw_config = default_config(fw_variant, job.DHQK, job.DHHV)

        def fwbw_parallel(x):
            args, saved = [x[k] for k in "qkvif"], {}
            h, _ = parallel.parallel_fw(*args, variant=fw_variant, config=fw_config, saved=saved)
            grads = parallel_bw.parallel_bw(*args, None, None, None, h, saved["s"], saved["mt"], x["dh"], None, None,
                                            None, None, variant=variant, config=job.config)  # fmt: skip
            return grads[:5]

        return fwbw_parallel
    if variant.family == "chunkwise_bw":
        # the forward a training step runs (autotune.launch.chunkwise.training_forward)
        L = chunkwise_bw.check_config(variant, job.config)["chunk"]
        fw_variant, fw_config = chunkwise.training_forward(variant.params["cell"], job.DHQK, job.DHHV, L)

        # as a training step asks it (autotune.torch.triton_kernels): states stored at the stride the backward reuses
        reuse = job.config.get("states") == "reuse"
        keep = {"borders_at": L} if reuse else {}

        def fwbw(x):
            args, saved = [x[k] for k in "qkvif"], dict(keep)
            h, _ = chunkwise.chunkwise_fw(*args, variant=fw_variant, config=fw_config, saved=saved)
            grads = chunkwise_bw.chunkwise_bw(
                *args, None, None, None, h, saved["s"], saved["mt"], x["dh"], None, None, None, None,
                variant=variant, config=job.config, borders=(saved["Cb"], saved["nb"], saved["mb"]),
            )  # fmt: skip
            return grads[:5]

        return fwbw
    if variant.family == "step_fw":
        kept = []

        def step(x):
            if not (timing and kept):
                B, NH = x["q"].shape[:2]
                kept[:] = [
                    torch.zeros(B, NH, job.DHQK, job.DHHV, device=job.device),
                    torch.zeros(B, NH, job.DHQK, device=job.device),
                    torch.zeros(B, NH, device=job.device),
                ]
            args = [x[k][:, :, 0] for k in "qkvif"]
            return recurrent.step_fw(*args, *kept, variant=variant, config=job.config, out=tuple(kept))[:, :, None]

        return step
    launch = {"chunkwise_fw": chunkwise.chunkwise_fw, "parallel_fw": parallel.parallel_fw,
              "sequence_fw": recurrent.sequence_fw}[variant.family]  # fmt: skip
    return lambda x: launch(*(x[k] for k in "qkvif"), variant=variant, config=job.config)[0]


def _oracle(job: Job, x: dict) -> tuple[torch.Tensor, ...]:
    """What the candidate must compute, in float64: h, or for a backward variant (dq, dk, dv, di, df)."""
    from .torch.native.chunkwise import chunkwise_backward, chunkwise_forward
    from .variants import by_name

    variant = by_name(job.variant)
    x64 = [x[k].double() for k in "qkvif"]
    if variant.family == "step_fw":
        x64 = [t[:, :, :1] for t in x64]
    B, NH = x64[0].shape[:2]
    z = dict(dtype=torch.float64, device=job.device)
    zeros = (torch.zeros(B, NH, job.DHQK, job.DHHV, **z), torch.zeros(B, NH, job.DHQK, **z), torch.zeros(B, NH, 1, **z))
    cell = variant.params["cell"]
    h, _, borders = chunkwise_forward(*x64, *zeros, chunk_size=64, cell=cell)
    if variant.family not in BACKWARD_FAMILIES:
        return (h,)
    grads = chunkwise_backward(*x64, *borders, x["dh"].double(), *zeros, chunk_size=64, cell=cell)
    return tuple(grads[:5])


def gate_length(S: int) -> int:
    """The gate's sequence length for a real one of S. Triton specialises a kernel on whether each integer argument
    (S, the chunk counts) is divisible by 16, so a gate of another divisibility compiles kernels the timing cannot
    use: one candidate, two compiles. From S = 512 on, the gate keeps the real divisibility: S - 16 up to 4096
    (4080 beyond, plus S's remainder mod 16, which keeps the chunk counts of chunks of 32..256 tokens divisible as
    they are for the real S = 4096 k), so that the last chunk is ragged (a masking error shows) and the oracle stays
    cheap. Shorter S: 2 x 128 + 7 tokens, several chunks and a ragged end."""
    if S < 512:
        return 2 * 128 + 7
    return S - 16 if S <= 4096 else 4080 + S % 16


GRADIENTS = ("dq", "dk", "dv", "di", "df")


def output_names(job: Job) -> tuple[str, ...]:
    from .variants import by_name

    return GRADIENTS if by_name(job.variant).family in BACKWARD_FAMILIES else ("h",)


def _named(job: Job, run):
    """``run`` (inputs -> h, or the tuple of gradients) as a kernel of the gate: inputs -> {name: tensor}."""
    names = output_names(job)
    return lambda x: dict(zip(names, run(x) if len(names) > 1 else (run(x),), strict=True))


def trusted_job(job: Job) -> Job:
    """The kernel the gate holds ``job`` to: for outputs, the tiled parallel forward with its default configuration
    (one stage: no software pipelining); for a training step, the parallel backward behind the parallel forward,
    likewise. Both were bitwise stable and at the 16-bit rounding level on an H100 where the two-pass forward and
    the head-128 chunkwise backward were not (docs/hazards.md). The step kernel is held to the native
    step instead (trusted_step)."""
    from .variants import by_name, find

    cell = by_name(job.variant).params["cell"]
    if by_name(job.variant).family in BACKWARD_FAMILIES:
        variant = find("parallel_bw.py.j2", cell=cell)
    else:
        variant = find("parallel_fw.py.j2", cell=cell)
    config = default_config(variant, job.DHQK, job.DHHV)
    return Job(variant.name, dict(config, num_stages=1), job.B, job.NH, job.S, job.DHQK, job.DHHV, job.dtype,
               job.device)  # fmt: skip


def _trusted_step(job: Job):
    from .torch.native.recurrent import mlstm_recurrent_step__native
    from .variants import by_name

    cell = by_name(job.variant).params["cell"]

    def step(x):
        args = [x[k][:, :, 0] for k in "qkv"] + [x[k][:, :, :1] for k in "if"]
        return {"h": mlstm_recurrent_step__native(*args, None, None, None, cell=cell)[0][:, :, None]}

    return step


_DRAWS: dict[tuple, list] = {}


def gate_draws(job: Job) -> list:
    """The gate's draws for ``job`` (autotune.gate.Draw: inputs, float64 truth, the trusted kernel's outputs), kept
    for the next candidate of the same shape and family (one shape at a time)."""
    from . import gate
    from .variants import by_name

    family = by_name(job.variant).family
    S = gate_length(job.S) if job.device != "cpu" else gate_length(0)  # the interpreter compiles nothing
    key = (family, by_name(job.variant).params["cell"], S, job.DHQK, job.DHHV, job.dtype, job.device)
    if key not in _DRAWS:
        _DRAWS.clear()
        trusted = _trusted_step(job) if family == "step_fw" else _named(job, _runner(trusted_job(job)))
        oracle = lambda x: dict(zip(output_names(job), _oracle(job, x), strict=True))  # noqa: E731
        _DRAWS[key] = [
            gate.prepare(gate.draw_inputs(kind, 1, 2, S, job.DHQK, job.DHHV, dtype=getattr(torch, job.dtype),
                                          device=job.device, seed=seed, cell=by_name(job.variant).params["cell"]),
                         oracle, trusted, pool=kind if kind == "adversarial" else "")
            for kind, seed in gate_plan(job)
        ]  # fmt: skip
    return _DRAWS[key]


def gate_plan(job: Job) -> tuple[tuple[str, int], ...]:
    """The gate's draws as (kind, seed): on a GPU gate.GPU_DRAWS (four adversarial draws, judged as one pool, and
    the model draw); under the interpreter (programs run one after another: no race to find, and every repeated call
    costs seconds) one adversarial draw."""
    from . import gate

    return gate.GPU_DRAWS if job.device != "cpu" else (("adversarial", 1),)


def gate_runs(job: Job) -> int:
    from . import gate

    return gate.RUNS if job.device != "cpu" else 2


def gate_verdict(job: Job):
    """autotune.gate's verdict on the candidate ``job`` at its gate shape (B=1, NH=2, gate_length(S) tokens, the real
    head dims): determinism, and accuracy output by output against the trusted kernel; on a Hopper GPU also the
    static hazard checks of the kernels it compiles (autotune.hazards)."""
    from . import gate, hazards
    from .variants import by_name

    verdict = gate.judge(_named(job, _runner(job)), gate_draws(job), getattr(torch, job.dtype), runs=gate_runs(job))
    arch = hazard_arch(job)
    if arch is not None:
        verdict.reasons += hazards.check_point(by_name(job.variant), job.config, job.DHQK, job.DHHV,
                                               getattr(torch, job.dtype), arch=arch)  # fmt: skip
    return verdict


def hazard_arch(job: Job) -> int | None:
    """The compute capability (90 for sm_90) whose static hazard checks (autotune.hazards) the gate adds: the GPU's,
    where it is a Hopper; None under the interpreter and on GPUs the checks were not established on."""
    if job.device != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor if major == 9 else None


_TIMING_SETS: dict[tuple, list[dict]] = {}


def _is_step(job: Job) -> bool:
    from .variants import by_name

    return by_name(job.variant).family == "step_fw"


def timing_sets(job: Job) -> list[dict]:
    """The input sets the timing rotates among, for the job's real shape. They are drawn once per shape and process
    and kept (only the latest shape's) for the next candidate, and drawn on the job's device: drawing them per
    candidate, in float64 on the CPU, took about 20 s of every trial at the 7B layout's 65,536 tokens (measured on an
    H200, tuning_db/reports/NOTES.md)."""
    key = (job.B, job.NH, job.S, job.DHQK, job.DHHV, job.dtype, job.device)
    if key not in _TIMING_SETS:
        _TIMING_SETS.clear()  # one shape at a time: a 7B-layout set is about 1.6 GB
        one = _inputs(job, job.B, job.NH, job.S, seed=2, on_device=True)
        per_set = sum(t.numel() * t.element_size() for t in one.values())
        # the step kernel is timed on one set (replayed from a graph, with the L2 emptied between replays)
        extra = 0 if _is_step(job) else min(7, 2 * L2_BYTES // per_set)
        _TIMING_SETS[key] = [one] + [
            _inputs(job, job.B, job.NH, job.S, seed=3 + n, on_device=True) for n in range(extra)
        ]
    return _TIMING_SETS[key]


def graphed(fn):
    """fn captured once in a CUDA graph (after warm-up calls on a side stream); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_candidate(job: Job) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms on the real shape. The step kernel is timed replayed from a CUDA graph, as serving
    stacks run it and as the bench's graph column does: eager, the host's launch time (the same for every
    configuration) hides the kernel's at small batches."""
    run = _runner(job, timing=True)
    sets = timing_sets(job)
    cycle = itertools.cycle(sets)
    if job.device == "cuda":
        import triton.testing

        fn = lambda: run(next(cycle))  # noqa: E731
        if _is_step(job):
            run(sets[0])  # the kept state is allocated here, on the current stream, not on graphed's side stream
            fn = graphed(lambda: run(sets[0]))  # do_bench empties the L2 between calls, so one input set will do
        p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=job.reps_ms, quantiles=[0.5, 0.2, 0.8])
        return p50, p20, p80
    run(next(cycle))  # interpreter: one warm-up, then a few wall-clock runs
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run(next(cycle))
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
    return statistics.median(times), q[0], q[-1]


def evaluate_here(job: Job) -> Outcome:
    """Gate, then timing; the outcome also says how long each took (wall clock, compiling included), which is where
    a tuning run's time goes."""
    start = time.perf_counter()
    try:
        verdict = gate_verdict(job)
    except Exception as exc:  # noqa: BLE001 - a candidate that fails to build or launch is a result, not a crash
        return Outcome(ok=False, reason=f"gate: {type(exc).__name__}: {str(exc)[:300]}",
                       gate_s=time.perf_counter() - start)  # fmt: skip
    gate_s = time.perf_counter() - start
    err = verdict.error
    if not verdict.passed:
        return Outcome(ok=False, error=err, reason=f"wrong result: {verdict.summary()}"[:400], gate_s=gate_s)
    start = time.perf_counter()
    try:
        p50, p20, p80 = time_candidate(job)
    except Exception as exc:  # noqa: BLE001
        return Outcome(ok=False, error=err, reason=f"timing: {type(exc).__name__}: {str(exc)[:300]}", gate_s=gate_s,
                       timing_s=time.perf_counter() - start)  # fmt: skip
    return Outcome(ok=True, p50_ms=p50, p20_ms=p20, p80_ms=p80, error=err, gate_s=gate_s,
                   timing_s=time.perf_counter() - start)  # fmt: skip


def device_healthy() -> bool:
    """Whether this process's CUDA context still runs work. An illegal memory access (and any other sticky error)
    poisons the context: every later launch in the process fails with the same error, whatever it runs. On the H200
    one fused backward candidate did so and failed the next 20-40 candidates of its study in each tuning run
    (tuning_db/reports/NOTES.md: the training studies of the 2026-11-30d, e and f tuning runs)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return True
    try:
        torch.cuda.synchronize()
        return (torch.ones(1, device="cuda") + 1).item() == 2.0
    except Exception:  # noqa: BLE001 - any error here means the context is gone
        return False


def _worker(conn, env: dict, evaluate=evaluate_here, healthy=device_healthy) -> None:
    os.environ.update(env)
    conn.send("ready")  # imports are done (unpickling this function imported the module): jobs are timed from here
    while True:
        job = conn.recv()
        if job is None:
            return
        outcome = evaluate(Job(**job))
        # after a failure, whether the device still works here: if not, the parent starts a fresh worker
        conn.send({"outcome": asdict(outcome), "healthy": outcome.ok or healthy()})


class IsolatedRunner:
    """Evaluates jobs in a persistent child process (spawned, so CUDA starts fresh); restarts it after a crash, a
    time-out, or a failure that left its CUDA context unusable, and reports that job as failed."""

    def __init__(self, timeout_s: float = 300.0, env: dict | None = None, evaluate=evaluate_here,
                 startup_s: float = 120.0, healthy=device_healthy):  # fmt: skip
        """``evaluate`` (a module-level function, importable by the child) runs a Job in the child, and ``healthy``
        (the same) says there after a failed job whether the child can go on. ``timeout_s`` limits each job; a
        (re)started worker first gets ``startup_s`` to import what it needs, so the job after a crash is not charged
        for the restart."""
        self.timeout_s, self.env, self.evaluate_fn = timeout_s, dict(env or {}), evaluate
        self.startup_s, self.healthy_fn = startup_s, healthy
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = self._conn = None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self.env, self.evaluate_fn, self.healthy_fn),
                                       daemon=True)  # fmt: skip
        self._proc.start()
        self._conn = parent
        if not (parent.poll(self.startup_s) and parent.recv() == "ready"):
            raise EOFError(f"the worker did not start within {self.startup_s:g} s")

    def evaluate(self, job: Job) -> Outcome:
        try:
            if self._proc is None or not self._proc.is_alive():
                self._start()
            self._conn.send(asdict(job))
            if self._conn.poll(self.timeout_s):
                reply = self._conn.recv()
                outcome = Outcome(**reply["outcome"])
                if not reply["healthy"]:  # its CUDA context is lost: the next job gets a fresh worker
                    self.close()
                    outcome.reason += " (it left the worker's CUDA context unusable: worker restarted)"
                return outcome
            reason = f"timed out after {self.timeout_s:g} s"
        except (EOFError, BrokenPipeError, ConnectionResetError) as err:
            reason = str(err) if "did not start" in str(err) else "the worker process died"
        self._proc.join(1)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        reason += f" (exit code {self._proc.exitcode})"
        self._proc = None
        return Outcome(ok=False, reason=reason)

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = None
