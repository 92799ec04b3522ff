"""Run one generated variant at one launch configuration in this process and report ok / error / max error vs the
fp64 native oracle. Meant to be run in a child process per configuration, so a crash (illegal memory access, a
compiler abort) only ends that child:  python bench/tools/probe_config.py VARIANT 'JSON_CONFIG' B NH S DHQK DHHV
JSON_CONFIG in the knobs' names of autotune.families (their former names, e.g. a logged configuration, are read too;
the report shows the configuration in current names)."""

import json
import sys

import torch

from autotune import families
from autotune.launch import chunkwise, parallel, recurrent
from autotune.reference import random_inputs
from autotune.torch.native.chunkwise import chunkwise_forward
from autotune.variants import by_name

name, config = sys.argv[1], json.loads(sys.argv[2])
B, NH, S, DHQK, DHHV = map(int, sys.argv[3:8])
variant = by_name(name)
config = families.canonical(variant.template, config)
launch = {"chunkwise_fw": chunkwise.chunkwise_fw, "parallel_fw": parallel.parallel_fw,
          "sequence_fw": recurrent.sequence_fw}[variant.family]  # fmt: skip
x = random_inputs(B, NH, S, DHQK, DHHV, dtype=torch.bfloat16, gate_dtype=torch.float32, device="cuda")
h, _ = launch(*(x[k] for k in "qkvif"), variant=variant, config=config)
torch.cuda.synchronize()
x64 = [x[k].double() for k in "qkvif"]
z = torch.zeros
h_ref = chunkwise_forward(*x64, z(B, NH, DHQK, DHHV, dtype=torch.float64, device="cuda"),
                          z(B, NH, DHQK, dtype=torch.float64, device="cuda"),
                          z(B, NH, 1, dtype=torch.float64, device="cuda"), chunk_size=64,
                          cell=variant.params["cell"])[0]  # fmt: skip
err = ((h.double() - h_ref).norm() / h_ref.norm()).item()
print(json.dumps({"variant": name, "config": config, "ok": True, "err": err}))
