#!/usr/bin/env bash
# Create .venv with vLLM for CPU and this package (what `make setup` does).
set -euo pipefail
cd "$(dirname "$0")/.."
exec make setup
