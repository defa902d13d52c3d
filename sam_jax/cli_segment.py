"""`sam-jax segment`: masks for an image file from point / box prompts, or of everything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

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


def _numbers(text: str, name: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"{name} must be {' or '.join(_FORMATS[name])} with finite numbers; got {text!r}"
        )
    return values


_FORMATS = {"--point": ("X,Y", "X,Y,LABEL"), "--box": ("X0,Y0,X1,Y1",)}


def parse_point(text: str) -> tuple[float, float, int]:
    values = _numbers(text, "--point", (2, 3))
    label = 1 if len(values) == 2 else values[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (foreground) or 0 (background); got {text!r}"
        )
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(text, "--box", (4,))
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"--box must be X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0; got {text!r}"
        )
    return x0, y0, x1, y1


def overlay_path(out: Path) -> Path:
    return out.with_name(out.stem + "_overlay.png")


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (EXIF orientation applied, alpha dropped)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 256, (max(n, 1), 3)).astype(np.float32)


def overlay(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Tint each mask of `masks` (H, W bool) over the image with its own colour."""
    out = image.astype(np.float32)
    for mask, colour in zip(masks, _palette(len(masks)), strict=False):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_prompts(picture, points, box) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    r = max(3, round(max(picture.size) / 200))
    for x, y, label in points:
        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(box), outline=(0, 128, 255), width=max(2, r // 2))


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def run(args: argparse.Namespace) -> None:
    from PIL import Image

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path; got {args.out!r}")
    points = args.point or []
    if args.everything and (points or args.box is not None):
        raise ValueError("--everything segments the whole image; drop --point/--box or it")
    if not args.everything and not points and args.box is None:
        raise ValueError(
            "nothing to segment: give --point X,Y[,LABEL] and/or --box, or --everything"
        )
    image = read_image(Path(args.image))
    h, w = image.shape[:2]
    for x, y, _ in points:
        if not (0 <= x < w and 0 <= y < h):
            print(
                f"sam-jax: warning: point ({x:g}, {y:g}) lies outside the {w}x{h} image",
                file=sys.stderr,
            )

    from sam_jax.checkpoint import load
    from sam_jax.predictor import Predictor

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    say(f"loading {args.checkpoint}")
    model, params = load(args.checkpoint, variant=args.variant, image_size=args.image_size)
    predictor = Predictor(model, params)
    if args.everything:
        say(f"segmenting everything ({model.config.name}, {model.config.image_size} px input)")
        records = predictor.generate(
            image,
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            crop_n_layers=args.crop_n_layers,
            min_mask_region_area=args.min_mask_region_area,
            progress=not args.quiet,
        )
        records = sorted(records, key=lambda r: r["area"], reverse=True)
        labels = np.zeros((h, w), np.uint16 if len(records) > 255 else np.uint8)
        for i, r in enumerate(records):
            labels[r["segmentation"]] = i + 1
        _save_png(labels, out)
        picture = Image.fromarray(overlay(image, [r["segmentation"] for r in records]))
        summary = f"{len(records)} masks"
    else:
        say(f"encoding the image ({model.config.name}, {model.config.image_size} px input)")
        predictor.set_image(image)
        coords = np.array([p[:2] for p in points], np.float32).reshape(-1, 2)
        labels = np.array([p[2] for p in points], np.int32)
        multimask = len(points) == 1 and args.box is None
        masks, scores, _ = predictor.predict(
            point_coords=coords if points else None,
            point_labels=labels if points else None,
            box=None if args.box is None else np.array(args.box, np.float32),
            multimask_output=multimask,
        )
        best = int(np.argmax(scores))
        mask = masks[best]
        _save_png(mask.astype(np.uint8) * 255, out)
        picture = Image.fromarray(overlay(image, [mask]))
        _draw_prompts(picture, points, args.box)
        summary = f"mask of {int(mask.sum())} px, predicted IoU {float(scores[best]):.3f}"
    over = overlay_path(out)
    picture.save(over, format="PNG")
    print(f"{out} ({summary}), overlay {over}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image from --point/--box prompts or --everything; writes OUT.png "
        "and OUT_overlay.png",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="image file (any format Pillow reads)")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="a .pt/.pth (Meta or ultralytics) or sam_jax .safetensors checkpoint",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.png",
        help="output mask PNG; the overlay goes to OUT_overlay.png beside it",
    )
    p.add_argument(
        "--point",
        action="append",
        type=parse_point,
        metavar="X,Y[,LABEL]",
        help="a click in image pixels; LABEL 1 foreground (default) or 0 background; repeatable",
    )
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box in image pixels")
    p.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    p.add_argument("--variant", default=None, help="override the detected model variant")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="run the model at an S x S input instead of its own (faster, coarser)",
    )
    g = p.add_argument_group("--everything options")
    g.add_argument(
        "--points-per-side", type=int, default=32, metavar="N", help="grid points per side (32)"
    )
    g.add_argument(
        "--points-per-batch",
        type=int,
        default=64,
        metavar="N",
        help="prompts per decoder batch (64)",
    )
    g.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        metavar="T",
        help="keep masks whose predicted IoU > T (0.88)",
    )
    g.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        metavar="T",
        help="keep masks whose stability > T (0.95)",
    )
    g.add_argument(
        "--crop-n-layers", type=int, default=0, metavar="N", help="extra crop layers (0)"
    )
    g.add_argument(
        "--min-mask-region-area",
        type=int,
        default=0,
        metavar="A",
        help="fill holes and drop islands smaller than A pixels (0: off)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages or bar")
    p.set_defaults(run=run)
