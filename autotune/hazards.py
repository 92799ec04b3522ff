"""Static checks for the known Triton 3.6 hazards on sm_90 (docs/hazards.md), on a kernel compiled for the GPU
target without a GPU (autotune.compile_check).

mixed-use rings: software pipelining (num_stages >= 2) copies a loop's loads ahead into rings of shared-memory
buffers. A load whose tile feeds an asynchronous warp-group dot *and* a register read (``ttg.local_load``) gets a
ring one buffer shallower than a load feeding dots only (measured on the two-pass forward's output kernel: q in a
2-deep ring beside k's 3-deep at 3 stages, 1-deep at 2 stages), while the dot reading it stays in flight into the
next iteration (``warp_group_dot_wait {pendings = 1}``): the copy for a later iteration overwrites the tile the dot
still reads. Results then change from run to run. ``mixed_use_rings`` finds such rings in TTGIR.

transposed accumulators: ``tl.trans`` of a value in a dot's accumulator layout (``#mma``) gives a ``#linear`` layout
that Triton 3.4 up to 3.7.0 lowers wrongly on sm_90 when it feeds another dot (triton-lang/triton#6124; the head-128
chunkwise backward's dq and dk were 20x off). ``transposed_accumulators`` finds such a ``tt.trans`` whose result
goes to shared memory as a dot operand: the kernels form transposed products instead.
"""

from __future__ import annotations

import itertools
import json
import re
import sys

import torch

_ALLOC = re.compile(r"(%[\w.]+) = ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x")
_INDEX = re.compile(r"(%[\w.]+) = ttg\.memdesc_index (%[\w.]+)\[")
_LOCAL_LOAD = re.compile(r"= ttg\.local_load (%[\w.]+)")
_DOT = re.compile(r"= ttng\.warp_group_dot (%[\w.]+), (%[\w.]+)")


def mixed_use_rings(ttgir: str) -> list[str]:
    """The shared-memory rings (their SSA names) that an asynchronous warp-group dot and a register read both
    consume: the mixed-use pipelining hazard. Names are resolved by scope (MLIR prints sibling regions, e.g. two
    loops, with the same value names)."""
    rings = {name for name, _ in _ALLOC.findall(ttgir)}
    scopes: list[dict] = [{}]
    loaded, dotted = set(), set()

    def ring_of(view: str) -> str | None:
        return next((scope[view] for scope in reversed(scopes) if view in scope), None)

    for line in ttgir.splitlines():
        stripped = line.strip()
        if stripped.startswith("}"):
            scopes.pop()
        index = _INDEX.search(line)
        if index and index.group(2) in rings:
            scopes[-1][index.group(1)] = index.group(2)
        for view in _LOCAL_LOAD.findall(line):
            loaded.add(ring_of(view))
        for pair in _DOT.findall(line):
            dotted.update(ring_of(view) for view in pair)
        if stripped.endswith("{"):
            scopes.append({})
    return sorted((loaded & dotted) - {None})


_TRANS_MMA = re.compile(r"(%[\w.#]+) = tt\.trans (%[\w.#]+) .*: tensor<[^>]*#mma\d*>")


def transposed_accumulators(ttgir: str) -> list[str]:
    """The results (SSA names) of ``tt.trans`` applied to a tensor in a dot accumulator's layout that become a dot
    operand: stored to shared memory (``ttg.local_alloc``) or taken by a dot directly. (A transposed accumulator
    that is only stored, through a layout conversion, is not this hazard: the fused forward's ``(C^T q^T)^T``
    measured correct.)"""
    found = []
    for result, _ in _TRANS_MMA.findall(ttgir):
        name = re.escape(result)
        if re.search(rf"ttg\.local_alloc {name}\b|warp_group_dot [^:]*{name}\b|tt\.dot [^:]*{name}\b", ttgir):
            found.append(result)
    return found


def _depth_of(ttgir: str) -> dict[str, int]:
    return {name: int(depth) for name, depth in _ALLOC.findall(ttgir)}


def shallow_mixed_use_rings(ttgir: str, num_stages: int) -> list[str]:
    """The mixed-use rings shallower than ``num_stages`` buffers: the form the race takes (a compiler that gives such
    a ring its full depth would make the sharing safe)."""
    depth = _depth_of(ttgir)
    return [ring for ring in mixed_use_rings(ttgir) if depth[ring] < num_stages]


