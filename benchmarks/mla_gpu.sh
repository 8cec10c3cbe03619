#!/usr/bin/env bash
# One device call for MLA decode: compiled parity tests, then benchmarks/mla.py parts.
#   benchmarks/mla_gpu.sh sweep            # tile / formulation / split sweep on 4 shapes
#   QUICK=1 benchmarks/mla_gpu.sh decode   # shape grid with anchors (copy, matmul, naive)
# Logs and JSON go to $OUT (the device tool brings them back); the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-100}" python3 -m pytest tests/ops/test_mla.py tests/ops/test_cuda_graphs.py -k "mla" -q -x \
    -n 8 -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/mla_tests.txt"
fi
echo "tests took $(( $(date +%s) - start )) s"
timeout "${BENCH_TIMEOUT:-150}" python3 benchmarks/mla.py --parts "${1:-sweep}" ${QUICK:+--quick} > "$OUT/mla.log" 2>&1
echo "bench rc=$? after $(( $(date +%s) - start )) s"
grep -v "^{'Hq'\|^Hq=" "$OUT/mla.log" | tail -60
