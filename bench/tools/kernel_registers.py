"""Registers and spills of the generated kernels for sm_90 (H100/H200), without a GPU: each kernel of a variant is
compiled ahead of time at a given launch configuration (autotune.compile_check's recorded launch), and its PTX is
assembled again by the ptxas that Triton ships, with -v. What a spill costs shows only on a GPU; this says where
registers run out, for tuning_db/reports/NOTES.md. Not a test.

    python bench/tools/kernel_registers.py --layout 7b            # the chunkwise backward's configurations
    python bench/tools/kernel_registers.py --layout head128 --config '{"num_stages": 2}'
    python bench/tools/kernel_registers.py --form fw --layout 7b   # the two-pass forward's output kernels
    python bench/tools/kernel_registers.py --layout 7b --kernels split --state planes \
        --config '{"states": "reuse", "state_buffers": "planes"}'   # a backward reading states as planes
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402

from autotune import compile_check, families  # noqa: E402
from autotune.launch import chunkwise, chunkwise_bw  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402

LAYOUTS = {"7b": (256, 512), "head128": (128, 128)}
# changes to the backward's default configuration, as in bench/tools/profile_backward.py
CHANGES = {
    "default": {},
    "2 stages": {"num_stages": 2},
    "value tiles 128": {"dhhv_tile": 128},
    "key tiles 128": {"dhqk_tile": 128},
    "key tiles 32": {"dhqk_tile": 32},
    "8 warps": {"num_warps": 8},
    "chunk 128": {"chunk": 128},
    "chunk 32": {"chunk": 32},
    "fp32 buffers": {"state_buffers": "float32"},
}
# changes to the two-pass forward's default configuration (--form fw)
FORWARD_CHANGES = {
    "default (loop)": {},
    "tiles": {"out_values": "tiles"},
    "loop chunk_intra 128": {"chunk_intra": 128},
}


def renamed(variant, change: dict) -> dict:
    """``change`` with the knobs' former names (BK, L, ...: a --config written before the rename) replaced by the
    current ones; unlike families.canonical, it adds no knob that ``change`` does not name."""
    renames = {k.old: k.name for k in families.of(variant.template).knobs if k.old}
    out, given_as = {}, {}
    for name, value in change.items():
        new = renames.get(name, name)
        if new in out:
            raise SystemExit(f"launch parameter {new} given twice (as {given_as[new]} and as {name})")
        out[new], given_as[new] = value, name
    return out


def ptxas_report(ptx: str, arch: str = "sm_90a") -> dict:
    """Registers, spill stores and loads (bytes) of each kernel in ``ptx``, from ptxas -v."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([get_ptxas(90).path, "-v", f"--gpu-name={arch}", str(src), "-o", str(src) + ".o"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    log = out.stderr + out.stdout
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(regs[-1]) if regs else None,
            "spill_stores": int(spills[-1][0]) if spills else None,
            "spill_loads": int(spills[-1][1]) if spills else None}  # fmt: skip


def report(variant, config: dict, DHQK: int, DHHV: int, dtype=torch.bfloat16) -> list[dict]:
    module = load_variant(variant)
    with compile_check._recording(module) as recorders:
        compile_check._launch_small(variant, dtype, DHQK, DHHV, config=config)
    rows = []
    for name, rec in recorders.items():
        for args, kwargs in rec.calls[:1]:
            compiled = compile_check._compile(rec.fn, args, dict(kwargs), GPUTarget("cuda", 90, 32))
            rows.append({"kernel": name, "shared": compiled.metadata.shared, **ptxas_report(compiled.asm["ptx"])})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=LAYOUTS, default="7b")
    p.add_argument("--config", help="JSON changes to the default configuration (instead of the built-in list)")
    p.add_argument("--kernels", default="fused", choices=("fused", "split"))
    p.add_argument("--form", default="bw", choices=("bw", "fw"), help="the backward, or the two-pass forward")
    p.add_argument("--state", default="input", choices=families.TWOPASS_STATES,
                   help="the two-pass forward's states (--form fw); for a backward that reuses states, the form the "
                   "training forward stores them in (launch.chunkwise.TRAINING_STATES), float32 or planes")  # fmt: skip
    args = p.parse_args()
    DHQK, DHHV = LAYOUTS[args.layout]
    if args.form == "bw" and args.state != "input":
        chunkwise.TRAINING_STATES = args.state
    if args.form == "fw":
        variant = find(chunkwise.TWOPASS, cell="exp", state=args.state)
    else:
        variant = find(chunkwise_bw.TEMPLATE, cell="exp", kernels=args.kernels)
    changes = {"given": json.loads(args.config)} if args.config else (FORWARD_CHANGES if args.form == "fw" else CHANGES)
    print(f"{'configuration':20} {'kernel':34} {'regs':>5} {'spill st':>9} {'spill ld':>9} {'smem':>7}")
    for label, change in changes.items():
        config = families.canonical(
            variant.template, {**families.default_config(variant, DHQK, DHHV), **renamed(variant, change)}
        )
        for row in report(variant, config, DHQK, DHHV):
            print(f"{label:20} {row['kernel']:34} {row['registers']!s:>5} {row['spill_stores']!s:>9} "
                  f"{row['spill_loads']!s:>9} {row['shared']:>7}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
