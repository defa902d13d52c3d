"""`sam-jax train-shapes` and `sam-jax eval-shapes`: the small bundled models, from scratch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sam_jax.projects.shapes import options


def _train(args: argparse.Namespace) -> None:
    from sam_jax.projects.shapes.recipe import train_sam

    model, variables, log = train_sam(options.from_args(args))
    if args.log:
        Path(args.log).write_text(json.dumps(log, indent=1))
    last = log[-1]
    print(
        f"step {last['step']}: loss {last['loss']:.4f}, train IoU (first prompt) "
        f"{last['iou_first']:.3f}, after a correction {last['iou_last']:.3f}"
    )
    if "iou_tracked" in last:
        print(f"train IoU on tracked frames {last['iou_tracked']:.3f}")
    report(args.out, model, variables, args.eval_images, args.eval_videos)
    print(f"saved {args.out}")


def report(
    name: str,
    model: Any,
    variables: Any,
    images: int,
    videos: int,
    max_speed: float = 0.03,
    validation: bool = False,
) -> None:
    """Print the held-out one-click mIoU over `images` scenes and, for SAM 2, the tracking
    mIoU over `videos` videos (the validation videos if `validation`)."""
    from sam_jax.config import Sam2Config
    from sam_jax.projects.shapes.data import HELDOUT_SEED0, VALIDATION_SEED0
    from sam_jax.projects.shapes.evaluate import evaluate_sam, evaluate_tracking

    if images > 0:
        miou = evaluate_sam(model, variables, images)
        print(f"{name}: held-out one-click mIoU over {images} scenes = {miou:.4f}")
    if isinstance(model.config, Sam2Config) and videos > 0:
        seed0 = VALIDATION_SEED0 if validation else HELDOUT_SEED0
        res = evaluate_tracking(model, variables, videos, max_speed=max_speed, seed0=seed0)
        which = "validation" if validation else "held-out"
        print(
            f"{name}: {which} tracking mIoU over {videos} videos of 16 frames (max speed "
            f"{max_speed:g}), one click on frame 0 = {res['miou']:.4f} "
            f"(frames 1-15: {res['miou_after_first']:.4f})"
        )
        print("  per frame: " + " ".join(f"{x:.3f}" for x in res["per_frame"]))


def _eval(args: argparse.Namespace) -> None:
    from sam_jax.checkpoint import load

    model, variables = load(args.checkpoint)
    report(
        args.checkpoint,
        model,
        variables,
        args.images,
        args.videos,
        max_speed=args.max_speed,
        validation=args.validation,
    )


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """`train-shapes`: the flags of `RecipeOptions`, and what to evaluate and log after."""
    p = sub.add_parser(
        "train-shapes", help="train a small SAM or SAM 2 from scratch on synthetic shapes"
    )
    options.add_arguments(p)
    p.add_argument("--eval-images", type=int, default=100, help="held-out scenes to score")
    p.add_argument("--eval-videos", type=int, default=20, help="SAM 2: held-out videos to track")
    p.add_argument("--log", default=None, help="write the training curve (JSON) here")
    p.set_defaults(run=_train)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """`eval-shapes`: held-out one-click and tracking mIoU of a checkpoint."""
    e = sub.add_parser(
        "eval-shapes", help="held-out one-click (and SAM 2: tracking) mIoU on synthetic shapes"
    )
    e.add_argument("--checkpoint", default="sam_tiny_shapes", help="file or bundled name")
    e.add_argument("--images", type=int, default=100)
    e.add_argument("--videos", type=int, default=20)
    e.add_argument(
        "--max-speed",
        type=float,
        default=0.03,
        help="SAM 2: the videos' motion bound, image sizes per frame (0: still)",
    )
    e.add_argument(
        "--validation",
        action="store_true",
        help="SAM 2: track the validation videos (for choosing settings) instead of held-out",
    )
    e.set_defaults(run=_eval)
