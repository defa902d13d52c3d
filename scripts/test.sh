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
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The training tests' time goes to XLA compiling small train steps, which LLVM -O0 does
# about twice as fast (their runs are short); the rest run heavier programs and keep -O2.
COMPILE_BOUND=(tests/test_train.py tests/test_memory_window.py tests/test_reseat_memory.py)
# Two pytest-xdist workers: XLA compiles on one core, so a second process keeps both busy.
# Programs compiled once (the same tiny model in several test files, notebook kernels)
# are shared through a compilation cache that lives for this run only.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
export JAX_COMPILATION_CACHE_DIR
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
XDIST=(-n 2 --dist worksteal)
rc=0
XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}" \
    .venv/bin/python -m pytest -q "${XDIST[@]}" "${COMPILE_BOUND[@]}" || rc=$?
.venv/bin/python -m pytest -q "${XDIST[@]}" "${COMPILE_BOUND[@]/#/--ignore=}" || rc=$?
exit "$rc"
