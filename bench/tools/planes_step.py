"""What storing the training step's chunk states as planes does to its time: forward+backward of
``chunkwise--triton_auto`` at the 7B and head-128 layouts (65,536 tokens, bf16) with this GPU's packaged database,
its backward choice forced (MLSTM_AUTOTUNE_FORCE) once with its own state buffers (fp32 in the shipped entries) and
once with state_buffers "planes" (the training forward then stores its states as planes too). Each form: the step's
median time, its kernels under torch.profiler, and whether dq, dk, dv and h equal the fp32 form's bit for bit (on the
CPU they do: tests/test_state_planes.py; on a GPU the compiler may order the two products' sums differently).

Prediction (docs/performance.md, "States as planes"), written before the first measurement: the output loop kernel
2.50 -> about 2.0 ms at 7B, the dq/dk kernel 5.84 -> about 4 ms (its two state tiles no longer split in registers,
their bytes unchanged), the states and dstate kernels unchanged; the step 13.5 -> about 11 ms on an H100.

    python bench/tools/planes_step.py [--layout 7b head128]      (on a GPU)
    TRITON_INTERPRET=1 python bench/tools/planes_step.py --smoke  (tiny shapes, CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_backward as pb  # noqa: E402

from autotune.dispatch import dispatcher  # noqa: E402
from autotune.torch import get_mlstm_kernel  # noqa: E402
from autotune.torch.triton_choice import backward_plan  # noqa: E402

FORCE_KEY = "chunkwise:exp/fwbw"


def gradients(kernel, x: dict, chunk: int) -> dict:
    """h and the gradients of one step (the same cotangent every time)."""
    for t in x.values():
        t.grad = None
    h = kernel(**x, chunk_size=chunk)
    g = torch.Generator(device=h.device).manual_seed(1)
    torch.autograd.backward(h, torch.randn(h.shape, generator=g, device=h.device).to(h.dtype))
    return {"h": h.detach().clone(), **{f"d{n}": x[n].grad.clone() for n in "qkv"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", nargs="+", default=["7b", "head128"], choices=sorted(pb.LAYOUTS))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    layouts = {"tiny": (1, 2, 128, 32, 64)} if args.smoke else {name: pb.LAYOUTS[name] for name in args.layout}
    chunk = 32 if args.smoke else 64
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (interpreter)"
    print(f"# {gpu}; torch {torch.__version__}; training step, packaged database, backward's state buffers forced")
    ours = get_mlstm_kernel("chunkwise--triton_auto")
    rows = []
    for lname, layout in layouts.items():
        x = pb.inputs(layout, device)
        os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
        dispatcher().reset()
        variant, config = backward_plan(x["q"], x["v"], "chunkwise", "exp")
        if variant.family != "chunkwise_bw":
            print(f"\n## {lname}: the database's backward is {variant.name}, not chunkwise: nothing to compare")
            continue
        if args.smoke:
            config = dict(config, chunk=chunk, dhqk_tile=16, dhhv_tile=16, states_dhqk_tile=16, states_dhhv_tile=16)
        print(f"\n## {lname}: B, NH, S, DHQK, DHHV = {layout}; backward {variant.name} {json.dumps(config)}")
        results = {}
        for form in (config.get("state_buffers", "float32"), "planes"):
            force = {FORCE_KEY: {"variant": variant.name, "config": dict(config, state_buffers=form)}}
            os.environ["MLSTM_AUTOTUNE_FORCE"] = json.dumps(force)
            dispatcher().reset()
            step = pb.step_fn(ours, x, chunk)
            row = {"layout": lname, "form": form, "ms": pb.timed(step, device),
                   "kernels": pb.kernels_of(step, device)[:10]}  # fmt: skip
            results[form] = gradients(ours, x, chunk)
            rows.append(row)
            print(f"  state buffers {form:8s} step {row['ms']:8.3f} ms")
            for name, ms in row["kernels"]:
                print(f"      {ms:8.3f}  {name}")
        base = results[next(iter(results))]
        same = {name: bool(torch.equal(results["planes"][name], t)) for name, t in base.items()}
        print(f"  planes == {next(iter(results))} bit for bit: {same}")
        os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
        del x
    print("\nlayout    state buffers   step ms")
    for r in rows:
        print(f"{r['layout']:9s} {r['form']:15s} {r['ms']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
