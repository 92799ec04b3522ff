"""What a training step's forward precision costs: the two-pass forward (states and outputs) at the xLSTM 7B layout
and at heads of 128, bf16, 65,536 tokens, timed by CUDA events (triton.testing.do_bench, median) in the forms:
the inference default (states in bf16, keys weighted, n on the tensor cores), the same with n summed in fp32, and
the forward of a training step (launch.chunkwise.training_forward: fp32 states, the weights on v, n in fp32, q C
from the fp32 state as two bf16 products, the decay matrix from [L, L] segment sums, statistics kept for a
backward), and the same forms without statistics (differences of prefix sums), all with chunks of 64.

    python bench/tools/time_training_forward.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import torch
    import triton

    from autotune import families
    from autotune.launch import chunkwise
    from autotune.variants import find

    print(f"# {torch.cuda.get_device_name()}; torch {torch.__version__} triton {triton.__version__}; bf16, ms "
          f"(median of triton.testing.do_bench)")  # fmt: skip
    for B, NH, S, K, V in ((8, 8, 8192, 256, 512), (16, 32, 4096, 128, 128)):
        gen = torch.Generator(device="cuda").manual_seed(0)
        args = [torch.randn(B, NH, S, D, device="cuda", generator=gen).to(torch.bfloat16) for D in (K, K, V)]
        args += [torch.randn(B, NH, S, device="cuda", generator=gen), 3.0 + torch.randn(B, NH, S, device="cuda")]
        two = find(chunkwise.TWOPASS, cell="exp", state="input")
        inference = families.default_config(two, K, V)
        training = chunkwise.training_forward("exp", K, V, 64)
        forms = {  # label: variant, configuration, whether it keeps statistics for a backward
            "bf16 states, n on the tensor cores (inference default)": (two, inference, False),
            "bf16 states, n in fp32": (two, dict(inference, states_n="sum"), False),
            "training forward's forms, prefix differences, no statistics": (*training, False),
            "training forward (fp32 states, weights on v, segment sums)": (*training, True),
        }
        row = []
        for label, (variant, config, keeps) in forms.items():

            def run(args=args, variant=variant, config=config, keeps=keeps):
                chunkwise.chunkwise_fw(*args, variant=variant, config=config, saved={} if keeps else None)

            row.append(f"{label}: {triton.testing.do_bench(run, warmup=50, rep=300):.3f}")
        print(f"B={B} NH={NH} S={S} {K}/{V}: " + "; ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
