"""Reading images and instance-id PNGs from disk, with errors that name the file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def natural_key(name: str) -> tuple:
    """Sort key putting "frame2" before "frame10"."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def list_images(folder: Path) -> list[Path]:
    """The image files directly in folder, in natural name order."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)]
    return [folder / n for n in sorted(names, key=natural_key)]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (greyscale, palette and RGBA converted; the
    stored pixel grid is kept: no EXIF rotation, as the annotations refer to it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e


def read_ids(path: Path) -> np.ndarray:
    """(H, W) int64 of an instance-id PNG: the palette index of a palette PNG, else the
    value of a single-channel (8- or 16-bit) PNG. Colour PNGs are refused: their colours
    are not ids."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(
                    f"{path}: a mask must be a palette or single-channel PNG of object ids "
                    f"(0 = background), got a {im.mode} image"
                )
            return np.asarray(im).astype(np.int64)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the mask ({e})") from e


def check_hw(path: Path, got: tuple[int, ...], image_path: Path, want: tuple[int, int]) -> None:
    """Raise a ValueError naming both files unless a mask's (H, W) is its image's."""
    if tuple(got) != tuple(want):
        raise ValueError(
            f"{path}: mask size {got[0]}x{got[1]} (HxW) does not match its image "
            f"{image_path} ({want[0]}x{want[1]})"
        )
