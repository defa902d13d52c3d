"""SAM 3 on CPU: the full-size concept model's parity and speed against ultralytics.

Every parameter random (the packed attention projections at fan-in scale, as in the tests),
the same weights and inputs on both sides, one process, after warm-up:
  - parity of one full-size forward (1008 px, one caption): scores, boxes, masks;
  - the vision backbone (trunk + detector neck) at 1008 px;
  - a text prompt to detections from cached image features (text encoder, fusion encoder,
    decoder, scoring, segmentation head; ultralytics: set_classes + forward_grounding);
  - the interactive tracker's prompt -> mask from cached features (its SAM heads at the
    72 x 72 grid; the heads do not depend on the trunk, so the tracker here has 2 blocks).
Run: .venv/bin/python benchmarks/bench_sam3.py
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from common import compile_time, median_time, report  # noqa: E402

from sam_jax.checkpoint import build_from_config, variable_shapes  # noqa: E402
from sam_jax.config import VARIANTS  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402
from sam_jax.models.sam3_config import Sam3VisionConfig  # noqa: E402
from sam_jax.text import CLIPTokenizer  # noqa: E402
from tests.reference import randomize_, rel_err, to_nchw  # noqa: E402


def _fill(ref: torch.nn.Module, seed: int) -> torch.nn.Module:
    randomize_(ref, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("in_proj_weight"):
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        for m in ref.modules():
            if hasattr(m, "build_causal_mask") and hasattr(m, "attn_mask"):
                m.attn_mask.copy_(m.build_causal_mask())
    return ref.eval()


def _variables(model, ref) -> dict:
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    return jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))


def concept(repeats: int) -> None:
    import ultralytics.models.sam.build_sam3 as build

    from tests.test_sam3_text import _PaddedSimpleTokenizer

    build._load_checkpoint = lambda model, path, **kw: model
    ref = build.build_sam3_image_model("unused.pt")
    ref.backbone.vision_backbone.sam2_convs = None  # the tracker's neck: not this model's
    ref.backbone.language_backbone.tokenizer = _PaddedSimpleTokenizer()
    _fill(ref, seed=0)
    model = build_from_config(VARIANTS["sam3_semantic"])
    params = _variables(model, ref)
    gc.collect()

    x = np.random.default_rng(0).uniform(-1, 1, (1, 1008, 1008, 3)).astype(np.float32)
    x_t = to_nchw(x)
    encode = jax.jit(lambda p, im: model.apply(p, im, method="encode_image"))
    c = compile_time(encode, params, x)
    with torch.no_grad():
        t_torch = median_time(lambda: ref.backbone.forward_image(x_t), repeats)
    t_jax = median_time(lambda: encode(params, x), repeats)
    report("sam3 vision backbone 1008x1008", t_jax, t_torch, c)

    captions = ["a red car"]
    ids = jnp.asarray(CLIPTokenizer()(captions))
    feats = encode(params, x)

    @jax.jit
    def detect(p, f, i):
        text = model.apply(p, i, method="encode_text")
        return model.apply(p, f, text, method="detect")

    c = compile_time(detect, params, feats, ids)
    with torch.no_grad():
        ref_feats = ref.backbone.forward_image(x_t)

    def torch_detect():
        with torch.no_grad():
            ref.set_classes(captions)
            return ref.forward_grounding(ref_feats, torch.arange(1))

    t_torch = median_time(torch_detect, repeats)
    t_jax = median_time(lambda: detect(params, feats, ids), repeats)
    report("sam3 text prompt -> detections", t_jax, t_torch, c)

    ours, theirs = detect(params, feats, ids), torch_detect()
    errs = {
        "pred_logits": rel_err(ours["pred_logits"], theirs["pred_logits"][..., 0].numpy()),
        "pred_boxes": rel_err(ours["pred_boxes"], theirs["pred_boxes"].numpy()),
        "presence": rel_err(ours["presence_logit"], theirs["presence_logit_dec"][..., 0].numpy()),
        "pred_masks": rel_err(ours["pred_masks"], theirs["pred_masks"].numpy()),
        "backbone_fpn": max(
            rel_err(a, b.permute(0, 2, 3, 1).numpy())
            for a, b in zip(feats["backbone_fpn"], ref_feats["backbone_fpn"], strict=True)
        ),
    }
    print(
        "sam3_semantic full-size parity (rel err): "
        + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    )


def tracker_heads(repeats: int) -> None:
    from tests.reference_sam3 import build_reference_sam3_tracker, tracker_state_dict

    cfg = dataclasses.replace(
        VARIANTS["sam3"],
        encoder=Sam3VisionConfig(embed_dim=64, depth=2, num_heads=2, global_att_blocks=(1,)),
    )
    ref = _fill(build_reference_sam3_tracker(cfg), seed=2)
    model = build_from_config(cfg)
    sd = tracker_state_dict(ref)
    params = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    x = np.random.default_rng(1).uniform(-1, 1, (1, 1008, 1008, 3)).astype(np.float32)
    feats = jax.jit(lambda p, im: model.apply(p, im, method="encode_image"))(params, x)
    with torch.no_grad():
        rout = ref.forward_image(to_nchw(x))
    pts, lab = np.array([[[400.0, 300.0]]], np.float32), np.array([[1]], np.int32)

    def heads(p, f, c, lb):  # the reference's _forward_sam_heads: high-res masks, pointer
        emb = f["vision_features"] + p["params"]["no_mem_embed"].reshape(1, 1, 1, -1)
        hr = f["high_res_features"]
        return model.apply(p, emb, c, lb, None, hr, True, method="forward_sam_heads")

    predict = jax.jit(heads)
    c = compile_time(predict, params, feats, pts, lab)

    def torch_heads():
        with torch.no_grad():
            emb = rout["vision_features"] + ref.no_mem_embed.view(1, -1, 1, 1)
            points = {"point_coords": torch.from_numpy(pts), "point_labels": torch.from_numpy(lab)}
            return ref._forward_sam_heads(emb, points, None, rout["backbone_fpn"][:2], True)

    t_torch = median_time(torch_heads, repeats * 4)
    t_jax = median_time(lambda: predict(params, feats, pts, lab), repeats * 4)
    report("sam3 tracker prompt -> masks (cached)", t_jax, t_torch, c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"devices: jax {jax.devices()}, torch threads {torch.get_num_threads()}")
    tracker_heads(args.repeats)
    concept(args.repeats)


if __name__ == "__main__":
    main()
