"""Image files for the `sam-jax` sub-commands: reading, writing and mask overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a (H, W) or (H, W, 3) array as a PNG file, creating its folder."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


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
    points: Sequence[tuple[float, float, int]],
    box: Sequence[float] | None,
) -> None:
    """Draw clicks (green foreground, red background) and a box onto a PIL image in place."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    r = max(3, round(max(picture.size) / 200))
    for x, y, label in points:
        colour = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(box), outline=(0, 128, 255), width=max(2, r // 2))
