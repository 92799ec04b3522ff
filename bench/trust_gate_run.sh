#!/usr/bin/env bash
# The GPU runs behind docs/hazards.md and tuning_db/reports/*-validate.json, one device call each.
# First, here (it needs git):  bash bench/trust_gate_run.sh prepare   (writes .probe/, ignored by git)
# Then on the device (carry .whl and .probe):  bash bench/trust_gate_run.sh PHASE    PHASE one of
#   validate   the hazard reproducers (table + their GPU tests); `mlstm-tune validate` of the packaged databases and
#              the defaults; at the same time the same gate on the kernels before the hazard fixes (.probe/old_tree:
#              autotune/ of 88350ba, whose launchers are those of edc1f4f, with templates/ and generated/ of
#              edc1f4f; a subset of entries in .probe/old_subset), for the before/after table. VALIDATE_S (default
#              510) bounds each validate run; the report is rewritten after every row, so a cut-off run keeps its rows
#   recheck    `mlstm-tune validate` of the H200 database (VALIDATE_S, default 450) while `pytest -m gpu $GPU_TESTS`
#              runs beside it (default tests/gpu; TESTS_S, default 480); the whole suite needs more than one call
#   tests      the GPU test files one after another (GPU_TESTS, e.g. "tests/gpu/test_gpu_jax.py"), a log each, within
#              TESTS_S (default 540); TESTS_K: a pytest -k expression; a test still running after TEST_TIMEOUT_S
#              (default 400; pytest-timeout, on the GPU machine) fails with every thread's stack in the log
#   suite      the whole GPU suite (tests/gpu) at once, SUITE_N pytest-xdist workers on the one GPU (default 6)
#              within SUITE_S seconds (default 540; TEST_TIMEOUT_S per test, as for tests), then the test that needs
#              32 GB alone; every outcome goes to $OUT/suite.tsv as it happens (bench/tools/suite_record.py), and a
#              test that passed or skipped in .probe/suite.tsv is not rerun: copy $OUT/suite.tsv there and carry
#              .probe, so a cut-off run resumes (remove it after a change to the code under test); a line per file
#              last (bench/tools/suite_summary.py)
#   tune       the presets through the gate into $OUT/db (TUNE_PRESETS, default "xlstm-7b head128 step-7b", or shape
#              files for --shapes, e.g. bench/shapes/train_head128_long.json; each
#              shape's study for TUNE_S seconds, default 60; all of it within TUNE_TOTAL_S, default 540); copy
#              $OUT/db back to .probe/db and carry it into the next call to resume; FIRST_TESTS: GPU test files to
#              run first, whose failure ends the call
#   revalidate `mlstm-tune validate` of the databases tuned here (.probe/db/*.json) and of the packaged database of
#              the GPU it runs on (tuning_db/<GPU name>.json), or of REVALIDATE_DBS (files, e.g. "tuning_db/*.json"),
#              with the defaults (VALIDATE_S, default 500); the reports go to $OUT
#   bench      `mlstm-tune bench` with the packaged databases and .probe/db as the user database (BENCH_ARGS: more options)
#   results    the README's table and the step rows from the packaged databases alone (an empty user database):
#              `mlstm-tune bench --only chunkwise` in two shards one after the other (250 s each; a cut-off run keeps
#              the rows it finished), then `--only step` (90 s); each writes
#              its <GPU>-bench.json under $OUT/chunkwise0, chunkwise1, step (merge them here with `mlstm-tune bench
#              --combine`); RESULTS_PARTS picks some of them (chunkwiseI is shard I of RESULTS_SHARDS, default 2, each
#              within CHUNK_S seconds, default 250), or "long" (`--only long`, one sequence, LONG_S, 400 s), or
#              "packed" (`--only packed`, the documents packed against padded, 120 s)
#   costs      the training forward's kernels with fp32 states against 16-bit planes (bench/tools/state_operand_costs.py),
#              a training step split by kernel (bench/tools/time_step_trees.py, this GPU's packaged database; STEP_LAYOUTS
#              picks its layouts, e.g. "7b 7b-long": batched against one sequence of the same tokens) and
#              the results phase's "long" part (`mlstm-tune bench --only long`, LONG_S; $OUT/long/<GPU>-bench.json)
#   planes     the training step with its chunk states stored as planes against fp32 (bench/tools/planes_step.py, this
#              GPU's packaged database, 7B and head 128), then the gate's comparison for the planes candidates
#              (bench/tools/gate_spread.py --seeds 1 3 4 5 --only planes, as the gate pools them); PLANES_PARTS picks
#              "step" or "gate"
#   forms      what the training forward's forms cost (bench/tools/time_training_forward.py), then at once
#              `mlstm-tune validate` of the H200 database (VALIDATE_S, default 400) and which forward feeds the
#              chunkwise backward its error (bench/tools/backward_after_forward.py at the 4,080 tokens of the
#              S~8192 rows, the 7B and head-128 entries' backward configurations, adversarial draw)
#   spread     what the training forward's forms cost, the gate's training-step comparison on six adversarial draws instead of one
#              (bench/tools/gate_spread.py), and the head-128 backward behind the float64 h rounded to bf16
#   entries    the gate's verdict on the PyTorch chunkwise entries at the JAX GPU test's shapes and on the same
#              kernels with one choice changed (bench/tools/entry_gate.py; ENTRY_PARTS, ENTRY_S)
#   defaults   `mlstm-tune validate --only default` (the built-in defaults, an empty user database; DEFAULTS_ONLY: more
#              --only texts, e.g. "cell-sig"; VALIDATE_S, default 400); reports under $OUT/defaults
#   jaxstep    the jitted JAX step's compiled program with and without the state donated, and its wall clock beside
#              the PyTorch step in place (bench/tools/jax_step_probe.py)
#   condition  the gate's pooled comparison (bench/tools/gate_spread.py, seeds 1 3 4 5) on the draws as the gate makes
#              them (gate.well_conditioned) for the backward's defaults, the head-128 entry and the three known
#              faults, and on the draws without that rule for head 128's default (SPREAD_ONLY, SPREAD_RAW_ONLY)
# Logs and reports go to $OUT; every log starts with the GPU's name. A device call brings back at most 8 files of
# $OUT: suite writes 5, each results part 2 (a log and its JSON), so give results its own call.
set -u
if [ "${1:-}" = prepare ]; then  # the generated kernels before the hazard fixes, and a subset of the H200 entries
  rm -rf .probe/old_tree && mkdir -p .probe/old_tree/tuning_db .probe/old_subset .probe/db
  exclude=$(git rev-parse --git-path info/exclude)  # .git is a file in a worktree
  grep -qx '/.probe/' "$exclude" 2>/dev/null || echo '/.probe/' >> "$exclude"
  git archive 88350ba autotune | tar -x -C .probe/old_tree
  git archive edc1f4f templates generated | tar -x -C .probe/old_tree
  python3 -c "
