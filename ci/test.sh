#!/usr/bin/env bash
# Run the test suite (the README's `make test`), optionally one part only:
#   ci/test.sh                 everything: main suite (vLLM 0.32), vLLM 0.30 job, triton-ascend job
#   ci/test.sh cpu             main suite, no gpu/npu tests     ci/test.sh gpu   on a CUDA host
#   ci/test.sh npu             on an Ascend host     ci/test.sh distributed | e2e
#   ci/test.sh vllm030         the vLLM 0.30 compatibility job  ci/test.sh triton-ascend
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in
  all) exec make test ;;
  vllm030) exec make test-vllm030 ;;
  triton-ascend) exec make test-triton-ascend ;;
  cpu) exec make test-main PYTEST_ARGS="-m 'not gpu and not npu'" ;;
  gpu|npu|distributed|e2e) exec make test-main PYTEST_ARGS="-m $1" ;;
  *) exec make test-main PYTEST_ARGS="-m '$1'" ;;
esac
