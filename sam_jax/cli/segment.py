"""`sam-jax segment`: masks for an image file from point / box prompts, or of everything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.cli import flags
from sam_jax.cli.images import draw_prompts, overlay, overlay_path, read_image, save_png

DESCRIPTION = """\
Segment IMAGE with a SAM / MobileSAM / SAM 2 checkpoint.

Prompted mode (--point and/or --box): OUT is the mask as an 8-bit grayscale PNG of the
image's size (255 inside, 0 outside). With a single point and no box the best of the three
candidate masks is kept; otherwise one mask is predicted.

Everything mode (--everything): OUT is a label PNG (0 = no mask, i = i-th mask; 16-bit when
there are more than 255 masks; larger masks are painted first, so smaller ones stay on top).

Both modes also write an overlay picture next to OUT: OUT's name with the suffix
'_overlay.png' (out.png -> out_overlay.png).
"""


def _check_request(args: argparse.Namespace) -> list[tuple[float, float, int]]:
    """The clicks; ValueError when the flags ask for nothing or for both modes."""
    if Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path; got {args.out!r}")
    points = args.point or []
    if args.everything and (points or args.box is not None):
        raise ValueError("--everything segments the whole image; drop --point/--box or it")
    if not args.everything and not points and args.box is None:
        raise ValueError(
            "nothing to segment: give --point X,Y[,LABEL] and/or --box, or --everything"
        )
    return points


def _warn_outside(points: list[tuple[float, float, int]], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    for x, y, _ in points:
        if not (0 <= x < w and 0 <= y < h):
            print(
                f"sam-jax: warning: point ({x:g}, {y:g}) lies outside the {w}x{h} image",
                file=sys.stderr,
            )


def _everything(args: argparse.Namespace, predictor: Any, image: np.ndarray, out: Path):
    """Write the label PNG; return the overlay picture and a summary."""
    from PIL import Image

    options = {name: getattr(args, name) for name in flags.GENERATOR_FLAGS}
    records = predictor.generate(image, **options, progress=not args.quiet)
    records = sorted(records, key=lambda r: r["area"], reverse=True)
    labels = np.zeros(image.shape[:2], np.uint16 if len(records) > 255 else np.uint8)
    for i, r in enumerate(records):
        labels[r["segmentation"]] = i + 1
    save_png(labels, out)
    picture = Image.fromarray(overlay(image, [r["segmentation"] for r in records]))
    return picture, f"{len(records)} masks"


def _prompted(args: argparse.Namespace, predictor: Any, image: np.ndarray, out: Path, points):
    """Write the mask PNG; return the overlay picture (prompts drawn) and a summary."""
    from PIL import Image

    predictor.set_image(image)
    coords = np.array([p[:2] for p in points], np.float32).reshape(-1, 2)
    labels = np.array([p[2] for p in points], np.int32)
    masks, scores, _ = predictor.predict(
        point_coords=coords if points else None,
        point_labels=labels if points else None,
        box=None if args.box is None else np.array(args.box, np.float32),
        multimask_output=len(points) == 1 and args.box is None,
    )
    best = int(np.argmax(scores))
    mask = masks[best]
    save_png(mask.astype(np.uint8) * 255, out)
    picture = Image.fromarray(overlay(image, [mask]))
    draw_prompts(picture, points, args.box)
    return picture, f"mask of {int(mask.sum())} px, predicted IoU {float(scores[best]):.3f}"


def run(args: argparse.Namespace) -> None:
    """Segment args.image as the flags say; write args.out and its overlay."""
    points = _check_request(args)
    image = read_image(args.image)
    _warn_outside(points, image)

    from sam_jax import Predictor
    from sam_jax.checkpoint import load

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    say(f"loading {args.checkpoint}")
    model, params = load(args.checkpoint, variant=args.variant, image_size=args.image_size)
    predictor = Predictor(model, params)
    size = f"{model.config.name}, {model.config.image_size} px input"
    out = Path(args.out)
    if args.everything:
        say(f"segmenting everything ({size})")
        picture, summary = _everything(args, predictor, image, out)
    else:
        say(f"encoding the image ({size})")
        picture, summary = _prompted(args, predictor, image, out, points)
    over = overlay_path(out)
    picture.save(over, format="PNG")
    print(f"{out} ({summary}), overlay {over}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `segment` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "segment",
        help="segment an image from --point/--box prompts or --everything; writes OUT.png "
        "and OUT_overlay.png",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="image file (any format Pillow reads)")
    flags.add_checkpoint(p)
    flags.add_out(
        p, metavar="OUT.png", help="output mask PNG; the overlay goes to OUT_overlay.png beside it"
    )
    flags.add_prompts(p)
    p.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    flags.add_variant(p)
    flags.add_image_size(p)
    flags.add_generator_flags(p.add_argument_group("--everything options"))
    flags.add_quiet(p)
    p.set_defaults(run=run)
