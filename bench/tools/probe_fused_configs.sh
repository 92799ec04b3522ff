#!/usr/bin/env bash
# Probe launch configurations of the fused chunkwise variant with the state in the inputs' dtype, each in its own
# process (see probe_config.py). Usage: bash bench/tools/probe_fused_configs.sh > log
V=chunkwise_fused_fw__cell-exp_state-input
for cfg in '{"chunk":64,"dhhv_tile":32,"num_warps":4,"num_stages":1}' \
           '{"chunk":64,"dhhv_tile":32,"num_warps":8,"num_stages":1}' \
           '{"chunk":32,"dhhv_tile":32,"num_warps":4,"num_stages":1}' \
           '{"chunk":64,"dhhv_tile":16,"num_warps":4,"num_stages":1}' \
           '{"chunk":64,"dhhv_tile":64,"num_warps":8,"num_stages":1}'; do
  for shape in "1 8 2048 256 512" "2 32 2048 128 128"; do
    out=$(timeout 120 python3 bench/tools/probe_config.py $V "$cfg" $shape 2>&1 | tail -1)
    echo "$shape $cfg -> ${out:0:160}"
  done
done