import json
d = json.load(open('tuning_db/NVIDIA_H200.json'))
d['entries'] = [d['entries'][i] for i in (0, 2, 3, 6, 7, 9, 11)]  # one of each distinct configuration
json.dump(d, open('.probe/old_subset/NVIDIA_H200.json', 'w'), indent=1)"
  exit 0
fi
. "$(dirname "$0")/tools/gpu_env.sh"
case "${1:-}" in
  validate)
    ( header "python tests/gpu/test_gpu_hazards.py; pytest -m gpu tests/gpu/test_gpu_hazards.py"
      timeout 300 python tests/gpu/test_gpu_hazards.py
      timeout 150 python -m pytest -q -m gpu tests/gpu/test_gpu_hazards.py -p no:cacheprovider --tb=line -rfE
    ) > "$OUT/hazards.log" 2>&1 &
    ( header "validate of the kernels before the hazard fixes (.probe/old_tree)"
      cd .probe/old_tree && PYTHONPATH="$PWD:$PYTHONPATH" timeout "${VALIDATE_S:-510}" python -m autotune validate \
        --db ../old_subset/NVIDIA_H200.json --no-defaults --out /tmp/old
      cp /tmp/old/NVIDIA_H200-validate.json "$OUT/before-fix-NVIDIA_H200-validate.json"
    ) > "$OUT/validate_before_fix.log" 2>&1 &
    ( header "python -m autotune validate --db tuning_db/NVIDIA_H200.json --out \$OUT"
      timeout "${VALIDATE_S:-510}" python -m autotune validate --db tuning_db/NVIDIA_H200.json --out "$OUT"
    ) > "$OUT/validate.log" 2>&1
    wait
    tail -4 "$OUT/hazards.log" "$OUT/validate_before_fix.log"; tail -40 "$OUT/validate.log" ;;
  recheck)  # after a change to the kernels or the gate: validate the H200 database and run every GPU test at once
    ( header "python -m autotune validate --db tuning_db/NVIDIA_H200.json --out \$OUT"
      timeout "${VALIDATE_S:-450}" python -m autotune validate --db tuning_db/NVIDIA_H200.json --out "$OUT"
    ) > "$OUT/validate.log" 2>&1 &
    ( header "XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -v -s -m gpu ${GPU_TESTS:-tests/gpu}"
      XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TESTS_S:-480}" python -m pytest -v -s -m gpu ${GPU_TESTS:-tests/gpu} \
        -p no:cacheprovider --tb=short -rfE
    ) > "$OUT/gpu_tests.log" 2>&1
    wait
    grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -15; tail -40 "$OUT/validate.log" ;;
  tests)  # GPU test files one after another, a log each (GPU_TESTS, default every file; all of it within TESTS_S)
    end=$(( SECONDS + ${TESTS_S:-540} ))
    for file in ${GPU_TESTS:-tests/gpu/test_gpu_*.py}; do
      left=$(( end - SECONDS )); [ "$left" -gt 30 ] || { echo "no time left for $file"; continue; }
      log="$OUT/$(basename "$file" .py).log"
      ( header "XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -v -s -m gpu $file ${TESTS_K:+-k \"$TESTS_K\"}"
        XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$left" python -m pytest -v -s -m gpu "$file" -p no:cacheprovider \
          --tb=short -rfE --durations=12 --timeout "${TEST_TIMEOUT_S:-400}" ${TESTS_K:+-k "$TESTS_K"} ) > "$log" 2>&1
      echo "$file: $(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$log" | tail -1)"
    done ;;
  suite)  # the GPU suite under xdist; a test that passed or skipped in an earlier call (.probe/suite.tsv) is not rerun
    big="test_more_than_2_31_elements"  # 32 GB at once: alone, after the others
    export PYTHONPATH=$PWD/bench/tools:$PYTHONPATH SUITE_DONE=.probe/suite.tsv SUITE_OUTCOMES=$OUT/suite_new.tsv
    export XLA_PYTHON_CLIENT_ALLOCATOR=platform  # JAX frees what it no longer uses: the workers share the GPU
    end=$(( SECONDS + ${SUITE_S:-540} ))
    ( header "XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_ALLOCATOR=platform python -m pytest -p suite_record" \
        "-v -m gpu tests/gpu" \
        "-n ${SUITE_N:-6} -k 'not $big' (SUITE_DONE=.probe/suite.tsv: tests that passed before are deselected)"
      XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${SUITE_S:-540}" python -m pytest -p suite_record -v -m gpu \
        tests/gpu -n "${SUITE_N:-6}" -k "not $big" -p no:cacheprovider --tb=short -rfE --durations=25 \
        --timeout "${TEST_TIMEOUT_S:-400}" ) \
      > "$OUT/gpu_suite.log" 2>&1
    left=$(( end + 40 - SECONDS ))
    if [ "$left" -gt 30 ]; then
      ( header "python -m pytest -p suite_record -v -m gpu tests/gpu/test_gpu_forward.py -k $big"
        timeout "$left" python -m pytest -p suite_record -v -m gpu tests/gpu/test_gpu_forward.py -k "$big" \
          -p no:cacheprovider --tb=short -rfE ) > "$OUT/gpu_suite_big.log" 2>&1
    fi
    cat .probe/suite.tsv "$OUT/suite_new.tsv" > "$OUT/suite.tsv" 2>/dev/null  # later lines win
    python bench/tools/suite_summary.py "$OUT/suite.tsv" | tee "$OUT/suite_summary.txt"
    grep -A12 "^FAILED\|^ERROR" "$OUT/suite_new.tsv.failures" 2>/dev/null | cut -c1-200 | head -60 ;;
  tune)
    mkdir -p "$OUT/db"; cp -r .probe/db/. "$OUT/db/" 2>/dev/null
    end=$(( SECONDS + ${TUNE_TOTAL_S:-540} ))  # the call's share of its 10 minutes; a cut-off study resumes
    if [ -n "${FIRST_TESTS:-}" ]; then  # GPU tests first (e.g. of a changed kernel): a failure stops the call
      ( header "python -m pytest -v -s -m gpu -x $FIRST_TESTS"
        timeout 150 python -m pytest -v -s -m gpu -x $FIRST_TESTS -p no:cacheprovider --tb=short -rfE
      ) > "$OUT/first_tests.log" 2>&1 || { tail -30 "$OUT/first_tests.log"; exit 1; }
      grep -E "passed|failed" "$OUT/first_tests.log" | tail -3
    fi
    for preset in ${TUNE_PRESETS:-xlstm-7b head128 step-7b}; do  # a preset's name, or a --shapes FILE (*.json)
      left=$(( end - SECONDS )); [ "$left" -gt 60 ] || break
      what=(--preset "$preset"); case $preset in *.json) what=(--shapes "$preset");; esac
      ( header "mlstm-tune tune ${what[*]} --db \$OUT/db --trials 40 --time-budget ${TUNE_S:-60}"
        timeout "$left" python -m autotune tune "${what[@]}" --db "$OUT/db" --trials 40 \
          --time-budget "${TUNE_S:-60}" ) > "$OUT/tune_$(basename "$preset" .json).log" 2>&1
      tail -6 "$OUT/tune_$(basename "$preset" .json).log"
    done ;;
  revalidate)
    dbs=(); packaged=tuning_db/$(python -c "import sys; from autotune.db import file_name; print(file_name(sys.argv[1]))" "$gpu")
    for f in ${REVALIDATE_DBS:-.probe/db/*.json "$packaged"}; do [ -f "$f" ] && dbs+=(--db "$f"); done
    ( header "python -m autotune validate ${dbs[*]} --out \$OUT"
      timeout "${VALIDATE_S:-500}" python -m autotune validate "${dbs[@]}" --out "$OUT"
    ) > "$OUT/validate.log" 2>&1
    grep -v "^     " "$OUT/validate.log" | cut -c1-210 | tail -60 ;;
  bench)
    ( header "MLSTM_AUTOTUNE_DB=.probe/db mlstm-tune bench --out \$OUT ${BENCH_ARGS:-}"
      MLSTM_AUTOTUNE_DB=.probe/db timeout 580 python -m autotune bench --out "$OUT" ${BENCH_ARGS:-} ) > "$OUT/bench.log" 2>&1
    tail -30 "$OUT/bench.log" ;;
  results)
    mkdir -p /tmp/no_user_db
    for part in ${RESULTS_PARTS:-chunkwise0 chunkwise1 step}; do
      case $part in chunkwise*) what=(--only chunkwise --shard "${part#chunkwise}/${RESULTS_SHARDS:-2}") s=${CHUNK_S:-250};;
                    long) what=(--only long) s=${LONG_S:-400};; packed) what=(--only packed) s=120;;
                    *) what=(--only step) s=90;; esac
      ( header "MLSTM_AUTOTUNE_DB=(empty) mlstm-tune bench ${what[*]} --out \$OUT/$part"
        MLSTM_AUTOTUNE_DB=/tmp/no_user_db timeout $s python -m autotune bench "${what[@]}" --out "$OUT/$part"
      ) > "$OUT/bench_$part.log" 2>&1
      rm -f "$OUT/$part"/*.md "$OUT/$part"/*.png  # the json is the result; at most 8 files come back
      grep "^\[" "$OUT/bench_$part.log" | cut -c1-200
    done ;;
  costs)  # where a training step's time goes now (per kernel, the packaged database of this GPU), then the long rows
    ( header "python bench/tools/state_operand_costs.py"
      timeout 150 python bench/tools/state_operand_costs.py ) > "$OUT/state_operand_costs.log" 2>&1
    tail -22 "$OUT/state_operand_costs.log"
    packaged=tuning_db/$(python -c "import sys; from autotune.db import file_name; print(file_name(sys.argv[1]))" "$gpu")
    layouts=(); for l in ${STEP_LAYOUTS:-}; do layouts+=(--layout "$l"); done
    ( header "python bench/tools/time_step_trees.py --tree . --db $packaged ${layouts[*]}"
      timeout 200 python bench/tools/time_step_trees.py --tree . --db "$packaged" "${layouts[@]}" ) > "$OUT/step_costs.log" 2>&1
    tail -40 "$OUT/step_costs.log"
    RESULTS_PARTS=long bash "$0" results ;;
  planes)  # PLANES_PARTS: "step" and/or "gate" (default both)
    if [[ " ${PLANES_PARTS:-step gate} " == *" step "* ]]; then
      ( header "python bench/tools/planes_step.py"; timeout 240 python bench/tools/planes_step.py ) > "$OUT/planes_step.log" 2>&1
      cut -c1-220 "$OUT/planes_step.log" | tail -40
    fi
    if [[ " ${PLANES_PARTS:-step gate} " == *" gate "* ]]; then
      ( header "python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --only planes"
        timeout 280 python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --only planes ) > "$OUT/gate_planes.log" 2>&1
      grep -h "pool\|^# \|rror" "$OUT/gate_planes.log" | cut -c1-230
    fi ;;
  forms)
    ( header "python bench/tools/time_training_forward.py"; timeout 100 python bench/tools/time_training_forward.py
    ) > "$OUT/time_training_forward.log" 2>&1
    ( header "python -m autotune validate --db tuning_db/NVIDIA_H200.json --out \$OUT"
      timeout "${VALIDATE_S:-400}" python -m autotune validate --db tuning_db/NVIDIA_H200.json --out "$OUT"
    ) > "$OUT/validate.log" 2>&1 &
    ( header "python bench/tools/backward_after_forward.py --device cuda --dtype bfloat16 --S 4080 --draw adversarial"
      for layout in 7b head128; do
        if [ $layout = 7b ]; then bw='{"kernels": "split", "states": "reuse", "dstate_gates": "pre", "num_stages": 3,
          "states_weighting": "k"}'; else bw='{"kernels": "fused", "states": "reuse", "states_weighting": "v",
          "dhhv_tile": 128}'; fi
        timeout 150 python bench/tools/backward_after_forward.py --device cuda --dtype bfloat16 --S 4080 \
          --draw adversarial --layout $layout --bw-config "$bw"
      done ) > "$OUT/backward_after_forward.log" 2>&1
    wait
    tail -34 "$OUT/validate.log"
    cat "$OUT/time_training_forward.log" "$OUT/backward_after_forward.log" | cut -c1-200 ;;
  spread)
    ( header "python bench/tools/time_training_forward.py"; timeout 100 python bench/tools/time_training_forward.py
    ) > "$OUT/time_training_forward.log" 2>&1
    ( header "python bench/tools/gate_spread.py --S 4080"; timeout 300 python bench/tools/gate_spread.py --S 4080 \
      --only "${SPREAD_ONLY:-}"
    ) > "$OUT/gate_spread.log" 2>&1
    ( header "python bench/tools/backward_after_forward.py --device cuda --dtype bfloat16 --S 4080 --draw adversarial \
--layout head128 --crosswise-only"
      timeout 150 python bench/tools/backward_after_forward.py --device cuda --dtype bfloat16 --S 4080 \
        --draw adversarial --layout head128 --crosswise-only --bw-config '{"kernels": "fused", "states": "reuse",
        "states_weighting": "v", "dhhv_tile": 128}' ) > "$OUT/backward_after_forward.log" 2>&1
    cat "$OUT/time_training_forward.log"; grep -v "seed [0-9]:" "$OUT/gate_spread.log" | cut -c1-220; head -8 "$OUT/backward_after_forward.log" | cut -c1-200 ;;
  condition)
    only=${SPREAD_ONLY:-head 128, fused, default knobs;head 128, fused, reuse, weights on v;7B, split, default knobs;fault}
    ( header "python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --only '$only'"
      timeout 300 python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --only "$only" ) > "$OUT/gate_condition.log" 2>&1
    ( header "python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --raw-condition"
      timeout 140 python bench/tools/gate_spread.py --S 4080 --seeds 1 3 4 5 --raw-condition \
        --only "${SPREAD_RAW_ONLY:-head 128, fused, default knobs}" ) > "$OUT/gate_raw_condition.log" 2>&1
    grep -h "pool\|^# " "$OUT/gate_condition.log" "$OUT/gate_raw_condition.log" | cut -c1-230 ;;
  entries)  # ENTRY_PARTS: arguments of each bench/tools/entry_gate.py run, ';' between (ENTRY_S seconds each)
    parts=${ENTRY_PARTS:---only fw --dtypes bfloat16 --heads 64;--only fw --dtypes float32 --heads 128;--only bw --dtypes float32 --heads 128}
    IFS=';' read -ra runs <<< "$parts"
    ( header "python bench/tools/entry_gate.py, each of: $parts"
      for a in "${runs[@]}"; do timeout "${ENTRY_S:-150}" python bench/tools/entry_gate.py $a; done ) > "$OUT/entry_gate.log" 2>&1
    cut -c1-250 "$OUT/entry_gate.log" ;;
  defaults)  # the built-in defaults alone (DEFAULTS_ONLY: more --only texts, e.g. "cell-sig"), reports in $OUT/defaults
    only=(--only default); for t in ${DEFAULTS_ONLY:-}; do only+=(--only "$t"); done
    ( header "MLSTM_AUTOTUNE_DB=(empty) python -m autotune validate ${only[*]} --out \$OUT/defaults"
      mkdir -p /tmp/no_user_db
      MLSTM_AUTOTUNE_DB=/tmp/no_user_db timeout "${VALIDATE_S:-400}" python -m autotune validate "${only[@]}" \
        --out "$OUT/defaults" ) > "$OUT/validate_defaults.log" 2>&1
    tail -40 "$OUT/validate_defaults.log" | cut -c1-220 ;;
  jaxstep)
    ( header "python bench/tools/jax_step_probe.py"; XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 \
      python bench/tools/jax_step_probe.py ) > "$OUT/jax_step_probe.log" 2>&1
    cut -c1-300 "$OUT/jax_step_probe.log" ;;
  *) echo "unknown phase ${1:-}" >&2; exit 2 ;;
esac