def check_point(variant, config: dict, DHQK: int, DHHV: int, dtype, arch: int = 90) -> list[str]:
    """The hazards in the kernels that a launch of ``variant`` with ``config`` compiles for sm_``arch``: one line per
    kernel and ring. The launch is recorded on small CPU tensors, not run (autotune.compile_check), and each recorded
    kernel is compiled for the target; Triton's cache makes a repeat free."""
    from triton.backends.compiler import GPUTarget

    from . import compile_check
    from .load import load_variant

    module = load_variant(variant)
    with compile_check._recording(module) as recorders:
        compile_check._launch_small(variant, dtype, DHQK, DHHV, dict(config))
    if not any(r.calls for r in recorders.values()):
        raise RuntimeError(f"no kernel of {variant.name} was recorded (under TRITON_INTERPRET=1 nothing compiles)")
    found = []
    for name, recorder in recorders.items():
        for args, kwargs in recorder.calls:
            stages = kwargs.get("num_stages", 1)
            kernel = compile_check._compile(recorder.fn, args, dict(kwargs), GPUTarget("cuda", arch, 32))
            ttgir = kernel.asm["ttgir"]
            for ring in shallow_mixed_use_rings(ttgir, stages):
                found.append(f"mixed-use pipelining hazard in {name} at num_stages {stages}: shared-memory ring "
                             f"{ring} read by a warp-group dot and by registers (docs/hazards.md)")  # fmt: skip
            for value in transposed_accumulators(ttgir):
                found.append(f"transposed accumulator as a dot operand in {name}: {value} = tt.trans of a value in "
                             f"a dot's accumulator layout (docs/hazards.md)")  # fmt: skip
    return found


def scan_shipped(dtype=torch.bfloat16) -> list[dict]:
    """check_point for every entry of the packaged databases (forward and training; the step and sequence kernels
    have no pipelined loop with a dot) and every built-in default: one dict per distinct point, with its hazards."""
    from . import db as tdb
    from . import paths, validate
    from .variants import by_name

    rows = [r for path in sorted(paths.tuning_db_dir().glob("*.json")) if (d := tdb.read(path)) is not None
            for r in validate.entry_rows(d)] + validate.default_rows((str(dtype).removeprefix("torch."),))  # fmt: skip
    seen, out = set(), []
    for r in rows:
        point = (r.variant, json.dumps(r.config, sort_keys=True), r.DHQK, r.DHHV)
        if point not in seen:
            seen.add(point)
            found = check_point(by_name(r.variant), r.config, r.DHQK, r.DHHV, dtype)
            out.append({"key": r.key, "variant": r.variant, "config": r.config, "DHQK": r.DHQK, "hazards": found})
    return out


def scan_space(dtype=torch.bfloat16, head_dims=((128, 128), (256, 512)), stages=(2, 3)) -> list[dict]:
    """check_point over the structural choices of the pipelined families (the two-pass forward's output kernels,
    weightings, n forms and state stores; the chunkwise backward's state buffers, weightings, gate forms and state
    stores), at the
    defaults' tiles, for each number of ``stages``: the points the tuner may reach, as opposed to what ships.
    Points a launcher refuses are skipped."""
    from .checks import MLSTMInputError
    from .families import default_config
    from .variants import VARIANTS

    choices = {
        "chunkwise_fw": dict(out_values=("loop", "tiles"), states_weighting=("k", "v", "kT"),
                             states_n=("sum", "dot"), states_store=("plain", "tma")),
        "chunkwise_bw": dict(state_buffers=("input", "float32", "planes"), states_weighting=("k", "v"),
                             dstate_gates=("inline", "pre"), state_stores=("plain", "tma")),
    }  # fmt: skip
    out = []
    for variant in VARIANTS:
        if variant.family not in choices or "fused_fw" in variant.template:
            continue
        names = list(choices[variant.family])
        for DHQK, DHHV in head_dims:
            base = default_config(variant, DHQK, DHHV)
            for values in itertools.product(*choices[variant.family].values()):
                for n in stages:
                    config = dict(base, **dict(zip(names, values)), num_stages=n)
                    if variant.family == "chunkwise_bw":
                        config["states"] = "reuse"
                    try:
                        found = check_point(variant, config, DHQK, DHHV, dtype)
                    except MLSTMInputError:
                        continue
                    out.append({"variant": variant.name, "config": config, "DHQK": DHQK, "hazards": found})
    return out


if __name__ == "__main__":  # python -m autotune.hazards [--space]: the scan as JSON (TRITON_INTERPRET must be unset)
    print(json.dumps(scan_space() if "--space" in sys.argv[1:] else scan_shipped(), indent=1))
