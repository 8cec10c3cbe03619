#!/usr/bin/env bash
# Run the test suite (the README's `make test`). Optional marker expression:
#   ci/test.sh            everything this machine can run (absent hardware skips)
#   ci/test.sh gpu        only tests marked gpu (on a CUDA host)
#   ci/test.sh "not e2e"  skip the vLLM engine tests
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  exec make test PYTEST_ARGS="-m '$1'"
fi
exec make test
