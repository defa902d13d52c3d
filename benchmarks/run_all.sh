#!/usr/bin/env bash
# Every CPU benchmark of the README's performance table, one after another (run it on a quiet
# machine: nothing else running). Each script prints JAX against the PyTorch reference
# measured in the same process, same weights and inputs, after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
lscpu | grep -E "Model name|^CPU\(s\)"
"$PY" -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__)"
"$PY" benchmarks/bench_sam.py --repeats 3
"$PY" benchmarks/bench_mobile_sam.py --repeats 3
"$PY" benchmarks/bench_sam2.py sam2.1_t --runs 3
"$PY" benchmarks/bench_predictor.py --rounds 4 --calls 5 --gen-rounds 1
"$PY" benchmarks/bench_video.py --frames 16 --skip-memory
