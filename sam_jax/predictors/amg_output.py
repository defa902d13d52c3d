"""Segment-everything masks in the output modes of Meta's automatic mask generators.

- "binary_mask": the (H, W) bool array itself.
- "uncompressed_rle": {"size": [H, W], "counts": [int, ...]}, the lengths of the runs of
  equal pixels when the mask is read column by column (column-major, COCO's order),
  starting with a run of 0s (of length 0 when the first pixel is set). Plain JSON.
- "coco_rle": {"size": [H, W], "counts": str}, COCO's compressed RLE, the dict that
  `pycocotools.mask.decode` turns back into the mask. Needs pycocotools
  (`pip install 'sam-jax[data]'`), imported only when this mode is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def check_output_mode(mode: str) -> str:
    """`mode` if it is one of OUTPUT_MODES, else a ValueError listing them. "coco_rle"
    also checks that pycocotools can be imported (ImportError naming the extra)."""
    if mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {mode!r}")
    if mode == "coco_rle":
        coco_mask_utils()
    return mode


def coco_mask_utils() -> Any:
    """pycocotools.mask, or an ImportError saying which extra installs it."""
    from sam_jax.data.rle import mask_utils

    try:
        return mask_utils()
    except ImportError as e:
        raise ImportError(
            "output_mode 'coco_rle' needs pycocotools: pip install 'sam-jax[data]' (or use "
            "'uncompressed_rle', which needs nothing)"
        ) from e


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> uncompressed RLE {"size": [H, W], "counts": [int, ...]} (see the
    module docstring); the counts sum to H * W."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W); got shape {mask.shape}")
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts.tolist()}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool; a ValueError when the counts do not cover H * W."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], np.int64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE counts must be non-negative run lengths summing to {h} x {w}")
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, counts).reshape(w, h).T


def rle_area(rle: dict[str, Any]) -> int:
    """Pixels set in an uncompressed RLE (the odd runs)."""
    return int(sum(rle["counts"][1::2]))


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO compressed RLE with `counts` a str (JSON-ready)."""
    mu = coco_mask_utils()
    rle = mu.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_mask(mask: np.ndarray, mode: str) -> Any:
    """One (H, W) bool mask in output mode `mode` (one of OUTPUT_MODES)."""
    if mode == "binary_mask":
        return np.asarray(mask, bool)
    if mode == "uncompressed_rle":
        return mask_to_rle(mask)
    if mode == "coco_rle":
        return mask_to_coco_rle(mask)
    raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {mode!r}")


def format_records(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Records whose "segmentation" is an (H, W) bool mask -> new records with it in `mode`
    (the other fields are shared, not copied)."""
    check_output_mode(mode)
    return [{**r, "segmentation": encode_mask(r["segmentation"], mode)} for r in records]
