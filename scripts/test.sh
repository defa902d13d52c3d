#!/usr/bin/env bash
# Install sam-jax with its test extras into .venv (created if missing), lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision are the pinned PyTorch reference (test-only); pip takes them from this
# machine's local wheel store where one is configured.
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
