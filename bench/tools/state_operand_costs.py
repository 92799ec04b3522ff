"""What the fp32 chunk states of a training forward cost its kernels, and whether storing each state as two 16-bit
planes (hi = C rounded to the inputs' dtype, lo = what that rounding left out) would win it back.

A training step's forward stores fp32 states (autotune.launch.chunkwise.training_forward), and every product that
reads them splits each fp32 tile into hi and lo in registers (_dot_parts) before two products on the tensor cores:
the tile goes memory -> registers -> shared memory -> product. Planes stored in memory would go from memory to the
products as the 16-bit states do, at the fp32 states' bytes. Timed alone, at the training forward's configuration
(7B and head-128 layouts, 65,536 tokens, bf16), median of do_bench:
    states kernel   fp32 store (today) | planes store (an edit: hi and lo stored) | bf16 store (state "input")
    output kernel   fp32 states split in registers (today) | planes read as two 16-bit tiles (an edit) | bf16 states
The planes output kernel reads the same hi and lo as today's split and forms the same two products: its h must equal
today's bit for bit, which is checked before anything is timed. The planes states kernel must store exactly the
split of today's fp32 states.

    python bench/tools/state_operand_costs.py [--layout 7b head128]           (on a GPU)
    TRITON_INTERPRET=1 python bench/tools/state_operand_costs.py --smoke      (tiny shapes, fp16, CPU)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_forward as pf  # noqa: E402

from autotune.launch import chunkwise as launch  # noqa: E402
from autotune.launch.common import cdiv  # noqa: E402
from autotune.load import load_variant  # noqa: E402
from autotune.variants import find  # noqa: E402

# the output loop kernel's q C over fp32 states -> over two planes stored one after the other per chunk
OUT_OLD = (
    "            p_C = Cb_ptr + i_bhc * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]\n"
    "            b_C = tl.load(p_C, mask=m_k[:, None] & m_v[None, :], other=0.0)\n"
    "            b_qC += _dot_parts(b_q, b_C, DOT_PRECISION)  # [LO, BK] @ [BK, BV]\n"
)
OUT_NEW = (
    "            p_C = Cb_ptr + i_bhc * 2 * DHQK * DHHV + o_k[:, None] * DHHV + o_v[None, :]\n"
    "            b_Chi = tl.load(p_C, mask=m_k[:, None] & m_v[None, :], other=0.0)\n"
    "            b_Clo = tl.load(p_C + DHQK * DHHV, mask=m_k[:, None] & m_v[None, :], other=0.0)\n"
    "            b_qC += (tl.dot(b_q, b_Chi, input_precision=DOT_PRECISION)\n"
    "                     + tl.dot(b_q, b_Clo, input_precision=DOT_PRECISION))\n"
)
# the states kernel's store of each chunk's C -> its hi and lo planes (Cb_ptr then points at a 16-bit buffer)
STATES_OLD = "            tl.store(Cb_ptr + i_bhc * DHQK * DHHV + o_kv, b_C.to(Cb_ptr.dtype.element_ty), mask=m_kv)\n"
STATES_NEW = (
    "            b_Chi = b_C.to(Cb_ptr.dtype.element_ty)\n"
    "            tl.store(Cb_ptr + i_bhc * 2 * DHQK * DHHV + o_kv, b_Chi, mask=m_kv)\n"
    "            tl.store(Cb_ptr + i_bhc * 2 * DHQK * DHHV + DHQK * DHHV + o_kv,\n"
    "                     (b_C - b_Chi.to(tl.float32)).to(Cb_ptr.dtype.element_ty), mask=m_kv)\n"
)


def planes_of(C: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, NH, NC, K, V) fp32 -> (B, NH, NC, 2, K, V) of dtype: hi, then lo."""
    hi = C.to(dtype)
    return torch.stack([hi, (C - hi.float()).to(dtype)], dim=3).contiguous()


def run(layout: tuple, dtype: torch.dtype, workdir: Path) -> list[tuple[str, object]]:
    B, NH, S, K, V = layout
    x = pf.inputs(layout)
    x = {n: (t.to(dtype) if n in "qkv" else t) for n, t in x.items()}
    fp32_variant, config = launch.training_forward("exp", K, V, 64)
    config = dict(config, segment_sums=True)  # a training forward forms its decay matrix from segment sums
    bf16_variant = find(launch.TWOPASS, cell="exp", state="input")
    NC = cdiv(S, config["chunk_intra"])
    dev = x["q"].device

    def buffers(state_dtype, planes=False):
        shape = (B, NH, NC, 2, K, V) if planes else (B, NH, NC, K, V)
        return (torch.empty(shape, dtype=state_dtype, device=dev), torch.empty(B, NH, NC, K, device=dev),
                torch.empty(B, NH, NC, device=dev))  # fmt: skip

    fp32_mod = load_variant(fp32_variant)
    bf16_mod = load_variant(bf16_variant)
    states_planes_mod = pf.edited_module(fp32_variant, "states-planes", workdir, [(STATES_OLD, STATES_NEW)])
    out_planes_mod = pf.edited_module(fp32_variant, "out-planes", workdir, [(OUT_OLD, OUT_NEW)])
    rows = []
    # states: today's fp32, the planes edit, bf16; the planes must be today's states split
    fp32_buf, planes_buf, bf16_buf = buffers(torch.float32), buffers(dtype, planes=True), buffers(dtype)
    calls = {"states fp32": pf.states_call(fp32_mod, x, config, fp32_buf),
             "states planes": pf.states_call(states_planes_mod, x, config, planes_buf),
             "states bf16": pf.states_call(bf16_mod, x, config, bf16_buf)}  # fmt: skip
    for fn in calls.values():
        fn()
    split = planes_of(fp32_buf[0], dtype)
    rows.append(("planes stored == fp32 states split", bool(torch.equal(split, planes_buf[0]))))
    for name, fn in calls.items():
        rows.append((name, pf.time_ms(fn)))
    # outputs from those states; the planes output must equal today's bit for bit
    h = {name: torch.empty(B, NH, S, V, dtype=dtype, device=dev) for name in ("fp32", "planes", "bf16")}
    outs = {"output fp32 (split in registers)": pf.output_call(fp32_mod, x, config, fp32_buf, h["fp32"]),
            "output planes (two 16-bit tiles)": pf.output_call(out_planes_mod, x, config,
                                                               (split, *fp32_buf[1:]), h["planes"]),
            "output bf16": pf.output_call(bf16_mod, x, config, bf16_buf, h["bf16"])}  # fmt: skip
    for fn in outs.values():
        fn()
    rows.append(("planes h == fp32 h (bits)", bool(torch.equal(h["fp32"], h["planes"]))))
    for name, fn in outs.items():
        rows.append((name, pf.time_ms(fn)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", nargs="+", default=["7b", "head128"], choices=sorted(pf.LAYOUTS))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in fp16 under the interpreter (CPU)")
    args = parser.parse_args()
    if args.smoke:
        pf.DEVICE = "cpu"
        layouts, dtype = {"smoke": (1, 2, 128, 32, 64)}, torch.float16
    else:
        layouts, dtype = {name: pf.LAYOUTS[name] for name in args.layout}, torch.bfloat16
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (interpreter)"
    print(f"# {gpu}; torch {torch.__version__}; training forward's kernels alone, ms (median of do_bench)")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, layout in layouts.items():
            print(f"\n## {name}: B, NH, S, DHQK, DHHV = {layout}")
            for what, value in run(layout, dtype, Path(tmp)):
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                print(f"  {what:<40} {shown}")
                failed |= value is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
