#!/usr/bin/env bash
# Install sam-jax (runtime dependencies only, no torch) into .venv and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/sam-jax demo --out demo_out "$@"
