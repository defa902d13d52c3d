"""COCO segmentations (polygons, uncompressed and compressed RLE) -> boolean masks.

The encoding and rasterisation are pycocotools' (`pip install 'sam-jax[data]'`), imported
only when a COCO or SA-1B mask is decoded, so the other readers work without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mask_utils() -> Any:
    """pycocotools.mask, or an ImportError saying which extra installs it."""
    try:
        from pycocotools import mask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading COCO / SA-1B masks needs pycocotools: pip install 'sam-jax[data]'"
        ) from e
    return mask


def decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """One COCO `segmentation` -> (height, width) bool.

    Accepts a list of polygons ([x0, y0, x1, y1, ...] in pixels; their union, as COCO
    rasterises them), an uncompressed RLE ({"size": [h, w], "counts": [ints]}, COCO's crowd
    annotations) or a compressed RLE ({"size": [h, w], "counts": "..."}, SA-1B and COCO
    results). An RLE whose size is not (height, width) is a ValueError naming `where`.
    """
    mu = mask_utils()
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # 3 points at least
        if len(polygons) != len(segmentation) or any(len(p) % 2 for p in polygons):
            raise ValueError(f"{where}: a polygon needs an even number of >= 6 coordinates")
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mu.merge(mu.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(
                f"{where}: mask size {size[0]}x{size[1]} (HxW) does not match its image "
                f"({height}x{width})"
            )
        if isinstance(segmentation["counts"], list):
            rle = mu.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise ValueError(
            f"{where}: a segmentation must be a list of polygons or an RLE dict with "
            f"'size' and 'counts', got {type(segmentation).__name__}"
        )
    try:
        return mu.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises bare exceptions on malformed counts
        raise ValueError(f"{where}: cannot decode the RLE ({e})") from e
