"""`sam-jax train-shapes` and `sam-jax eval-shapes`: the small bundled models, from scratch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train(args: argparse.Namespace) -> None:
    from sam_jax.train.recipes import train_sam

    model, variables, log = train_sam(
        args.variant,
        steps=args.steps,
        batch_size=args.batch_size,
        num_scenes=args.num_scenes,
        learning_rate=args.lr,
        seed=args.seed,
        out=args.out,
        init_from=args.init_from,
        clip_len=args.clip_len,
        half=args.half,
        objects_per_image=args.objects_per_image,
        num_corrections=args.corrections,
        box_prob=args.box_prob,
        patch_size=args.patch_size,
        trainable=args.trainable,
        iou_weight=args.iou_weight,
        image_size=args.image_size,
        single_mask_tracking=args.single_mask_tracking,
        max_speed=args.max_speed,
        reseat=args.reseat_memory,
        recent_gain=args.recent_memory_gain,
        num_maskmem=args.num_maskmem,
    )
    if args.log:
        Path(args.log).write_text(json.dumps(log, indent=1))
    last = log[-1]
    print(
        f"step {last['step']}: loss {last['loss']:.4f}, train IoU (first prompt) "
        f"{last['iou_first']:.3f}, after a correction {last['iou_last']:.3f}"
    )
    if "iou_tracked" in last:
        print(f"train IoU on tracked frames {last['iou_tracked']:.3f}")
    _report(args.out, model, variables, args.eval_images, args.eval_videos)
    print(f"saved {args.out}")


def _report(
    name: str,
    model,
    variables,
    images: int,
    videos: int,
    max_speed: float = 0.03,
    validation: bool = False,
) -> None:
    from sam_jax.config import Sam2Config
    from sam_jax.train.recipes import (
        HELDOUT_SEED0,
        VALIDATION_SEED0,
        evaluate_sam,
        evaluate_tracking,
    )

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
    _report(
        args.checkpoint,
        model,
        variables,
        args.images,
        args.videos,
        max_speed=args.max_speed,
        validation=args.validation,
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-shapes", help="train a small SAM or SAM 2 from scratch on synthetic shapes"
    )
    p.add_argument("--variant", default="sam_tiny_shapes", help="or sam2_tiny_shapes")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--num-scenes", type=int, default=800, help="pre-drawn training scenes (SAM 2: videos)"
    )
    p.add_argument(
        "--clip-len",
        type=int,
        default=8,
        help="SAM 2: frames per training clip; 1 trains on single scenes (image mode)",
    )
    p.add_argument(
        "--objects-per-image",
        type=int,
        default=4,
        help="objects prompted per encoded scene or clip",
    )
    p.add_argument("--corrections", type=int, default=1, help="corrective clicks per prompt")
    p.add_argument(
        "--box-prob", type=float, default=0.5, help="scenes: chance the first prompt is a box"
    )
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="SAM: first give the ViT these finer patches (weights resized, named --variant)",
    )
    p.add_argument(
        "--trainable",
        default="all",
        choices=[
            "all",
            "all_but_encoder",
            "all_but_encoder_positional",
            "prompt_decoder",
            "decoder",
        ],
        help="what trains; the rest stays frozen",
    )
    p.add_argument(
        "--iou-weight", type=float, default=1.0, help="weight of the IoU head's MSE in the loss"
    )
    p.add_argument("--image-size", type=int, default=None, help="train at this input size (square)")
    tracking = p.add_mutually_exclusive_group()
    tracking.add_argument(
        "--single-mask-tracking",
        action="store_const",
        const=True,
        dest="single_mask_tracking",
        help="SAM 2: tracked frames give the single-mask output (multimask_output_for_tracking "
        "False), trained as such; saved with the model",
    )
    tracking.add_argument(
        "--multimask-tracking",
        action="store_const",
        const=False,
        dest="single_mask_tracking",
        help="SAM 2: tracked frames give the best of three masks (the reference's default)",
    )
    p.add_argument(
        "--max-speed",
        type=float,
        default=0.03,
        help="SAM 2: the training videos' largest motion per frame and axis, in image sizes",
    )
    p.add_argument(
        "--reseat-memory",
        action="store_true",
        help="SAM 2: first re-seat the memory path (sam_jax/train/reseat_memory.py); train it "
        "with --trainable all_but_encoder_positional",
    )
    p.add_argument(
        "--recent-memory-gain",
        type=float,
        default=None,
        help="SAM 2, re-seated: weigh the most recent frame's memory by this factor "
        "(weigh_recent_memory in sam_jax/train/reseat_memory.py)",
    )
    p.add_argument(
        "--num-maskmem",
        type=int,
        default=None,
        help="SAM 2: remember this many frames (conditioning + recent) instead of the "
        "model's own (shorten_memory in sam_jax/tracking/memory_window.py)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="continue from this checkpoint")
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--eval-videos", type=int, default=20)
    p.add_argument("--log", default=None, help="write the training curve (JSON) here")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.set_defaults(run=_train)

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
