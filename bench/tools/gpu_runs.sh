#!/usr/bin/env bash
# Measurements on a GPU machine (GPU tests, tuning, bench, profiles, Nsight Compute), one phase per device call
# (a call may run 10 minutes). Usage on the device, from the repository root (carry .whl for the extra wheels):
#   bash bench/tools/gpu_runs.sh PHASE   with PHASE one of
#   backward-a   generated backward variants at the 7B layout and the registry entries (about 3 min warm)
#   backward-b   the other head layouts (about 3 min warm)
#   backward-x2  both at once on a machine of 2 GPUs (kind nvidia-h200-x2), pytest-xdist from .whl/ if carried
#   tune-quick   mlstm-tune tune --preset quick (needs optuna from .whl/); on 2 GPUs it then goes on with
#                --devices 0,1 on the same study (the resume path, with one worker per GPU)
#   bench        mlstm-tune bench (needs mlstm_kernels and fla-core from .whl/ for the comparison columns);
#                on 2 GPUs one shard per GPU (--shard), then --combine
#   profile      bench/tools/profile_forward.py per layout, and the step rows of the bench (2 GPUs)
#   loop         the chunkwise forward rows of the bench, the output-kernel sweep, the two-pass GPU tests (2 GPUs)
#   profile-bw   bench/tools/profile_backward.py, one layout per GPU
#   states       profile_forward.py --sweep states (gates inline/pre x weighting k/v), one layout per GPU
#   bw-check     profile-bw at both layouts on GPU 0; backward tests (7B, entries) and two-pass bf16 tests on GPU 1
#   bw-states    profile-bw at the 7B layout on GPU 0, the states sweep (both layouts) on GPU 1
#   fw-stages    the forward rows with the default configuration forced at 3 and at 1 stage (2 GPUs)
#   step-split   the step rows of the bench with the split step kernel forced at a few tiles (GPU 0)
#   tune-presets the shipped presets on 2 GPUs into $OUT/db; copy that to .tuning/ and carry it to resume
#   retune-bench tune-presets for TUNE_S seconds (default 360), then the bench with that database (one call, 2 GPUs)
#   ncu-bw       Nsight Compute on one training step's kernels (bench/tools/ncu_step.py), a layout per GPU
#   split-check  the split backward kernels: profile_backward.py --sweep split per layout on GPU 0, their GPU tests
#                on GPU 1
#   tune-split   the training presets on GPU 0 and the forward presets on GPU 1 at once, same db and journal
#                (SHAPE_S_BW / SHAPE_S_FW seconds per shape); resumable like tune-presets
#   ncu-fw       Nsight Compute on the forward's kernels and FLA's at S=2048, a layout per GPU
#   floors       the forward's kernels against FLA's and upstream's (bench/tools/forward_kernels.py, a layout per
#                GPU), then the step's floors (bench/tools/step_floor.py, GPU 0); needs fla-core and mlstm_kernels
# Logs go to $OUT; keep them with their command under bench/logs/gpu_tests/ (GPU tests), tuning_db/reports/ (tuning, bench,
# profiles) or bench/logs/ (the other tools).
. "$(dirname "$0")/gpu_env.sh"
case "${1:-}" in
  backward-a) timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py -k "B1-NH8 or entry" \
                -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_a.log" 2>&1; tail -3 "$OUT/gpu_backward_a.log" ;;
  backward-b) timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py -k "not B1-NH8 and not entry" \
                -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_b.log" 2>&1; tail -3 "$OUT/gpu_backward_b.log" ;;
  backward-x2)
    xd=""; python -c "import xdist" 2>/dev/null && xd="-n 6"  # compiling is CPU-bound: 6 workers per GPU
    CUDA_VISIBLE_DEVICES=0 timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py $xd \
      -k "B1-NH8 or entry" -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_a.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py $xd \
      -k "not B1-NH8 and not entry" -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_b.log" 2>&1 &
    wait; tail -3 "$OUT"/gpu_backward_*.log ;;
  tune-quick)
    start=$(date +%s)
    timeout 400 python -m autotune tune --preset quick --db "$OUT/db" --time-budget 300 > "$OUT/tune_quick.log" 2>&1
    echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/tune_quick.log"; tail -8 "$OUT/tune_quick.log"
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
      timeout 170 python -m autotune tune --preset quick --db "$OUT/db" --devices 0,1 --trials 48 --time-budget 100 \
        > "$OUT/tune_quick_devices.log" 2>&1; echo "exit $?" >> "$OUT/tune_quick_devices.log"
      tail -8 "$OUT/tune_quick_devices.log"
    fi
    python -m autotune report --db "$OUT"/db/*.json --out "$OUT" > /dev/null 2>&1 ;;
  bench)
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
      for g in 0 1; do CUDA_VISIBLE_DEVICES=$g timeout 570 python -m autotune bench ${BENCH_ARGS:-} --shard $g/2 --out "$OUT/bench$g" \
        > "$OUT/bench$g.log" 2>&1 & done; wait
      python -m autotune bench --combine "$OUT"/bench0/*-bench.json "$OUT"/bench1/*-bench.json --out "$OUT" > "$OUT/bench.log"
      # the device hands back only a few files: the shards go back as one archive
      tar -C "$OUT" -cf "$OUT/bench_logs.tar" bench0 bench1 bench0.log bench1.log bench.log && \
        rm -r "$OUT"/bench0 "$OUT"/bench1 "$OUT"/bench?.log
    else
      timeout 580 python -m autotune bench --out "$OUT" > "$OUT/bench.log" 2>&1
    fi
    tail -30 "$OUT/bench.log"; if [ -f "$OUT/bench_logs.tar" ]; then rm "$OUT/bench.log"; fi ;;
  profile)  # two GPUs: the forward's kernels at the 7B layout on GPU 0; head 128, then the step bench, on GPU 1
    CUDA_VISIBLE_DEVICES=0 timeout 540 python bench/tools/profile_forward.py --layout 7b --out "$OUT/profile_7b" \
      --budget-s 470 > "$OUT/profile_7b.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 bash -c "timeout 330 python bench/tools/profile_forward.py --layout head128 \
      --out '$OUT/profile_head128' --budget-s 270 > '$OUT/profile_head128.log' 2>&1;
      true || timeout 200 python -m autotune bench --only step --out '$OUT/step' > '$OUT/bench_step.log' 2>&1" &
    wait; tail -12 "$OUT"/profile_*.log; tail -12 "$OUT/bench_step.log" ;;
  loop)  # the per-chunk output kernel: GPU 0 the chunkwise forward rows of the bench; GPU 1 the output sweep, then
         # the two-pass forward tests in bf16
    CUDA_VISIBLE_DEVICES=0 timeout 400 python -m autotune bench --only chunkwise --pass fw --out "$OUT/bench_fw" \
      > "$OUT/bench_fw.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 bash -c "timeout 220 python bench/tools/profile_forward.py --sweep loop --budget-s 180 \
      --out '$OUT/loop' > '$OUT/profile_loop.log' 2>&1; timeout 170 python -m pytest -q -m gpu \
      tests/gpu/test_gpu_forward.py -k 'twopass and bf16' -p no:cacheprovider --tb=line -rfE > '$OUT/gpu_twopass.log' 2>&1" &
    wait; tail -n 12 "$OUT/profile_loop.log"; tail -n 3 "$OUT/gpu_twopass.log"; tail -n 14 "$OUT/bench_fw.log" ;;
  profile-bw)  # a training step per kernel (torch.profiler) and with forced backward configurations; one layout per GPU
    for g in 0 1; do L=$([ $g = 0 ] && echo 7b || echo head128)
      CUDA_VISIBLE_DEVICES=$g timeout 560 python bench/tools/profile_backward.py --layout $L --budget-s 450 \
        --out "$OUT/profile_bw_$L" > "$OUT/profile_bw_$L.log" 2>&1 & done
    wait; tail -n 40 "$OUT"/profile_bw_7b.log ;;
  states)  # the states kernel: gates in its loop against gates computed first, one layout per GPU
    for g in 0 1; do L=$([ $g = 0 ] && echo 7b || echo head128)
      CUDA_VISIBLE_DEVICES=$g timeout 400 python bench/tools/profile_forward.py --sweep states --layout $L \
        --budget-s 330 --out "$OUT/states_$L" > "$OUT/states_$L.log" 2>&1 & done
    wait; tail -n 5 "$OUT"/states_*.log ;;
  bw-states)  # 2 GPUs: GPU 0 profile-bw at the 7B layout; GPU 1 the states sweep, 7B layout then head 128
    CUDA_VISIBLE_DEVICES=0 timeout 560 python bench/tools/profile_backward.py --layout 7b --budget-s 460 \
      --out "$OUT/profile_bw_7b" > "$OUT/profile_bw_7b.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 bash -c "timeout 330 python bench/tools/profile_forward.py --sweep states --layout 7b \
      --budget-s 280 --out '$OUT/states_7b' > '$OUT/states_7b.log' 2>&1; timeout 220 python bench/tools/profile_forward.py \
      --sweep states --layout head128 --budget-s 180 --out '$OUT/states_head128' > '$OUT/states_head128.log' 2>&1" &
    wait; tail -n 6 "$OUT"/states_*.log; tail -n 45 "$OUT"/profile_bw_7b.log ;;
  bw-check)  # 2 GPUs: GPU 0 profile-bw at both layouts; GPU 1 the backward tests at the 7B layout and the entries,
             # then the two-pass forward tests in bf16
    CUDA_VISIBLE_DEVICES=0 bash -c "timeout 260 python bench/tools/profile_backward.py --layout 7b --budget-s 200 \
      --out '$OUT/profile_bw_7b' > '$OUT/profile_bw_7b.log' 2>&1; timeout 200 python bench/tools/profile_backward.py \
      --layout head128 --budget-s 150 --out '$OUT/profile_bw_head128' > '$OUT/profile_bw_head128.log' 2>&1" &
    xd=""; python -c "import xdist" 2>/dev/null && xd="-n 8"
    CUDA_VISIBLE_DEVICES=1 bash -c "timeout 330 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py $xd \
      -k 'B1-NH8 or entry' -p no:cacheprovider --tb=line -rfE > '$OUT/gpu_backward_a.log' 2>&1; timeout 140 \
      python -m pytest -q -m gpu tests/gpu/test_gpu_forward.py $xd -k 'twopass and bf16' -p no:cacheprovider \
      --tb=line -rfE > '$OUT/gpu_twopass.log' 2>&1" &
    wait; tail -n 3 "$OUT"/gpu_*.log; grep -A22 "fw+bw ms" "$OUT"/profile_bw_*.log ;;
  fw-stages)  # the chunkwise forward rows with the default two-pass configuration forced at 3 stages (GPU 0) and at 1
              # stage (GPU 1); the bench's "default" column is the 2-stage default, measured in the same run
    C='"chunk_inter":64,"chunk_intra":64,"states_dhqk_tile":64,"states_dhhv_tile":128,"out_dhqk_tile":64,"out_dhhv_tile":128,"states_warps":4,"out_warps":4,"out_values":"loop","states_gates":"pre","states_weighting":"v"'
    for g in 0 1; do st=$([ $g = 0 ] && echo 3 || echo 1)
      force="{\"chunkwise:exp\":{\"variant\":\"chunkwise_twopass_fw__cell-exp_state-input\",\"config\":{$C,\"num_stages\":$st}}}"
      CUDA_VISIBLE_DEVICES=$g MLSTM_AUTOTUNE_FORCE="$force" timeout 200 python -m autotune bench --only chunkwise \
        --pass fw --out "$OUT/stages$st" > "$OUT/stages$st.log" 2>&1 & done
    wait; grep "| chunkwise" "$OUT"/stages*.log ;;
  step-split)  # the step kernel with one program per tile of C ("k_tiles": "programs"): first its oracle tests on the
               # GPU (the interpreter runs programs one at a time, so only a GPU exercises the arrival protocol), then
               # the bench's step rows with it forced at a few tiles; GPU 0
    CUDA_VISIBLE_DEVICES=0 timeout 200 python -m pytest -q tests/test_triton_kernels.py -k "step or counters" \
      -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_step_tests.log" 2>&1; tail -n 3 "$OUT/gpu_step_tests.log"
    for t in "64 64" "32 64" "64 32" "32 32"; do set -- $t
      force="{\"step:exp\": {\"variant\": \"recurrent_step__cell-exp\", \"config\": {\"dhqk_tile\": $1, \"dhhv_tile\": $2, \"num_warps\": 4, \"k_tiles\": \"programs\"}}}"
      CUDA_VISIBLE_DEVICES=0 MLSTM_AUTOTUNE_FORCE="$force" timeout 150 python -m autotune bench --only step \
        --out "$OUT/step_split_$1_$2" > "$OUT/step_split_$1_$2.log" 2>&1
      echo "dhqk_tile=$1 dhhv_tile=$2"; grep -A6 "ours GB/s" "$OUT/step_split_$1_$2.log" | tail -4
    done ;;
  tune-presets)  # the shipped presets, both GPUs on each study; resumable: carry .tuning (a db/ brought back from a call)
    mkdir -p "$OUT/db"; [ -d .tuning ] && cp -r .tuning/. "$OUT/db/"
    end=$(( $(date +%s) + ${BUDGET_S:-540} ))
    for p in ${PRESETS:-xlstm-7b train-7b head128 train-head128 step-7b}; do
      left=$(( end - $(date +%s) )); [ $left -lt 40 ] && break
      timeout $left python -m autotune tune --preset $p --devices 0,1 --db "$OUT/db" --trials ${TRIALS:-16} \
        --time-budget ${SHAPE_S:-75} \
        >> "$OUT/tune_presets.log" 2>&1
    done
    grep -v "trial" "$OUT/tune_presets.log" | tail -n 30 ;;
  ncu-bw)  # speed of light, occupancy, warp stalls and local-memory bytes of each kernel of a training step
    ncu --version | tail -1
    M=l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum,l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum
    for g in 0 1; do lay=$([ $g = 0 ] && echo 7b || echo head128)
      CUDA_VISIBLE_DEVICES=$g timeout 500 ncu --profile-from-start off --clock-control none --kernel-name regex:chunkwise \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis --section SchedulerStats --metrics $M \
        python bench/tools/ncu_step.py --layout $lay > "$OUT/ncu_$lay.log" 2>&1 &
    done
    wait; for lay in 7b head128; do echo "== $lay"; grep -E "chunkwise_[a-z_]+kernel|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|DRAM Throughput|Compute \(SM\) Thr|local_op|Block Limit Reg|Dynamic Shared" "$OUT/ncu_$lay.log" | head -80; done ;;
  split-check)
    CUDA_VISIBLE_DEVICES=0 bash -c "timeout 250 python bench/tools/profile_backward.py --sweep split --layout 7b \
      --budget-s 200 --out '$OUT/split_7b' > '$OUT/split_7b.log' 2>&1; timeout 250 python bench/tools/profile_backward.py \
      --sweep split --layout head128 --budget-s 180 --out '$OUT/split_head128' > '$OUT/split_head128.log' 2>&1" &
    xd=""; python -c "import xdist" 2>/dev/null && xd="-n 8"
    CUDA_VISIBLE_DEVICES=1 timeout 500 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py $xd -k "split or tuned_style" \
      -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_split.log" 2>&1 &
    wait; tail -n 3 "$OUT/gpu_backward_split.log"; grep -h -A16 "fw+bw ms" "$OUT"/split_*.log
    grep -h -A6 "kernels (ms" "$OUT"/split_*.log
    tar -C "$OUT" -cf "$OUT/split_check.tar" split_7b split_head128 split_7b.log split_head128.log \
      gpu_backward_split.log && (cd "$OUT" && rm -r split_7b split_head128 split_7b.log split_head128.log \
      gpu_backward_split.log) ;;
  tune-split)
    mkdir -p "$OUT/db"; [ -d .tuning ] && cp -r .tuning/. "$OUT/db/"
    end=$(( $(date +%s) + ${BUDGET_S:-540} ))
    for g in 0 1; do
      if [ $g = 0 ]; then presets="train-7b train-head128"; per=${SHAPE_S_BW:-120}; else presets="xlstm-7b head128"; per=${SHAPE_S_FW:-80}; fi
      ( for p in $presets; do left=$(( end - $(date +%s) )); [ $left -lt 40 ] && break
          CUDA_VISIBLE_DEVICES=$g timeout $left python -m autotune tune --preset $p --db "$OUT/db" \
            --trials ${TRIALS:-60} --time-budget $per
        done ) > "$OUT/tune_split_gpu$g.log" 2>&1 &
    done
    wait; grep -h -v "trial" "$OUT"/tune_split_gpu*.log | tail -n 40 ;;
  floors)
    for g in 0 1; do L=$([ $g = 0 ] && echo 7b || echo head128)
      CUDA_VISIBLE_DEVICES=$g timeout 300 python bench/tools/forward_kernels.py --layout $L --out "$OUT/fwk_$L" \
        > "$OUT/forward_kernels_$L.log" 2>&1 & done
    wait; CUDA_VISIBLE_DEVICES=0 timeout 200 python bench/tools/step_floor.py --out "$OUT/step_floor" \
      > "$OUT/step_floor.log" 2>&1
    grep -h -A3 " in all" "$OUT"/forward_kernels_*.log | head -80; tail -n 5 "$OUT/step_floor.log"
    tar -C "$OUT" -cf "$OUT/floors.tar" fwk_7b fwk_head128 step_floor forward_kernels_7b.log \
      forward_kernels_head128.log step_floor.log ;;
  ncu-fw)  # Nsight Compute on the forward's two kernels, ours against FLA's, at S=2048 (a layout per GPU)
    for g in 0 1; do lay=$([ $g = 0 ] && echo 7b || echo head128)
      CUDA_VISIBLE_DEVICES=$g timeout 400 ncu --profile-from-start off --clock-control none \
        --kernel-name regex:"chunkwise_states|chunkwise_output|chunk_fwd_kernel" --section SpeedOfLight \
        --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        python bench/tools/forward_kernels.py --ncu --layout $lay --S 2048 --out "$OUT/fwk_$lay" > "$OUT/ncu_fw_$lay.log" 2>&1 &
    done
    wait; for lay in 7b head128; do echo "== $lay"; grep -E "^  [a-z_]+kernel|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|DRAM Throughput|Compute \(SM\) Thr|Block Limit Reg|Dynamic Shared|Grid Size|Block Size" "$OUT/ncu_fw_$lay.log" | head -60; done ;;
  retune-bench)  # tune (resumable as tune-presets), then bench with the new database in the same call
    BUDGET_S=${TUNE_S:-360} bash "$0" tune-presets
    cp "$OUT/db/NVIDIA_H200.json" tuning_db/NVIDIA_H200.json; rm -f "$OUT"/db/*.lock
    OUT="$OUT/bench" BENCH_ARGS="${BENCH_ARGS:-}" bash "$0" bench ;;
  *) echo "usage: bash bench/tools/gpu_runs.sh PHASE (see the head of this file)"; exit 2 ;;
esac
