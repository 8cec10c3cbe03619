#!/usr/bin/env bash
# One device call: compiled tests (TESTS, PYTEST_K), then "script:parts[:extra args]" benchmark specs.
#   TESTS="tests/ops/test_kv_quant.py" benchmarks/gpu_call.sh "attention:decode:--kv-dtype both --quick" "mla:splits"
# Every log goes to $OUT; each table is printed at the end of the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
start=$(date +%s)
if [ -n "${TESTS:-}" ]; then
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest $TESTS -q -x -n 8 -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} \
    > "$OUT/gpu_tests.txt" 2>&1
  echo "tests rc=$? after $(( $(date +%s) - start )) s: $(tail -1 "$OUT/gpu_tests.txt")"
fi
n=0
for spec in "$@"; do
  IFS=: read -r script parts extra <<< "$spec"
  n=$((n + 1))
  timeout "${BENCH_TIMEOUT:-240}" python3 "benchmarks/$script.py" --parts "$parts" $extra > "$OUT/$n-$script.log" 2>&1
  echo "$script rc=$? after $(( $(date +%s) - start )) s"
done
for log in "$OUT"/[0-9]*-*.log; do grep -v "^{" "$log" | grep -A60 "^## \|Error" ; done
