#!/usr/bin/env bash
# One device call: GPU parity suite, then the benchmark parts given as arguments.
#   benchmarks/run_gpu.sh attention:prefill,decode mla
# TEST_FILES narrows the parity run (default tests/ops), PYTEST_K selects by name.
# Logs and result files go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest ${TEST_FILES:-tests/ops} -q -x -n 8 -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
fi
for spec in "$@"; do
  script=${spec%%:*}; parts=${spec#*:}
  [ "$parts" = "$spec" ] && parts=""
  timeout "${BENCH_TIMEOUT:-420}" python3 "benchmarks/$script.py" ${parts:+--parts "$parts"} ${QUICK:+--quick} 2>&1 | tee "$OUT/$script.log"
done
