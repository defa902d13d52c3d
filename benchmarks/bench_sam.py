"""sam_b: image encoder at 1024 and prompt -> mask latency from a cached embedding.

JAX (jit, after warm-up) versus ultralytics 8.4.190 torch eager, same random weights and
inputs, measured in the same run; the encoder's rate on its products against a 2048^3
product's is printed too (benchmarks/flops.py). Run: .venv/bin/python benchmarks/bench_sam.py
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from common import compile_time, interleaved_medians, median_time, report  # noqa: E402
from flops import encoder_gflop, peak_gflops, rate_line  # noqa: E402
from reference import randomize_, to_nchw  # noqa: E402

from sam_jax.checkpoint import build, variable_shapes  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from ultralytics.models.sam.build import build_sam_vit_b

    ref = randomize_(build_sam_vit_b(), seed=0)
    model = build("sam_b")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    variables = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    print(f"devices: jax {jax.devices()}, torch threads {torch.get_num_threads()}")

    x = np.random.RandomState(0).randn(1, 1024, 1024, 3).astype(np.float32)
    x_t = to_nchw(x)
    encode = jax.jit(lambda v, im: model.apply(v, im, method="encode_image"))
    c = compile_time(encode, variables, x)
    with torch.no_grad():
        t_jax, t_torch = interleaved_medians(
            lambda: encode(variables, x), lambda: ref.image_encoder(x_t), args.repeats
        )
    report("sam_b image encoder 1024x1024", t_jax, t_torch, c)
    print(rate_line(encoder_gflop(model), t_jax, t_torch, peak_gflops()), flush=True)

    emb = encode(variables, x)
    emb_t = to_nchw(np.asarray(emb))
    pts = np.array([[[400.0, 300.0]]], np.float32)
    lab = np.array([[1]], np.int32)
    predict = jax.jit(
        lambda v, e, p, lab: model.apply(
            v, e, point_coords=p, point_labels=lab, method="predict_masks"
        )
    )
    c = compile_time(predict, variables, emb, pts, lab)
    pts_t, lab_t = torch.from_numpy(pts), torch.from_numpy(lab)

    def torch_predict():
        with torch.no_grad():
            sp, de = ref.prompt_encoder((pts_t, lab_t), None, None)
            return ref.mask_decoder(emb_t, ref.prompt_encoder.get_dense_pe(), sp, de, True)

    t_torch = median_time(torch_predict, args.repeats * 4)
    t_jax = median_time(lambda: predict(variables, emb, pts, lab), args.repeats * 4)
    report("sam_b prompt -> masks (cached embedding)", t_jax, t_torch, c)

    # With the decoder's per-image work done once (`decoder_cache`), as the Predictor runs it.
    cache = jax.jit(lambda v, e: model.apply(v, e, method="decoder_cache"))(variables, emb)
    predict_cached = jax.jit(
        lambda v, e, p, lab, cache: model.apply(
            v, e, point_coords=p, point_labels=lab, decoder_cache=cache, method="predict_masks"
        )
    )
    c = compile_time(predict_cached, variables, emb, pts, lab, cache)
    t_jax = median_time(lambda: predict_cached(variables, emb, pts, lab, cache), args.repeats * 4)
    report("sam_b prompt -> masks (+ decoder_cache)", t_jax, t_torch, c)


if __name__ == "__main__":
    main()
