"""The two-pass forward's states kernel storing each chunk's C through a tensor descriptor ("states_store": "tma")
against plain stores ("plain"), bf16, 65,536 tokens:
  1. the states kernel alone at the built-in default (k^T weighted, n on the tensor cores, 64 x 128 tiles, 4 warps)
     at 2 and 3 stages, 7B and head-128 layouts at S=2048: its median time and whether the stored states are the
     same bits;
  2. the whole forward through the gate and then timed (autotune.measure.evaluate_here, as the tuner judges a
     candidate), at the default and at this GPU's packaged database entries (tuning_db/<GPU>.json), each with the
     store it has and with the other one, at S = 2048 and 8192;
  3. the same for a training step (forward + backward) with the backward's "state_stores": its reverse
     recurrence's dC tiles (and recomputed states) stored through descriptors.
The store of C was the states kernel's largest cost left (0.40 of 1.18 ms at 7B by a bound edit, behind one
barrier; docs/performance.md, the states kernel).

    python bench/tools/tma_store.py [--layouts 7b head128] [--parts states forward training]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
import profile_forward as pf  # noqa: E402

from autotune import db, families, measure, paths  # noqa: E402
from autotune.launch import chunkwise as launch  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402

HEADS = {"7b": (8, 256, 512), "head128": (32, 128, 128)}  # NH, DHQK, DHHV
STORES = ("plain", "tma")


def states_alone(layouts: list[str]) -> None:
    print("\n# 1. the states kernel alone, default point, S=2048 (median ms of triton.testing.do_bench)")
    print(f"{'layout':8} {'stages':>6} {'plain':>8} {'tma':>8} {'tma/plain':>9}  same bits")
    variant = find(launch.TWOPASS, cell="exp", state="input")
    module = load_variant(variant)
    for layout in layouts:
        x, cfg, buffers = pf.lo64_setup(variant, pf.LAYOUTS[layout])
        for stages in (2, 3):
            ms, stored = {}, {}
            for store in STORES:
                c = dict(cfg, num_stages=stages, states_store=store)
                call = pf.states_call(module, x, c, buffers)
                for b in buffers:
                    b.fill_(7.0)
                call()
                torch.cuda.synchronize()
                stored[store] = [b.clone() for b in buffers]
                ms[store] = pf.time_ms(call)
            same = all(torch.equal(a, b) for a, b in zip(stored["plain"], stored["tma"]))
            ratio = ms["tma"] / ms["plain"] if all(isinstance(t, float) for t in ms.values()) else float("nan")
            cells = " ".join(f"{t:8.3f}" if isinstance(t, float) else f"{'fail':>8}" for t in ms.values())
            print(f"{layout:8} {stages:6} {cells} {ratio:9.3f}  {same}", flush=True)
            for t in ms.values():
                if not isinstance(t, float):
                    print(f"#   {t}")
        del x, buffers
        pf.free_cache()


# what each part compares: (template, the database key's structure, direction, the knob)
PARTS = {"forward": (launch.TWOPASS, "chunkwise_twopass_fw", "fw", "states_store"),
         "training": ("chunkwise_bw.py.j2", "chunkwise_bw", "fwbw", "state_stores")}  # fmt: skip


def database_entries(gpu: str, part: str, DHQK: int, DHHV: int) -> dict[int, tuple[str, dict]]:
    """S -> (variant, config) of the packaged database's bf16 exp-cell entries of ``part`` for these head dims."""
    template, structure, direction, _ = PARTS[part]
    path = paths.tuning_db_dir() / db.file_name(gpu)
    if not path.exists():
        return {}
    out = {}
    for e in json.loads(path.read_text())["entries"]:
        k = e["key"]
        if (k["op"], k["direction"], k["dtype"], k["structure"], k["DHQK"], k["DHHV"]) == (
            "chunkwise:exp", direction, "bfloat16", structure, DHQK, DHHV):  # fmt: skip
            out[k["S"]] = (e["variant"], families.canonical(template, e["config"]))
    return out


def gated_times(part: str, layouts: list[str]) -> None:
    template, _, direction, knob = PARTS[part]
    gpu = torch.cuda.get_device_name()
    print(f"\n# {part}: {direction} through the gate, then timed (evaluate_here: median ms), {knob} plain and tma; "
          f"entries of {db.file_name(gpu)}")  # fmt: skip
    print(f"{'layout':8} {'S':>5} {'point':9} {knob:13} {'gate':5} {'error':>9} {'ms':>8}  reason")
    default_variant = (find(template, cell="exp", state="input") if part == "forward"
                       else find(template, cell="exp", kernels="split"))  # fmt: skip
    for layout in layouts:
        NH, K, V = HEADS[layout]
        entries = database_entries(gpu, part, K, V)
        for S in (2048, 8192):
            points = [("default", default_variant.name, families.default_config(default_variant, K, V))]
            if S in entries:
                points.append(("database", *entries[S]))
            for label, name, config in points:
                own = config.get(knob, "plain")
                for store in sorted(STORES, key=lambda s: s != own):  # the point as it is first
                    job = measure.Job(name, dict(config, **{knob: store}), 65536 // S, NH, S, K, V, "bfloat16",
                                      "cuda")  # fmt: skip
                    out = measure.evaluate_here(job)
                    ms = f"{out.p50_ms:8.3f}" if out.ok else f"{'-':>8}"
                    err = f"{out.error:9.2e}" if out.error is not None else f"{'-':>9}"
                    print(f"{layout:8} {S:5} {label:9} {store:13} {'pass' if out.ok else 'FAIL':5} {err} {ms}  "
                          f"{(out.reason or '')[:160]}", flush=True)  # fmt: skip
            pf.free_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", nargs="+", choices=HEADS, default=list(HEADS))
    ap.add_argument("--parts", nargs="+", choices=("states", *PARTS), default=["states", *PARTS])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a GPU (the interpreter's times mean nothing; tests/test_triton_kernels.py checks the bits)")
        return 2
    print(f"# {torch.cuda.get_device_name()}; torch {torch.__version__} triton {triton.__version__}; bf16, 65,536 "
          f"tokens")  # fmt: skip
    if "states" in args.parts:
        states_alone(args.layouts)
    for part in PARTS:
        if part in args.parts:
            gated_times(part, args.layouts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
