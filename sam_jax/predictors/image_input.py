"""What the image predictors accept as an image: arrays, PIL images and file paths, turned
into (H, W, 3) uint8 RGB, and the letterboxed model input."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sam_jax.transforms import letterbox, letterbox_geometry

_READ_FIRST = 'read the file first, e.g. with PIL: np.asarray(Image.open(path).convert("RGB"))'


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Check an image and return it as a contiguous (H, W, 3) uint8 RGB array.

    Accepted: (H, W, 3) uint8 RGB; (H, W) or (H, W, 1) uint8 grayscale, repeated to RGB.
    Refused with a ValueError: file paths (read the file first), other dtypes (no guess at a
    value range), RGBA (drop or composite the alpha channel yourself), other channel counts
    and empty images.
    """
    if image is None:
        raise ValueError("image is None; expected an (H, W, 3) uint8 RGB array")
    if isinstance(image, (str, bytes, os.PathLike)):
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array (or (H, W) grayscale), not a file "
            f"path ({os.fsdecode(image)!r}); {_READ_FIRST}"
        )
    arr = np.asarray(image)
    if arr.dtype.kind in "USO":
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array (or (H, W) grayscale); got an array "
            f"of dtype {arr.dtype}. For a file, {_READ_FIRST}"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (values 0..255); got dtype {arr.dtype}. Convert it, e.g. "
            "np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grayscale; got shape {arr.shape}")
    c = arr.shape[2]
    if c == 4:
        raise ValueError(
            "image has 4 channels (RGBA?); pass RGB: drop the alpha channel with "
            "image[..., :3] or composite it onto a background first"
        )
    if c not in (1, 3):
        raise ValueError(f"image must have 3 (RGB) or 1 (grayscale) channels; got {c}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty: shape {arr.shape}")
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def load_image(image: Any) -> np.ndarray:
    """An image for `Predictor.set_image` -> (H, W, 3) uint8 RGB.

    Accepted: what `as_rgb_uint8` accepts; a PIL image (any mode, converted to RGB as it
    is); a path (str, bytes or os.PathLike) to an image file, read with Pillow, turned
    upright by its EXIF orientation (as `sam-jax segment` reads it) and converted to RGB.
    A path that does not exist, is not a file or cannot be read as an image raises a
    ValueError naming it.
    """
    if isinstance(image, (str, bytes, os.PathLike)):
        return as_rgb_uint8(_read_image_file(os.fsdecode(image)))
    if type(image).__module__.startswith("PIL."):
        from PIL import Image

        if isinstance(image, Image.Image):
            return as_rgb_uint8(np.asarray(image.convert("RGB")))
    return as_rgb_uint8(image)


def _read_image_file(path: str) -> np.ndarray:
    from PIL import Image, ImageOps

    if not os.path.exists(path):
        raise ValueError(f"no such image file: {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"image path is not a file: {path!r}")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ImportError) as e:  # ImportError: a missing Pillow decoder plugin
        raise ValueError(f"cannot read {path!r} as an image: {e}") from e


def prepare_image(image: Any, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """image -> (rgb (H, W, 3) uint8, letterboxed (S, S, 3) uint8, ratio r), S = size; a
    pixel (x, y) of the image is at (x r, y r) in the letterboxed frame."""
    rgb = as_rgb_uint8(image)
    r, _, _ = letterbox_geometry(*rgb.shape[:2], size)
    return rgb, letterbox(rgb, size), r
