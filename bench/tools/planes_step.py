"""What storing the training step's chunk states as planes does to its time: forward+backward of
``chunkwise--triton_auto`` at the 7B and head-128 layouts (65,536 tokens, bf16) with this GPU's packaged database
and its backward choice, in three forms: as shipped (the training forward's states in fp32); the training forward
storing planes (launch.chunkwise.TRAINING_STATES = "planes"; a backward reusing them reads them so); and that with
the backward's state buffers as planes too (forced through MLSTM_AUTOTUNE_FORCE). Each form: the step's median time,
its kernels under torch.profiler, and whether h, dq, dk, dv equal the shipped form's bit for bit (on the CPU they do:
tests/test_state_planes.py; a GPU compiler may order the two products' sums differently). A shipped entry with
16-bit state buffers ("input") gives different gradients with planes buffers: the comparison then says so.

Prediction (docs/performance.md, "Training states as planes"), written before the first measurement: the output
loop kernel 2.50 -> about 2.0 ms at 7B, the dq/dk kernel 5.84 -> about 4 ms (its state tiles no longer split in
registers, their bytes unchanged), the states and dstate kernels unchanged; the step 13.5 -> about 11 ms on an H100.

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
from autotune.launch import chunkwise as launch_chunkwise  # noqa: E402
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
    print(
        f"# {gpu}; torch {torch.__version__}; training step, packaged database; the training forward's states and the "
        "backward's state buffers as named"
    )
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
        shipped = config.get("state_buffers", "float32")
        forms = {f"shipped (buffers {shipped})": ("float32", shipped), "forward planes": ("planes", shipped),
                 "forward planes, buffers planes": ("planes", "planes")}  # fmt: skip
        for form, (training_states, buffers) in forms.items():
            launch_chunkwise.TRAINING_STATES = training_states
            force = {FORCE_KEY: {"variant": variant.name, "config": dict(config, state_buffers=buffers)}}
            os.environ["MLSTM_AUTOTUNE_FORCE"] = json.dumps(force)
            dispatcher().reset()
            step = pb.step_fn(ours, x, chunk)
            row = {"layout": lname, "form": form, "ms": pb.timed(step, device),
                   "kernels": pb.kernels_of(step, device)[:10]}  # fmt: skip
            results[form] = gradients(ours, x, chunk)
            rows.append(row)
            print(f"  {form:32s} step {row['ms']:8.3f} ms")
            for name, ms in row["kernels"]:
                print(f"      {ms:8.3f}  {name}")
        launch_chunkwise.TRAINING_STATES = "float32"
        first, *others = results
        for form in others:
            same = {name: bool(torch.equal(results[form][name], t)) for name, t in results[first].items()}
            print(f"  {form} == {first} bit for bit: {same}")
        os.environ.pop("MLSTM_AUTOTUNE_FORCE", None)
        del x
    print("\nlayout    form                              step ms")
    for r in rows:
        print(f"{r['layout']:9s} {r['form']:32s} {r['ms']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
