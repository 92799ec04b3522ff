#!/usr/bin/env bash
# The GPU runs behind docs/hazards.md and tuning_db/reports/*-validate.json, one device call each.
# Usage on the device (carry .whl and .probe):  bash bench/trust_gate_run.sh PHASE    PHASE one of
#   validate   the hazard reproducers (table + their GPU tests); `mlstm-tune validate` of the packaged databases and
#              the defaults; at the same time the same gate on the kernels generated before the hazard fixes
#              (.probe/old_generated, a subset of entries in .probe/old_subset), for the before/after table
# Logs and reports go to $OUT; every log starts with the GPU's name.
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH; fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
header() { echo "# GPU: $gpu; $(python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'); $*"; }
case "${1:-}" in
  validate)
    ( header "python tests/gpu/test_gpu_hazards.py; pytest -m gpu tests/gpu/test_gpu_hazards.py"
      timeout 400 python tests/gpu/test_gpu_hazards.py
      timeout 150 python -m pytest -q -m gpu tests/gpu/test_gpu_hazards.py -p no:cacheprovider --tb=line -rfE
    ) > "$OUT/hazards.log" 2>&1 &
    ( header "validate with the kernels generated before the fixes (.probe/old_generated)"
      timeout 560 python -c "
from pathlib import Path
from autotune import paths
paths.generated_dir = lambda: Path('.probe/old_generated')
from autotune.cli import main
raise SystemExit(main(['validate', '--db', '.probe/old_subset/NVIDIA_H200.json', '--no-defaults', '--out', '/tmp/old']))"
      cp /tmp/old/NVIDIA_H200-validate.json "$OUT/before-fix-NVIDIA_H200-validate.json"
    ) > "$OUT/validate_before_fix.log" 2>&1 &
    ( header "python -m autotune validate --db tuning_db/NVIDIA_H200.json --out \$OUT"
      timeout 570 python -m autotune validate --db tuning_db/NVIDIA_H200.json --out "$OUT"
    ) > "$OUT/validate.log" 2>&1
    wait
    tail -4 "$OUT/hazards.log" "$OUT/validate_before_fix.log"; tail -40 "$OUT/validate.log" ;;
  *) echo "unknown phase ${1:-}" >&2; exit 2 ;;
esac
