#!/usr/bin/env bash
# One-shot GPU benchmark of sam-jax (issue 27, item 7): encoder, predict_masks and video
# throughput in float32 and bf16, and the real peak GPU memory of the train steps, random
# weights, no torch, no network. About 7 minutes (benchmarks/device_bench.py --budget 420).
#
# HOW TO LAUNCH on a lent GPU (this workplace's device `run` tool), from the repo root:
#
#     run(command="bash benchmarks/device.sh", timeout_s=480)          # no carry
#
# Nothing is installed and nothing is carried: the device machine's own `python3`
# (/opt/torch/.venv, Python 3.12, jax + jax-cuda13-plugin, flax, optax, chex, safetensors,
# pillow, tqdm, numpy; see /work/.library/device/KINDS.md) has every package sam-jax imports,
# and the sources travel with the working tree and are imported through PYTHONPATH. Do NOT
# carry .venv: it holds this machine's CPU-only jax for Python 3.11. Only if the preflight
# below reports a missing package: download its wheel here into .whl/ as README.md of
# /work/.library/device explains, carry=[".whl"], and start the command with
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#
# What comes back: the printed table (the end of it is the reply's output_tail) and, under
# $OUT, device_results.json (every figure and setting) and device_log.txt (the whole output).
# Elsewhere: PY=/path/to/python bash benchmarks/device.sh [--budget S] [--only JOB ...]
# (arguments go to device_bench.py; --quick checks the code paths with tiny models on CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG="$OUT/device_log.txt"; fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  # Preflight: every package sam-jax needs, and that `import sam_jax` works with this jax.
  "$PY" - <<'EOF' || { echo "preflight failed: see the header of benchmarks/device.sh"; exit 3; }
import importlib, sys
missing = []
for name in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "safetensors", "PIL", "tqdm"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}", end="; ")
    except ImportError:
        missing.append(name)
print(f"python {sys.version.split()[0]}")
if missing:
    sys.exit(f"missing packages: {', '.join(missing)}")
import sam_jax  # noqa: F401  (the tree's sources through PYTHONPATH)
EOF
  "$PY" benchmarks/device_bench.py "$@"
} 2>&1 | tee "$LOG"
