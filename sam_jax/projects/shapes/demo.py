"""`sam-jax demo`: the main jobs end to end on bundled data with the bundled models (or
checkpoint files).

Image (sam_tiny_shapes): save the model (the conversion path), load it back, prompt the
image predictor with one click per object of a synthetic held-out scene, score the masks
against the exact ones, segment everything. Video (sam2_tiny_shapes): one click per object
on the first frame of a held-out synthetic video, propagate, score every frame. The
pictures go to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.cli import flags

DEMO_SEED = 10_000_007  # a held-out scene (training uses seeds below 1,000,000)


def _model(name: str) -> tuple[tuple[Any, Any], str]:
    """((model, variables), what it is) for a bundled name, a checkpoint file, or a variant
    name (random weights, with a note on stderr)."""
    import jax

    from sam_jax.checkpoint import build, bundled_models, init_params, load

    if name in bundled_models():
        return load(name), f"bundled model {name!r}"
    if Path(name).is_file():  # a checkpoint of one's own (.safetensors or torch)
        return load(name), f"checkpoint {name}"
    model = build(name)
    print(
        f"NOTE: no bundled weights for {name!r}: using RANDOM weights, so the masks below are "
        "meaningless; the pipeline is what runs.",
        file=sys.stderr,
    )
    return (model, init_params(model, jax.random.key(0))), f"{name} with random weights"


def run(args: argparse.Namespace) -> None:
    """The image part, then the video part unless --video-checkpoint is ''."""
    from PIL import Image

    from sam_jax import Predictor
    from sam_jax.checkpoint import load, save
    from sam_jax.cli.images import overlay
    from sam_jax.projects.shapes.evaluate import iou_or_one
    from sam_jax.projects.shapes.synthetic import scene
    from sam_jax.train.batching import promptable
    from sam_jax.train.clicks import innermost_pixel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (model, params), what = _model(args.checkpoint)
    save(out / "model.safetensors", model, params)
    model, params = load(out / "model.safetensors")
    print(f"model: {what}, saved and reloaded from {out / 'model.safetensors'}")

    image, masks = scene(DEMO_SEED, 320)  # not the model's size: the predictor letterboxes
    masks = masks[promptable(masks)]
    Image.fromarray(image).save(out / "image.png")
    predictor = Predictor(model, params)
    predictor.set_image(image)
    found, ious = [], []
    for i, m in enumerate(masks):
        x, y = innermost_pixel(m)
        pred, scores, _ = predictor.predict(
            point_coords=np.array([[x, y]], np.float32), point_labels=np.array([1])
        )
        best = pred[int(np.argmax(scores))]
        iou = (best & m).sum() / max((best | m).sum(), 1)
        ious.append(iou)
        found.append(best)
        Image.fromarray(best.astype(np.uint8) * 255).save(out / f"mask_{i}.png")
        print(f"object {i}: click ({x}, {y}) -> mask of {int(best.sum())} px, IoU {iou:.3f}")
    Image.fromarray(overlay(image, found)).save(out / "overlay_clicks.png")
    print(f"mean one-click IoU over {len(masks)} objects: {np.mean(ious):.3f}")

    records = predictor.generate(
        image,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    segs = [r["segmentation"] for r in records]
    Image.fromarray(overlay(image, segs)).save(out / "overlay_everything.png")
    best = [max([iou_or_one(s, m) for s in segs] or [0.0]) for m in masks]
    print(
        f"segment everything: {len(records)} masks; best match per object (IoU) "
        + ", ".join(f"{b:.2f}" for b in best)
    )
    if args.video_checkpoint:
        _video(args, out)
    print(
        f"wrote {out}/: image.png, mask_*.png, overlay_clicks.png, overlay_everything.png"
        + (", video_strip.png" if args.video_checkpoint else "")
    )


def _video(args: argparse.Namespace, out: Path) -> None:
    """Track every sizeable object of a held-out video from one click on frame 0."""
    from PIL import Image

    from sam_jax import VideoPredictor
    from sam_jax.cli.images import overlay
    from sam_jax.projects.shapes.evaluate import iou_or_one
    from sam_jax.projects.shapes.synthetic import video
    from sam_jax.train.batching import promptable
    from sam_jax.train.clicks import innermost_pixel

    (model, params), what = _model(args.video_checkpoint)
    frames, masks = video(DEMO_SEED, args.frames, model.config.image_size)
    objs = promptable(masks[0])
    vp = VideoPredictor(model, params, progress=False)
    state = vp.init_state(frames)
    for k in objs:
        vp.add_new_points_or_box(state, 0, int(k), [innermost_pixel(masks[0, k])], [1])
    ious, strip = [], []
    for f, ids, logits in vp.propagate_in_video(state):
        pred = logits > 0
        ious += [iou_or_one(p, masks[f, k]) for p, k in zip(pred, ids, strict=True)]
        if f % 3 == 0:
            strip.append(overlay(frames[f], list(pred)))
    vp.close(state)
    Image.fromarray(np.concatenate(strip, axis=1)).save(out / "video_strip.png")
    print(
        f"video: {what}, {len(objs)} objects clicked once on frame 0 of {args.frames} frames: "
        f"mean IoU over all frames and objects {np.mean(ious):.3f}"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `demo` (old flag spellings --model, --video-model, --stability-thresh are
    accepted, hidden from --help)."""
    p = sub.add_parser("demo", help="run the main job on bundled data with a bundled model")
    flags.add_out(p, metavar="DIR", help="output folder", required=False, default="demo_out")
    flags.add_checkpoint(
        p,
        required=False,
        default="sam_tiny_shapes",
        help="image model: bundled model name or checkpoint file",
        aliases=("--model",),
    )
    p.add_argument(
        "--video-checkpoint",
        default="sam2_tiny_shapes",
        metavar="CKPT",
        help="SAM 2 model (bundled name or checkpoint file) for the video part ('' skips it)",
    )
    flags.add_hidden_alias(p, "--video-model", "video_checkpoint")
    # The bundled tiny model's predicted IoUs run lower than SAM's: at SAM's own 0.88 / 0.95
    # it keeps few or none of the masks of the demo scene.
    flags.add_generator_flags(
        p.add_argument_group("segment-everything options"),
        ("points_per_side", "pred_iou_thresh", "stability_score_thresh"),
        points_per_side=16,
        pred_iou_thresh=0.7,
        stability_score_thresh=0.85,
    )
    flags.add_hidden_alias(p, "--stability-thresh", "stability_score_thresh", type=float)
    p.add_argument("--frames", type=int, default=16, help="frames of the demo video")
    p.set_defaults(run=run)
