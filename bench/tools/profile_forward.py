"""Where the chunkwise forward's time goes on a GPU: each kernel of the two-pass structure timed alone over a small
sweep of launch configurations, plus experimental edits of the generated source that remove one cost at a time,
and the fused single pass. A diagnosis for the notes (tuning_db/reports/NOTES.md), not a test.

    python bench/tools/profile_forward.py --out DIR      (on a GPU; writes DIR/profile_forward.json and prints a table)
    TRITON_INTERPRET=1 python bench/tools/profile_forward.py --smoke   (the same code on tiny shapes on the CPU)

Experiments (each a copy of the generated module with one edit, checked against the unedited kernel first where
the edit keeps the function; "bound" edits change the result and are only timed):
    (out:prefix-diff, the decay matrix from a difference of prefix sums: the kernels' SEGMENT_SUMS=False, no edit)
    out:no-decay      (bound) no decay matrix at all: the cost of the gating arithmetic
    states:no-weights, states:no-n, states:no-store, states:no-chain, states:dot-only   (bound) the states kernel
                      without the weights on v, n, the store of each chunk's C, the max-state chain, or all four
    (states:scale-v, the states kernel weighting v instead of k: the launch parameter "states_weighting", no edit)

The configurations use the knobs' names (autotune.families); the rows written keep the short names of the reports
already recorded in tuning_db/reports/profile: LO = chunk_intra, BKS / BVS = states_dhqk_tile / states_dhhv_tile,
BKO / BVO = out_dhqk_tile / out_dhhv_tile, and for the fused pass L / BV = chunk / dhhv_tile.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from autotune import families, paths  # noqa: E402
from autotune.launch import chunkwise as launch  # noqa: E402
from autotune.launch.common import cdiv, dot_precision, last_state_buffers, state_args, stats_buffers  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402

LAYOUTS = {"7b": (32, 8, 2048, 256, 512), "head128": (32, 32, 2048, 128, 128)}  # 65,536 tokens each
DEVICE = "cuda"

EDITS = {
    "out:no-decay": [
        (
            "    b_D, b_D0, b_mt = _chunk_decay_matrix(b_lf, b_li, tl.load(mb_ptr + i_bhc), o_l, SEGMENT_SUMS)\n",
            "    b_mt = b_lf + b_li\n    b_D0 = b_mt\n    b_D = 1.0\n",
        )
    ],
}
# the states kernel without one of its costs beyond loads and the product, at "states_weighting": "v" (the shipped 7B
# point): the weights on v, n, the store of each chunk's C, the scalar max-state chain; and without all four
_STATES_COSTS = {
    "weights": ("                b_vw = (b_v.to(tl.float32) * b_w[:, None]).to(b_v.dtype)  # [LI, BV]\n",
                "                b_vw = b_v\n"),
    "n": ("                    b_n = b_decay * b_n + b_scale * tl.sum(b_kT32 * b_w[None, :], axis=1)\n",
          "                    b_n = b_n\n"),
    "store": ("            tl.store(Cb_ptr + i_bhc * DHQK * DHHV + o_kv, b_C.to(Cb_ptr.dtype.element_ty), mask=m_kv)\n",
              "            if i_c == NC - 1:  # the last chunk's only, so the product stays live\n"
              "                tl.store(Cb_ptr + i_bhc * DHQK * DHHV + o_kv, b_C.to(Cb_ptr.dtype.element_ty), "
              "mask=m_kv)\n"),
    "chain": ("                b_decay, b_scale, b_m = _chunk_transition(tl.load(gw_ptr + 2 * i_ci), "
              "tl.load(gw_ptr + 2 * i_ci + 1),\n" + " " * 58 + "b_m)  # fmt: skip\n",
              "                b_decay, b_scale = 0.99, 1.0\n"),
}  # fmt: skip
EDITS.update({f"states:no-{name}": [edit] for name, edit in _STATES_COSTS.items()})
EDITS["states:dot-only"] = list(_STATES_COSTS.values())
# they change the result: timed only; the others are first checked against the base
BOUND_EDITS = {"out:no-decay", "states:dot-only", *(f"states:no-{name}" for name in _STATES_COSTS)}


def edited_module(variant, name: str, workdir: Path, edits: list[tuple[str, str]] | None = None):
    """The variant's generated module with the edits (default EDITS[name]: (old, new) pairs, every occurrence of
    each old text replaced) applied, loaded from a copy under workdir."""
    source = (paths.generated_dir() / f"{variant.name}.py").read_text()
    for old, new in EDITS[name] if edits is None else edits:
        assert old in source, f"edit {name}: the generated source changed"
        source = source.replace(old, new)
    path = workdir / f"{variant.name}__{name.replace(':', '_').replace('-', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(layout):
    B, NH, S, K, V = layout
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=DEVICE) * scale

    return dict(q=rnd(B, NH, S, K).bfloat16(), k=rnd(B, NH, S, K).bfloat16(), v=rnd(B, NH, S, V).bfloat16(),
                i=rnd(B, NH, S, scale=2.0), f=rnd(B, NH, S, scale=2.0) + 3.0)  # fmt: skip


def states_call(module, x, cfg, buffers):
    B, NH, S, K = x["k"].shape
    V = x["v"].shape[-1]
    C0, n0, m0, has_state = state_args(None, None, None, x["k"])
    last = last_state_buffers(B, NH, K, V, x["k"].device, False)
    return lambda: launch._launch_states(module, x["k"], x["v"], x["i"], x["f"], C0, n0, m0, has_state, buffers, last,
                                         S=S, NC=cdiv(S, cfg["chunk_intra"]), config=cfg, store_borders=True,
                                         prec=dot_precision(torch.bfloat16))  # fmt: skip


def output_call(module, x, cfg, buffers, h):
    B, NH, S, K = x["q"].shape
    V = x["v"].shape[-1]
    stats = stats_buffers(B, NH, S, x["q"].device, None)
    LO = cfg["chunk_intra"]  # the output kernel's chunk, the stride of the stored states
    if cfg["out_values"] == "loop":
        kernel, grid = module.chunkwise_output_loop_kernel, (cdiv(S, LO), B * NH)
    else:
        kernel, grid = module.chunkwise_output_kernel, (cdiv(V, cfg["out_dhhv_tile"]), cdiv(S, LO), B * NH)
    return lambda: kernel[grid](
        x["q"],
        x["k"],
        x["v"],
        x["i"],
        x["f"],
        *buffers,
        h,
        *stats,
        *launch.no_packing(x["q"].device),
        S,
        cdiv(S, LO),
        0,
        scale=K**-0.5,
        eps=1e-6,
        DHQK=K,
        DHHV=V,
        LO=LO,
        BK=cfg["out_dhqk_tile"],
        BV=cfg["out_dhhv_tile"],
        NORMALIZE=True,
        STORE_STATS=False,
        DOT_PRECISION=dot_precision(torch.bfloat16),
        SEGMENT_SUMS=cfg.get("segment_sums", False),
        PACKED=False,
        num_warps=cfg["out_warps"],
        num_stages=cfg["num_stages"],
    )


def time_ms(fn) -> float | str:
    try:
        fn()
        if DEVICE == "cpu":  # the interpreter: one wall-clock call, says nothing about speed
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")
    except Exception as err:  # noqa: BLE001 - a configuration that does not compile is recorded
        return f"{type(err).__name__}: {str(err)[:120]}"


def state_buffers(B, NH, NC, K, V):
    """Chunk states (bf16 C, fp32 n and m) of NC chunks."""
    return (torch.empty(B, NH, NC, K, V, dtype=torch.bfloat16, device=DEVICE),
            torch.empty(B, NH, NC, K, device=DEVICE), torch.empty(B, NH, NC, device=DEVICE))  # fmt: skip


def keep(rows: list[dict], path: Path) -> None:
    """Write the rows so far (a sweep cut off by its time limit keeps them) and print the last."""
    path.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows[-1]), flush=True)


def free_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def lo64_setup(variant, layout):
    """Inputs, the default configuration at chunk_inter = chunk_intra = 64, and state buffers for it."""
    B, NH, S, K, V = layout
    config = dict(families.default_config(variant, K, V), chunk_intra=64, chunk_inter=64)
    return inputs(layout), config, state_buffers(B, NH, cdiv(S, 64), K, V)


# the states sweep's points ((BKS, BVS), warps): 8 warps only for the big state tiles (they lost everywhere else,
# profile/..._profile_forward_7b.log)
STATES_TILES = [((64, 128), 4), ((64, 64), 4), ((128, 64), 4), ((256, 32), 4), ((256, 64), 4), ((256, 64), 8),
                ((128, 128), 4), ((128, 128), 8)]  # fmt: skip
# --sweep states-narrow: one- and two-warp programs, as FLA's chunk_fwd_kernel_h runs (1 warp, 8 programs per SM,
# 3.2 TB/s against our 2.56 at the 7B layout: ncu, profile/2026-11-30g_ncu_fw_7b.log), after the shipped point
NARROW_TILES = [((64, 128), 4), ((256, 16), 1), ((128, 32), 1), ((64, 64), 1), ((64, 32), 1), ((128, 16), 1),
                ((256, 32), 2), ((128, 64), 2), ((64, 128), 2), ((256, 16), 2)]  # fmt: skip
# --sweep states-kT: k^T weighted where it is loaded (the product's A operand from registers, v from memory as is)
# against the shipped v weighting, at the shipped point first, then wider key tiles (A in registers needs 64 rows per
# warp group)
KT_TILES = [((64, 128), 4), ((64, 64), 4), ((64, 256), 4), ((128, 64), 4), ((128, 128), 4), ((128, 128), 8),
            ((256, 64), 8), ((64, 256), 8)]  # fmt: skip
# --sweep states-n: n reduced against n on the tensor cores, for each weighting, at the shipped point and its
# neighbours
N_TILES = [((64, 128), 4), ((64, 64), 4), ((128, 64), 4), ((64, 256), 8)]


def states_sweep(args, start: float, out: Path, mode: str = "all") -> int:
    """The states kernel alone at LO=64: states_gates "inline" against "pre" (the prep kernel included in the time)
    and states_weighting "k" against "v", at each point of tiles, warps and stages (so a cut-off sweep still compares
    all four at the points it reached); the stored states checked against the default kernel. ``mode`` "narrow":
    the NARROW_TILES points at 2 and 3 stages, gates "pre" only (the shipped entries' choice); "kT": the KT_TILES
    points at 2 and 3 stages, gates "pre", weighting "v" (shipped) against "kT" (k^T weighted where it is loaded);
    "n": the N_TILES points at 2 and 3 stages, gates "pre", each weighting with n reduced ("states_n": "sum") and
    formed on the tensor cores ("dot")."""
    variant = find(launch.TWOPASS, cell="exp", state="input")
    module = load_variant(variant)
    rows = []
    tiles = {"all": STATES_TILES, "narrow": NARROW_TILES, "kT": KT_TILES, "n": N_TILES}[mode]
    stages = (1, 2, 3) if mode == "all" else (2, 3)
    weightings = {"kT": ("v", "kT"), "n": ("v", "kT", "k")}.get(mode, ("k", "v"))
    kinds = list(itertools.product(("inline", "pre") if mode == "all" else ("pre",), weightings,
                                   ("sum", "dot") if mode == "n" else ("sum",)))  # fmt: skip
    name = f"profile_states{'' if mode == 'all' else '_' + mode}.json"
    for lname, layout in LAYOUTS.items():
        B, NH, S, K, V = layout
        x, cfg, buffers = lo64_setup(variant, layout)
        states_call(module, x, dict(cfg, states_gates="inline", states_weighting="k", states_n="sum"), buffers)()
        ref = [b.float().clone() for b in buffers]
        for ((bk, bv), w), st, (gates, weighting, n) in itertools.product(tiles, stages, kinds):
            if time.monotonic() - start > args.budget_s or bk > K or bv > V:
                continue
            c = dict(cfg, states_gates=gates, states_weighting=weighting, states_n=n, states_dhqk_tile=bk,
                     states_dhhv_tile=bv, states_warps=w, num_stages=st)  # fmt: skip
            ms = time_ms(states_call(module, x, c, buffers))
            errs = [((b.float() - r).norm() / r.norm().clamp_min(1e-30)).item() for b, r in zip(buffers, ref)]
            rows.append(dict(layout=lname, kind=f"states-{gates}-{weighting}-n{n}", BKS=bk, BVS=bv, warps=w, stages=st,
                             ms=ms, rel_err_C_n_m=errs))  # fmt: skip
            keep(rows, out / name)
        del x, buffers
        free_cache()
    print("\nlayout   kernel           best ms  point")
    for lname in LAYOUTS:
        for gates, weighting, n in kinds:
            kind = f"states-{gates}-{weighting}-n{n}"
            got = [r for r in rows if r["layout"] == lname and r["kind"] == kind and isinstance(r["ms"], float)]
            if got:
                b = min(got, key=lambda r: r["ms"])
                print(
                    f"{lname:8s} {kind:16s} {b['ms']:7.3f}  BKS={b['BKS']} BVS={b['BVS']} warps={b['warps']} "
                    f"stages={b['stages']} err={max(b['rel_err_C_n_m']):.1e}"
                )
    return 0


def states_bounds(args, start: float, out: Path) -> int:
    """The states kernel at the shipped 7B point (BKS 64, BVS 128, 4 warps, gates "pre", weighting "v", 2 and 3
    stages) as it is and without each of its costs beyond loads and the product (the bound edits "states:no-*" and
    "states:dot-only", timed only): how much of its time each cost takes."""
    variant = find(launch.TWOPASS, cell="exp", state="input")
    work = Path(tempfile.mkdtemp())
    modules = {"base": load_variant(variant)}
    modules.update({name: edited_module(variant, name, work) for name in EDITS if name.startswith("states:")})
    rows = []
    for lname, layout in LAYOUTS.items():
        x, cfg, buffers = lo64_setup(variant, layout)
        for (name, module), st in itertools.product(modules.items(), (2, 3)):
            if time.monotonic() - start > args.budget_s:
                break
            c = dict(cfg, states_gates="pre", states_weighting="v", states_n="sum", states_dhqk_tile=64,
                     states_dhhv_tile=128, states_warps=4, num_stages=st)  # fmt: skip
            rows.append(dict(layout=lname, what=name, stages=st, ms=time_ms(states_call(module, x, c, buffers))))
            keep(rows, out / "profile_states_bounds.json")
        del x, buffers
        free_cache()
    print("\nlayout   states kernel        best ms")
    for lname in LAYOUTS:
        for name in modules:
            got = [r["ms"] for r in rows if r["layout"] == lname and r["what"] == name and isinstance(r["ms"], float)]
            if got:
                print(f"{lname:8s} {name:20s} {min(got):7.3f}")
    return 0


def loop_sweep(args, start: float, out: Path) -> int:
    """The output kernels alone at LO=64: one program per value tile ("tiles", segment sums as before, and with the
    difference of prefix sums) against one program per chunk looping over value tiles ("loop", prefix sums)."""
    variant = find(launch.TWOPASS, cell="exp", state="input")
    module = load_variant(variant)
    rows = []
    for lname, layout in LAYOUTS.items():
        B, NH, S, K, V = layout
        x, cfg, buffers = lo64_setup(variant, layout)
        h = torch.empty(B, NH, S, V, dtype=torch.bfloat16, device=DEVICE)
        states_call(module, x, cfg, buffers)()
        output_call(module, x, dict(cfg, out_values="tiles", segment_sums=True), buffers, h)()
        ref = h.float().clone()
        points = [("tiles", True, 64, 128, 4, 3), ("tiles", False, 64, 128, 4, 3)] + [
            ("loop", False, bk, bv, w, st) for (bk, bv), w, st in itertools.product(
                ((64, 128), (64, 64), (128, 64), (64, 256), (32, 128)), (4, 8), (1, 2, 3))]  # fmt: skip
        for kind, seg, bk, bv, w, st in points:
            if time.monotonic() - start > args.budget_s or bk > K or bv > V:
                continue
            c = dict(cfg, out_values=kind, segment_sums=seg, out_dhqk_tile=bk, out_dhhv_tile=bv, out_warps=w,
                     num_stages=st)  # fmt: skip
            call = output_call(module, x, c, buffers, h)
            ms = time_ms(call)
            err = ((h.float() - ref).norm() / ref.norm()).item() if isinstance(ms, float) else None
            rows.append(dict(layout=lname, kind="output-" + kind, segment_sums=seg, BKO=bk, BVO=bv, warps=w,
                             stages=st, ms=ms, rel_err_vs_tiles=err))  # fmt: skip
            (out / "profile_output_loop.json").write_text(json.dumps(rows, indent=1))
            print(json.dumps(rows[-1]), flush=True)
        del x, buffers, h
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    print("\nlayout   kernel        segsum  best ms  point")
    for lname in LAYOUTS:
        for kind in ("output-tiles", "output-loop"):
            for seg in (True, False):
                got = [r for r in rows if r["layout"] == lname and r["kind"] == kind and r["segment_sums"] == seg
                       and isinstance(r["ms"], float)]  # fmt: skip
                if got:
                    b = min(got, key=lambda r: r["ms"])
                    print(
                        f"{lname:8s} {kind:13s} {seg!s:6s} {b['ms']:7.3f}  BKO={b['BKO']} BVO={b['BVO']} "
                        f"warps={b['warps']} stages={b['stages']} err={b['rel_err_vs_tiles']:.1e}"
                    )
    return 0


def main() -> int:
    global DEVICE, LAYOUTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--budget-s", type=float, default=500)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes on the CPU under TRITON_INTERPRET=1 (a run of "
        "the script only: the interpreter mis-computes bf16 dots, so the error columns mean nothing)",
    )
    ap.add_argument("--layout", choices=sorted(LAYOUTS), help="only this head layout (e.g. one per GPU)")
    sweeps = ("all", "loop", "states", "states-narrow", "states-kT", "states-n", "states-bounds")
    ap.add_argument(
        "--sweep",
        choices=sweeps,
        default="all",
        help="loop: only the output kernels (per-tile and per-chunk loop) at LO=64; states: only the "
        "states kernel, gates in its loop against gates computed first; states-narrow: its one- and "
        "two-warp points (gates pre); states-kT: k^T weighted where it is loaded against v weighted "
        "(gates pre); states-n: n reduced against n on the tensor cores; states-bounds: the states "
        "kernel without each of its costs (timed only); each checked, then timed",
    )
    args = ap.parse_args()
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        DEVICE, LAYOUTS = "cpu", {"7b": (1, 1, 256, 64, 128), "head128": (1, 2, 256, 32, 32)}
    if args.layout:
        LAYOUTS = {args.layout: LAYOUTS[args.layout]}
    if args.sweep == "loop":
        return loop_sweep(args, start, out)
    if args.sweep == "states-bounds":
        return states_bounds(args, start, out)
    if args.sweep.startswith("states"):
        return states_sweep(args, start, out, mode={"states": "all", "states-narrow": "narrow", "states-kT": "kT",
                                                    "states-n": "n"}[args.sweep])  # fmt: skip
    work = Path(tempfile.mkdtemp())
    variant = find(launch.TWOPASS, cell="exp", state="input")
    base = load_variant(variant)
    rows = []

    def record(**row):
        rows.append(row)
        (out / "profile_forward.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(row), flush=True)

    for lname, layout in LAYOUTS.items():
        B, NH, S, K, V = layout
        x = inputs(layout)
        cfg0 = families.default_config(variant, K, V)
        # correctness of the edited modules that keep the function: h against the unedited kernels
        for LO in (64, 128):
            buffers = state_buffers(B, NH, cdiv(S, LO), K, V)
            h = torch.empty(B, NH, S, V, dtype=torch.bfloat16, device=DEVICE)
            cfg = dict(cfg0, chunk_intra=LO, chunk_inter=64)
            states_call(base, x, cfg, buffers)()
            output_call(base, x, cfg, buffers, h)()
            ref = h.float().clone()
            for name in [n for n in EDITS if n not in BOUND_EDITS]:
                mod = edited_module(variant, name, work)
                states_call(mod if name.startswith("states") else base, x, cfg, buffers)()
                output_call(mod if name.startswith("out") else base, x, cfg, buffers, h)()
                err = ((h.float() - ref).norm() / ref.norm()).item()
                record(layout=lname, kind="check", what=name, LO=LO, rel_err_vs_base=err)
            # the states kernel: a sweep
            for (BKS, BVS), w, st in itertools.product(((32, 64), (64, 64), (64, 128), (128, 64), (32, 128)), (4, 8),
                                                       (1, 3)):  # fmt: skip
                if time.monotonic() - start > args.budget_s:
                    break
                if BKS > K or BVS > V:
                    continue
                c = dict(cfg, states_dhqk_tile=BKS, states_dhhv_tile=BVS, states_warps=w, num_stages=st)
                record(layout=lname, kind="states", LO=LO, BKS=BKS, BVS=BVS, warps=w, stages=st,
                       ms=time_ms(states_call(base, x, c, buffers)))  # fmt: skip
            states_call(base, x, cfg, buffers)()
            for (BKO, BVO), w, st in itertools.product(((64, 64), (128, 64), (64, 128), (32, 64)), (4, 8), (1, 2, 3)):
                if time.monotonic() - start > args.budget_s:
                    break
                if BKO > K or BVO > V:
                    continue
                c = dict(cfg, out_dhqk_tile=BKO, out_dhhv_tile=BVO, out_warps=w, num_stages=st)
                record(layout=lname, kind="output", LO=LO, BKO=BKO, BVO=BVO, warps=w, stages=st,
                       ms=time_ms(output_call(base, x, c, buffers, h)))  # fmt: skip
            # the edits, at the default tiles and at 8 warps / 2 stages
            for name in EDITS:
                mod = edited_module(variant, name, work)
                for w, st in ((4, 1), (8, 2)):
                    c = dict(cfg, states_warps=w, out_warps=w, num_stages=st)
                    call = states_call(mod, x, c, buffers) if name.startswith("states") else \
                        output_call(mod, x, c, buffers, h)  # fmt: skip
                    record(layout=lname, kind="edit", what=name, LO=LO, warps=w, stages=st, ms=time_ms(call))
            del buffers, h
            torch.cuda.empty_cache()
        # the fused single pass (no state traffic), a few points
        fused = find(launch.FUSED, cell="exp", state="input")
        for L, BV, w, st in itertools.product((64, 128), (16, 32, 64), (4, 8), (1, 2)):
            if time.monotonic() - start > args.budget_s:
                break
            args_ = [x[n] for n in ("q", "k", "v", "i", "f")]
            cfg = {"chunk": L, "dhhv_tile": BV, "num_warps": w, "num_stages": st}
            call = lambda a=args_, c=cfg, v=fused: launch.chunkwise_fw(*a, variant=v, config=c)  # noqa: E731
            record(layout=lname, kind="fused", L=L, BV=BV, warps=w, stages=st, ms=time_ms(call))
        del x
        torch.cuda.empty_cache()
    # summary: the best of each kind per layout
    print("\nlayout   kind     best ms  point")
    for lname in LAYOUTS:
        for kind in ("states", "output", "fused", "edit"):
            got = [r for r in rows if r["layout"] == lname and r["kind"] == kind and isinstance(r.get("ms"), float)]
            if got:
                best = min(got, key=lambda r: r["ms"])
                point = {k: v for k, v in best.items() if k not in ("layout", "kind", "ms")}
                print(f"{lname:8s} {kind:8s} {best['ms']:7.3f}  {point}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
