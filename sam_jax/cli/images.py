"""Image files for the `sam-jax` sub-commands: finding, reading and writing them (every
write atomic: a file is complete or absent), label pictures and mask overlays."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec: str) -> tuple[list[Path], bool]:
    """The image files `spec` names and whether it names a set: (paths, many).

    A file gives ([it], False); a folder its files with an IMAGE_SUFFIXES suffix and a glob
    pattern (with * ? or [) its matching files, sorted by name, with many True.
    FileNotFoundError for a missing path, ValueError for a set without images."""
    path = Path(spec)
    if path.is_file():
        return [path], False
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise ValueError(
                f"no image files in folder {spec} (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        return found, True
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not found:
            raise ValueError(f"no files match {spec}")
        return found, True
    raise FileNotFoundError(f"no such image file: {path}")


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (EXIF orientation applied, alpha dropped).

    FileNotFoundError when there is no such file; ValueError naming the file when Pillow
    cannot read it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, ImportError) as e:
        # ImportError: a decoder plugin that Pillow (or a package patching it, as
        # ultralytics does for HEIF) tries to load for an unidentified file is missing.
        why = f"not a format Pillow reads ({e})" if isinstance(e, ImportError) else e
        raise ValueError(f"cannot read image {path}: {why}") from e


def save_picture(picture: Any, path: Path, fmt: str = "PNG", **options: Any) -> None:
    """Write a PIL image atomically in format `fmt`, creating its folder; `options` go to
    PIL's save (e.g. save_all=True for an animation)."""
    from sam_jax.checkpoint import atomic_write

    atomic_write(path, lambda tmp: picture.save(tmp, format=fmt, **options))


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a (H, W) or (H, W, 3) array as a PNG file, atomically, creating its folder."""
    from PIL import Image

    save_picture(Image.fromarray(array), path)


def label_image(
    shape: tuple[int, int], masks: Sequence[np.ndarray], values: Sequence[int]
) -> np.ndarray:
    """(H, W) picture of (H, W) bool masks: 0 outside them, values[i] inside masks[i];
    where masks overlap the smaller one wins. uint8 when every value fits, else uint16."""
    dtype = np.uint8 if max(values, default=0) <= 255 else np.uint16
    labels = np.zeros(shape, dtype)
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):  # largest first
        labels[masks[i]] = values[i]
    return labels


def overlay_path(out: Path) -> Path:
    """Where the overlay picture of the output `out` goes: out.png -> out_overlay.png."""
    return out.with_name(out.stem + "_overlay.png")


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 256, (max(n, 1), 3)).astype(np.float32)


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """The (H, W, 3) uint8 image with each (H, W) bool mask tinted in its own colour (the
    same colours in the same order on every call)."""
    out = image.astype(np.float32)
    for mask, colour in zip(masks, _palette(len(masks)), strict=False):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_prompts(
    picture: Any,
    points: Sequence[tuple[float, float, int]] | np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray | None,
) -> None:
    """Draw clicks (x, y, label) (green foreground, red background) and xyxy boxes onto a
    PIL image in place."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    r = max(3, round(max(picture.size) / 200))
    for x, y, label in points:
        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    for box in [] if boxes is None else boxes:
        draw.rectangle([float(v) for v in box], outline=(0, 128, 255), width=max(2, r // 2))


def draw_detections(
    picture: Any, boxes: Sequence[Sequence[float]] | np.ndarray, captions: Sequence[str]
) -> None:
    """Draw detected xyxy boxes onto a PIL image in place, each in the colour `overlay`
    gives the mask of the same index, with its caption above its top-left corner."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 400))
    for box, caption, colour in zip(boxes, captions, _palette(len(boxes)), strict=False):
        x0, y0, x1, y1 = (float(v) for v in box)
        rgb = tuple(int(c) for c in colour)
        draw.rectangle([x0, y0, x1, y1], outline=rgb, width=width)
        left, top, right, bottom = draw.textbbox((x0, y0), caption)
        lift = bottom - top + 2 if y0 >= bottom - top + 2 else 0  # inside when no room above
        draw.rectangle([left, top - lift, right, bottom - lift], fill=rgb)
        draw.text((x0, y0 - lift), caption, fill=(0, 0, 0))
