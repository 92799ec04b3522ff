"""Why the JAX step kernel's wall clock trails PyTorch's (`mlstm-tune bench --only step`: JAX 1.05-1.69x ours on an
H100): the compiled XLA program of the jitted step, with and without the state donated (its copies, custom calls and
input/output aliases), and the wall clock per step of each beside the PyTorch step updating its state in place, on
the same inputs.

    python bench/tools/jax_step_probe.py [--B 1 16 128 512] [--steps 200]

On the CPU (TRITON_INTERPRET=1, small --B/--DHQK/--DHHV) it runs the same code under Triton's interpreter.

A copy of the state in the donated program is a state read and written once more per step: at the bench's 7B
layout (NH=8, 256/512) about 0.36 ms at B=128 on an H100.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def hlo_summary(text: str) -> str:
    """The operations of an optimised HLO module that move memory or call kernels, counted, and its aliases."""
    ops = Counter(m.group(1) for m in re.finditer(r"=\s*\S+\s+(copy|copy-start|custom-call|fusion|dynamic-update-slice)"
                                                  r"\(", text))  # fmt: skip
    aliases = re.findall(r"\{(\d*)\}: \((\d+), \{\}, ([\w-]+)\)", text)
    pairs = ", ".join(f"out {o} <- arg {a} ({kind})" for o, a, kind in aliases) or "no output aliases an argument"
    return f"{dict(ops)}; {pairs}"


def wall_ms(call, steps: int) -> float:
    """Median wall clock of one call that waits for its result."""
    call()
    call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def pipelined_ms(launch, wait, steps: int) -> float:
    """Wall clock per call of ``steps`` calls queued back to back, one wait at the end: the GPU's time per step
    where it, not the host, is the bound (a gap to wall_ms is the host's share)."""
    launch()
    wait()
    start = time.perf_counter()
    for _ in range(steps):
        launch()
    wait()
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 16, 128, 512])
    ap.add_argument("--NH", type=int, default=8)
    ap.add_argument("--DHQK", type=int, default=256)
    ap.add_argument("--DHHV", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    import jax
    import torch

    from autotune.jax import get_mlstm_step_kernel
    from autotune.torch import get_mlstm_step_kernel as torch_step_kernel

    NH, DHQK, DHHV = args.NH, args.DHQK, args.DHHV
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (interpreter)"
    print(f"# {gpu}; torch {torch.__version__}; jax {jax.__version__}; NH={NH} {DHQK}/{DHHV}")
    step = get_mlstm_step_kernel("triton")
    donated, plain = jax.jit(step, donate_argnums=(5, 6, 7)), jax.jit(step)
    torch_step = torch_step_kernel("triton")
    print("| B | program | HLO | JAX wall ms | JAX pipelined ms | PyTorch in place, wall ms | PyTorch pipelined ms |")
    print("|---|---|---|---|---|---|---|")
    for B in args.B:
        program = probe(B, NH, DHQK, DHHV, args.steps, donated, plain, torch_step)
    print(f"\n## the donated program at B={args.B[-1]}, optimised HLO\n{program}")


def probe(B, NH, DHQK, DHHV, steps, donated, plain, torch_step) -> str:
    """Prints the table's two rows of batch size B; returns the donated program's optimised HLO."""
    import jax
    import jax.numpy as jnp
    import torch

    key = jax.random.split(jax.random.PRNGKey(0), 5)
    q, k = (jax.random.normal(key[j], (B, NH, DHQK), jnp.bfloat16) for j in (0, 1))
    v = jax.random.normal(key[2], (B, NH, DHHV), jnp.bfloat16)
    i, f = (jax.random.normal(key[j], (B, NH, 1), jnp.float32) for j in (3, 4))
    xt = [torch.from_dlpack(a) for a in (q, k, v, i, f)]
    device = xt[0].device
    ct = [torch.zeros(B, NH, DHQK, DHHV, device=device), torch.zeros(B, NH, DHQK, device=device),
          torch.zeros(B, NH, 1, device=device)]  # fmt: skip

    def torch_launch():
        torch_step(*xt, *ct, inplace=True)

    def torch_wait():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def torch_call():
        torch_launch()
        torch_wait()

    ours, ours_queued = wall_ms(torch_call, steps), pipelined_ms(torch_launch, torch_wait, steps)
    programs, last = {}, []  # last: the newest h
    for label, fn in (("donated", donated), ("not donated", plain)):
        state = [jnp.zeros((B, NH, DHQK, DHHV), jnp.float32), jnp.zeros((B, NH, DHQK), jnp.float32),
                 jnp.zeros((B, NH, 1), jnp.float32)]  # fmt: skip
        text = programs[label] = fn.lower(q, k, v, i, f, *state).compile().as_text()

        def jax_launch(fn=fn, last=last):
            nonlocal state
            h, new = fn(q, k, v, i, f, *state)
            state = list(new)
            last[:] = [h]

        def jax_wait(last=last):
            last[0].block_until_ready()

        def jax_call():
            jax_launch()
            jax_wait()

        wall, queued = wall_ms(jax_call, steps), pipelined_ms(jax_launch, jax_wait, steps)
        print(
            f"| {B} | {label} | {hlo_summary(text)} | {wall:.3f} | {queued:.3f} | {ours:.3f} | {ours_queued:.3f} |",
            flush=True,
        )
    return programs["donated"]


if __name__ == "__main__":
    main()
