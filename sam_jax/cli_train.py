"""`sam-jax train-shapes` and `sam-jax eval-shapes`: the small bundled models, from scratch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _train(args: argparse.Namespace) -> None:
    from sam_jax.train.recipes import evaluate_sam, train_sam

    model, variables, log = train_sam(
        args.variant,
        steps=args.steps,
        batch_size=args.batch_size,
        num_scenes=args.num_scenes,
        learning_rate=args.lr,
        seed=args.seed,
        out=args.out,
        init_from=args.init_from,
    )
    if args.log:
        Path(args.log).write_text(json.dumps(log, indent=1))
    last = log[-1]
    print(
        f"step {last['step']}: loss {last['loss']:.4f}, train IoU (first prompt) "
        f"{last['iou_first']:.3f}, after a correction {last['iou_last']:.3f}"
    )
    print(f"held-out one-click mIoU: {evaluate_sam(model, variables, args.eval_images):.4f}")
    print(f"saved {args.out}")


def _eval(args: argparse.Namespace) -> None:
    from sam_jax.checkpoint import load
    from sam_jax.train.recipes import evaluate_sam

    model, variables = load(args.checkpoint)
    miou = evaluate_sam(model, variables, args.images)
    print(f"{args.checkpoint}: held-out one-click mIoU over {args.images} scenes = {miou:.4f}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-shapes", help="train a small SAM from scratch on synthetic shapes")
    p.add_argument("--variant", default="sam_tiny_shapes")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-scenes", type=int, default=800, help="pre-drawn training scenes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="continue from this checkpoint")
    p.add_argument("--eval-images", type=int, default=100)
    p.add_argument("--log", default=None, help="write the training curve (JSON) here")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(run=_train)

    e = sub.add_parser("eval-shapes", help="one-click mIoU of a SAM model on held-out shapes")
    e.add_argument("--checkpoint", default="sam_tiny_shapes", help="file or bundled name")
    e.add_argument("--images", type=int, default=100)
    e.set_defaults(run=_eval)
