#!/usr/bin/env bash
# Run the test suite (the README's `make test`), optionally one marker only:
#   ci/test.sh                 everything this machine can run (absent hardware skips)
#   ci/test.sh cpu             no gpu/npu tests      ci/test.sh gpu   on a CUDA host
#   ci/test.sh npu             on an Ascend host     ci/test.sh distributed | e2e
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-all}" in
  all) exec make test ;;
  cpu) exec make test PYTEST_ARGS="-m 'not gpu and not npu'" ;;
  gpu|npu|distributed|e2e) exec make test PYTEST_ARGS="-m $1" ;;
  *) exec make test PYTEST_ARGS="-m '$1'" ;;
esac
