"""Image encoders in bfloat16: sam-jax against the PyTorch reference in float32 and bfloat16.

    python benchmarks/bench_bf16.py [sam_b mobile_sam sam2.1_t] [--runs 3]

For each variant: ultralytics' module with seeded random weights, converted in memory; then,
in one process, on the same 1024-px input, alternating: sam-jax `build(name)` (float32) and
`build(name, dtype=jnp.bfloat16)` (jit, after warm-up), and torch eager in float32 and under
`torch.autocast("cpu", dtype=torch.bfloat16)`. Prints median seconds, the ratios, and each
bfloat16 encoder's max relative difference from its own float32 output.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_jax.checkpoint import build, variable_shapes  # noqa: E402
from sam_jax.config import VARIANTS  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402
from tests.reference import randomize_, to_nchw  # noqa: E402


def reference(name: str):
    """(torch module with random weights, its image-encoder call on an NCHW tensor)."""
    if name.startswith("sam2"):
        from tests.reference_sam2 import build_reference_sam2

        ref = randomize_(build_reference_sam2(VARIANTS[name]), seed=0)
        return ref, lambda x: ref.forward_image(x)["vision_features"]
    from ultralytics.models.sam import build as sam_build

    builder = {"sam_b": sam_build.build_sam_vit_b, "mobile_sam": sam_build.build_mobile_sam}
    ref = randomize_(builder[name](), seed=0)
    return ref, ref.image_encoder


def features(out) -> np.ndarray:
    """The encoder's main output as float32 (NHWC for ours, NCHW for torch)."""
    if isinstance(out, dict):
        out = out["vision_features"]
    if isinstance(out, torch.Tensor):
        return out.float().numpy()
    return np.asarray(jnp.asarray(out, jnp.float32))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def bench(name: str, runs: int) -> None:
    ref, encode_ref = reference(name)
    ref.eval()
    x = np.random.default_rng(0).standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    x_t = to_nchw(x)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    variables = jax.device_put(state_dict_to_variables(sd, variable_shapes(build(name))))
    del sd
    fns = {}
    for label, dtype in (("sam-jax f32", jnp.float32), ("sam-jax bf16", jnp.bfloat16)):
        model = build(name, dtype=dtype)  # the same parameters; only the compute dtype
        encode = jax.jit(lambda v, im, m=model: m.apply(v, im, method="encode_image"))
        jax.block_until_ready(encode(variables, x))
        fns[label] = lambda e=encode: jax.block_until_ready(e(variables, x))

    def torch_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encode_ref(x_t)

    fns["torch f32"] = lambda: encode_ref(x_t)
    fns["torch bf16"] = torch_bf16
    times = {k: [] for k in fns}
    outs = {}
    with torch.inference_mode():
        for k, f in fns.items():
            outs[k] = features(f())  # warm-up
        for _ in range(runs):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(t) for k, t in times.items()}
    print(f"{name}: " + "  ".join(f"{k} {v:.3f} s" for k, v in med.items()))
    print(
        f"  torch f32 / sam-jax bf16 x{med['torch f32'] / med['sam-jax bf16']:.2f}   "
        f"torch bf16 / sam-jax bf16 x{med['torch bf16'] / med['sam-jax bf16']:.2f}   "
        f"torch f32 / sam-jax f32 x{med['torch f32'] / med['sam-jax f32']:.2f}"
    )
    print(
        f"  bf16 vs own f32, max rel diff: sam-jax {rel(outs['sam-jax bf16'], outs['sam-jax f32']):.1e}"
        f", torch {rel(outs['torch bf16'], outs['torch f32']):.1e}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=["sam_b", "mobile_sam", "sam2.1_t"])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for name in args.variants:
        bench(name, args.runs)
        gc.collect()


if __name__ == "__main__":
    main()
