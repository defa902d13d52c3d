"""Page faults and system time per encoder call, sam-jax and torch, with glibc's default
allocator settings and with freed memory kept in the process.

    python benchmarks/page_faults.py                 # sam2.1_t at 1024 px, both settings
    python benchmarks/page_faults.py --variant sam_b --runs 3

glibc hands allocations above its mmap threshold (at most 32 MiB) straight to the kernel
and unmaps them when they are freed, and it trims freed memory at the top of its heaps;
every call of a program with large buffers (an XLA executable's temporary buffer, torch's
activations) then maps and zeroes those pages afresh, one page fault per 4 KiB. The
environment `KEEP_MEMORY` (below) keeps freed memory in the process instead, so the pages
are faulted once. Each setting runs in a fresh subprocess (glibc reads the variables at
start); both libraries run in the same process on the same random weights and input.
Reported per call (median of `--runs`): wall seconds, user and system CPU seconds, and
minor page faults (ru_minflt, as MiB of 4 KiB pages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# No mmap for large blocks, no trimming, one arena (worker threads otherwise get their own
# mmap'd heaps, which large blocks bypass): every freed page stays mapped for reuse.
KEEP_MEMORY = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
}


def measure(fn, runs: int) -> dict:
    """Median wall / user / system seconds and page faults (MiB) over `runs` calls."""
    fn()
    rows = []
    for _ in range(runs):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        faults = (r1.ru_minflt - r0.ru_minflt) * 4 / 1024
        rows.append((t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, faults))
    keys = ("wall_s", "user_s", "sys_s", "fault_mib")
    return {k: statistics.median(r[i] for r in rows) for i, k in enumerate(keys)}


def child(variant: str, runs: int) -> dict:
    """Both encoders in this process: {"sam_jax": ..., "torch": ...}."""
    sys.path.insert(0, str(ROOT))
    import jax
    import numpy as np
    import torch

    from sam_jax.checkpoint import build_from_config, variable_shapes
    from sam_jax.config import variant_config
    from sam_jax.convert.keymap import state_dict_to_variables
    from tests.reference import randomize_, to_nchw

    cfg = variant_config(variant)
    s = cfg.image_size
    if variant.startswith("sam2"):
        from tests.reference_sam2 import build_reference_sam2

        ref = randomize_(build_reference_sam2(cfg), seed=0)
        torch_encode = ref.forward_image
    else:
        from tests.reference import build_reference_sam, build_reference_vit

        ref = randomize_(build_reference_sam(build_reference_vit(cfg.encoder), s), seed=0)
        torch_encode = ref.image_encoder
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    x = np.random.default_rng(0).standard_normal((1, s, s, 3)).astype(np.float32)
    encode = jax.jit(lambda p, x: model.apply(p, x, method="encode_image"))
    out = {"sam_jax": measure(lambda: jax.block_until_ready(encode(params, x)), runs)}
    tx = to_nchw(x)
    with torch.inference_mode():
        out["torch"] = measure(lambda: torch_encode(tx), runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="sam2.1_t")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.variant, args.runs)))
        return
    print(f"{args.variant} encoder, one call (median of {args.runs})")
    print(
        f"{'allocator':<22s}{'library':<9s}{'wall s':>8s}{'user s':>8s}{'sys s':>8s}{'faults':>12s}"
    )
    for name, extra in (("glibc defaults", {}), ("freed memory kept", KEEP_MEMORY)):
        cmd = [sys.executable, __file__, "--child", "--variant", args.variant]
        cmd += ["--runs", str(args.runs)]
        res = subprocess.run(cmd, env={**os.environ, **extra}, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        for lib, r in json.loads(res.stdout.strip().splitlines()[-1]).items():
            print(
                f"{name:<22s}{lib:<9s}{r['wall_s']:8.2f}{r['user_s']:8.2f}{r['sys_s']:8.2f}"
                f"{r['fault_mib']:8.0f} MiB"
            )
    print("freed memory kept: " + " ".join(f"{k}={v}" for k, v in KEEP_MEMORY.items()))


if __name__ == "__main__":
    main()
