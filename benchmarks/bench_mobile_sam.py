"""mobile_sam: TinyViT image encoder at 1024.

JAX (jit, after warm-up) versus ultralytics 8.4.190 torch eager, same random weights
(every parameter and BatchNorm statistic randomised) and the same input, measured in the
same run. Prints the medians of several calls, each library's in turn, the ratio, the JAX
compile time and both libraries' rate on the encoder's products (benchmarks/flops.py).
Run: .venv/bin/python benchmarks/bench_mobile_sam.py [--repeats N] [--batch B]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from common import compile_time, interleaved_medians, report  # noqa: E402
from flops import encoder_gflop, peak_gflops, rate_line  # noqa: E402
from reference import randomize_, rel_err, to_nchw  # noqa: E402

from sam_jax.checkpoint import build, variable_shapes  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from ultralytics.models.sam.build import build_mobile_sam

    ref = randomize_(build_mobile_sam(), seed=0)
    model = build("mobile_sam")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    variables = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    print(f"devices: jax {jax.devices()}, torch threads {torch.get_num_threads()}")

    x = np.random.RandomState(0).randn(args.batch, 1024, 1024, 3).astype(np.float32)
    x_t = to_nchw(x)
    encode = jax.jit(lambda v, im: model.apply(v, im, method="encode_image"))
    c = compile_time(encode, variables, x)
    with torch.no_grad():
        err = rel_err(np.asarray(encode(variables, x)), ref.image_encoder(x_t).permute(0, 2, 3, 1))
        t_jax, t_torch = interleaved_medians(
            lambda: encode(variables, x), lambda: ref.image_encoder(x_t), args.repeats
        )
    report(f"mobile_sam image encoder 1024x1024 b{args.batch}", t_jax, t_torch, c)
    print(rate_line(encoder_gflop(model, args.batch), t_jax, t_torch, peak_gflops()))
    print(f"(outputs agree: rel err {err:.1e})")


if __name__ == "__main__":
    main()
