# Sourced by the GPU run scripts (bench/trust_gate_run.sh, bench/tools/gpu_runs.sh) at the repository root:
# the repository on PYTHONPATH, $OUT for logs (default /tmp/out), the wheels carried in .whl/ (pytest-xdist,
# optuna, mlstm_kernels, fla-core: whatever the GPU machine lacks) installed into /tmp/site without an index, and
# `header TEXT`, which prints the line every log starts with: the GPU's name, torch's and Triton's versions, TEXT.
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# once per machine (a marker): two scripts installing into /tmp/site at once remove each other's files
if [ -d .whl ] && [ ! -e /tmp/site/.installed ]; then python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; fi
[ -e /tmp/site/.installed ] && export PYTHONPATH=/tmp/site:$PYTHONPATH
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
header() { echo "# GPU: $gpu; $(python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'); $*"; }
