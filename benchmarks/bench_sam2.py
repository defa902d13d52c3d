"""SAM 2 image path: jitted JAX vs ultralytics' PyTorch (eager), same random weights.

    python benchmarks/bench_sam2.py [sam2.1_t sam2.1_b ...] [--runs 5] [--batch 1]

For each variant: build the ultralytics SAM2Model, fill every weight with seeded random
values, convert it in memory, then time at 1024 px, in the same process and on the same
inputs: the image encoder (forward_image / encode_image) and the SAM heads for a box + click
prompt (no_mem_embed + _forward_sam_heads / predict_masks). JAX times are after compilation
and warm-up (the compile time is printed separately); torch runs under inference_mode after
one warm-up call. Reported: median of `--runs`, the outputs' relative difference, and both
libraries' rate on the encoder's products against a 2048^3 product's (benchmarks/flops.py).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_medians, median_time  # noqa: E402
from flops import encoder_gflop, peak_gflops, rate_line  # noqa: E402

from sam_jax.config import VARIANTS  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402
from sam_jax.models.sam2 import Sam2  # noqa: E402
from tests.reference import nchw, randomize_, rel_err, to_nchw  # noqa: E402
from tests.reference_sam2 import build_reference_sam2  # noqa: E402


def bench(name: str, runs: int, batch: int) -> dict:
    cfg = VARIANTS[name]
    s = cfg.image_size
    ref = randomize_(build_reference_sam2(cfg), seed=0)
    model = Sam2(cfg)
    target = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jax.numpy.zeros((1, s, s, 3)), method="init_everything"
        )
    )
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = jax.device_put(state_dict_to_variables(sd, target))
    del sd

    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
    box = np.tile(np.array([[200.0, 150.0, 700.0, 800.0]], np.float32), (batch, 1))
    clicks = np.tile(np.array([[[400.0, 500.0]]], np.float32), (batch, 1, 1))
    labels = np.ones((batch, 1), np.int32)

    # ---- JAX
    def encode(p, x):
        return model.apply(p, x, method="encode_image")

    def decode(p, f, b, c, lab):
        return model.apply(p, f, point_coords=c, point_labels=lab, boxes=b, method="predict_masks")

    t = time.perf_counter()
    encode_c = jax.jit(encode).lower(params, images).compile()
    compile_enc = time.perf_counter() - t
    feats = jax.block_until_ready(encode_c(params, images))
    t = time.perf_counter()
    decode_c = jax.jit(decode).lower(params, feats, box, clicks, labels).compile()
    compile_dec = time.perf_counter() - t
    out = jax.block_until_ready(decode_c(params, feats, box, clicks, labels))  # warm-up
    jax_encode = lambda: jax.block_until_ready(encode_c(params, images))  # noqa: E731
    jax_dec = median_time(lambda: decode_c(params, feats, box, clicks, labels), runs, warmup=0)

    # ---- torch (eager)
    timg = to_nchw(images)
    points = {
        "point_coords": torch.from_numpy(np.concatenate([box.reshape(batch, 2, 2), clicks], 1)),
        "point_labels": torch.from_numpy(
            np.concatenate([np.tile([[2, 3]], (batch, 1)), labels], 1).astype(np.int32)
        ),
    }

    def torch_encode():
        return ref.forward_image(timg)

    def torch_decode(backbone):
        emb = backbone["vision_features"] + ref.no_mem_embed.view(1, -1, 1, 1)
        return ref._forward_sam_heads(emb, points, None, backbone["backbone_fpn"][:2], True)

    with torch.inference_mode():
        backbone = torch_encode()  # warm-up
        theirs = torch_decode(backbone)
        # The encoders in turn, call by call: this machine's speed drifts within minutes.
        jax_enc, torch_enc = interleaved_medians(jax_encode, torch_encode, runs)
        torch_dec = median_time(lambda: torch_decode(backbone), runs, warmup=0)

    errs = {
        "features": rel_err(feats["vision_features"], nchw(backbone["vision_features"])),
        "logits": rel_err(out[0], theirs[0].numpy()),
        "iou": rel_err(out[1], theirs[2].numpy()),
    }
    return {
        "name": name,
        "jax_enc": jax_enc,
        "jax_dec": jax_dec,
        "torch_enc": torch_enc,
        "torch_dec": torch_dec,
        "compile_enc": compile_enc,
        "compile_dec": compile_dec,
        "errs": errs,
        "gflop_enc": encoder_gflop(model, batch),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=["sam2.1_t", "sam2.1_b"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), batch {args.batch}, 1024 px, "
        f"median of {args.runs} runs"
    )
    header = (
        f"{'variant':<10} {'part':<8} {'jax s':>8} {'torch s':>8} {'torch/jax':>9} {'compile s':>9}"
    )
    print(header)
    for name in args.variants:
        r = bench(name, args.runs, args.batch)
        peak = peak_gflops()  # right after the encoders, in the state they ran in
        gc.collect()  # one model's buffers at a time
        for part, j, t, c in [
            ("encoder", r["jax_enc"], r["torch_enc"], r["compile_enc"]),
            ("decoder", r["jax_dec"], r["torch_dec"], r["compile_dec"]),
            (
                "total",
                r["jax_enc"] + r["jax_dec"],
                r["torch_enc"] + r["torch_dec"],
                r["compile_enc"] + r["compile_dec"],
            ),
        ]:
            print(f"{name:<10} {part:<8} {j:8.4f} {t:8.4f} {t / j:9.2f} {c:9.2f}")
        print(
            f"{name:<10} max rel diff vs torch: "
            + ", ".join(f"{k} {v:.1e}" for k, v in r["errs"].items())
        )
        print(
            f"{name:<10} encoder:" + rate_line(r["gflop_enc"], r["jax_enc"], r["torch_enc"], peak)
        )


if __name__ == "__main__":
    main()
