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
# Most of the suite's time goes to XLA compiling small programs, not running them. Two
# compiler flags cut that about threefold: LLVM at -O0, and XLA:CPU's elemental emitters
# instead of its MLIR fusion emitters (a tiny SAM train step's gradient: 31 s -> 10 s; it
# runs as fast). Every test runs with them (but for run-bound notebook kernels, see
# tests/test_notebooks.py); the library's defaults are untouched.
# XLA aborts on a flag it does not know, so a jaxlib that dropped one runs without it.
SUITE_FLAGS="--xla_backend_optimization_level=0"
FAST="--xla_cpu_use_fusion_emitters=false"
if XLA_FLAGS="$SUITE_FLAGS $FAST" .venv/bin/python -c "import jax; jax.numpy.zeros(1)" 2>/dev/null; then
    SUITE_FLAGS="$SUITE_FLAGS $FAST"
else
    echo "scripts/test.sh: this jaxlib does not know $FAST; the suite runs without it (slower)"
fi
export XLA_FLAGS="$SUITE_FLAGS ${XLA_FLAGS:-}"
# Two pytest-xdist workers: XLA compiles on one core, so a second process keeps both busy.
# Programs compiled once (the same tiny model in several test files, notebook kernels)
# are shared through a compilation cache that lives for this run only.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
export JAX_COMPILATION_CACHE_DIR
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
if [ $# -gt 0 ]; then
    .venv/bin/python -m pytest -q "$@"
else
    .venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=40
fi
