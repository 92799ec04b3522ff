#!/usr/bin/env bash
# The H200 runs still owed (issues 4-6), one phase per device call (each call may run 10 minutes).
# Usage on the device:  bash tests/gpu/next_session.sh PHASE   with PHASE one of
#   backward-a   generated backward variants at the 7B layout and the registry entries (about 3 min warm)
#   backward-b   the other head layouts (about 3 min warm)
#   tune-quick   mlstm-tune tune --preset quick with a 9-minute budget (needs optuna from .whl/)
#   bench        mlstm-tune bench (needs mlstm_kernels and fla-core from .whl/ for the comparison columns)
# Logs go to $OUT; commit them under tests/gpu/logs/ or tuning_db/reports/ with their command.
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# the wheels of ../shared/tools/gpu_wheels.sh (carry [".whl"]), installed as that script says
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH; fi
case "${1:-}" in
  backward-a) timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py -k "B1-NH8 or entry" \
                -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_a.log" 2>&1; tail -3 "$OUT/gpu_backward_a.log" ;;
  backward-b) timeout 540 python -m pytest -q -m gpu tests/gpu/test_gpu_backward.py -k "not B1-NH8 and not entry" \
                -p no:cacheprovider --tb=line -rfE > "$OUT/gpu_backward_b.log" 2>&1; tail -3 "$OUT/gpu_backward_b.log" ;;
  tune-quick) MLSTM_AUTOTUNE_DB=$OUT/db timeout 580 python -m autotune tune --preset quick --time-budget 500 \
                > "$OUT/tune_quick.log" 2>&1; tail -8 "$OUT/tune_quick.log" ;;
  bench)      timeout 580 python -m autotune bench --out "$OUT" > "$OUT/bench.log" 2>&1; tail -30 "$OUT/bench.log" ;;
  *) echo "usage: bash tests/gpu/next_session.sh backward-a|backward-b|tune-quick|bench"; exit 2 ;;
esac
