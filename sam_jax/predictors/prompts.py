"""Prompt validation shared by the image and video predictors.

Prompts are given in pixels of the original image: points (x, y) with one integer label
each, boxes x0, y0, x1, y1, and (image predictor only) low-resolution mask logits. Every
check raises a ValueError naming the argument as the caller spelled it, so that the image
predictor says `point_coords` and the video predictor `points`.

Labels: 1 foreground, 0 background, 2 and 3 the top-left and bottom-right corners of a box
given as points, and -1 a padding point that the decoder ignores (accepted only where the
caller allows it: the image predictor does, the video predictor does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LABELS = (0, 1, 2, 3)  # background, foreground, box top-left, box bottom-right
PADDING_LABEL = -1


@dataclass(frozen=True)
class Prompts:
    """Validated prompts, each with a leading prompt axis of size k (None where not given).

    coords (k, N, 2) float64 pixels (x, y); labels (k, N) int32; boxes (k, 4) float64
    x0, y0, x1, y1 with x1 >= x0 and y1 >= y0; masks (k, m, m) float32 logits. All values
    are finite. `batched` is True when the caller gave a prompt axis, so that outputs keep
    it; k is 1 when nothing was given.
    """

    coords: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    masks: np.ndarray | None
    k: int
    batched: bool


def check_points(
    point_coords: Any,
    point_labels: Any = None,
    *,
    allow_batch: bool = True,
    allow_padding: bool = True,
    coords_name: str = "point_coords",
    labels_name: str = "point_labels",
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Points and their labels -> (coords (K, N, 2) float64, labels (K, N) int32, batched).

    With allow_batch, coords are (N, 2) or (K, N, 2) and labels (N,) or (K, N) alike.
    Without it, coords may be any array whose last axis is 2 (a single (2,) point, (N, 2),
    (1, N, 2), ...) and labels any array of N values; K is 1. Labels default to all 1
    (foreground); -1 is accepted only with allow_padding.
    """
    coords = np.asarray(point_coords, np.float64)
    batched = False
    if not allow_batch:
        if coords.ndim == 0 or coords.shape[-1] != 2:
            raise ValueError(
                f"{coords_name} must be (N, 2) pixels (x, y); got shape {coords.shape}"
            )
        coords = coords.reshape(1, -1, 2)
    elif coords.ndim == 2 and coords.shape[-1] == 2:
        coords = coords[None]
    elif coords.ndim == 3 and coords.shape[-1] == 2:
        batched = True
    else:
        raise ValueError(
            f"{coords_name} must be (N, 2) or (K, N, 2) pixels (x, y); got shape {coords.shape}"
        )
    if coords.shape[1] == 0:
        raise ValueError(f"{coords_name} holds no points; pass None instead")
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{coords_name} contains NaN or infinite values")
    if point_labels is None:
        return coords, np.ones(coords.shape[:2], np.int32), batched
    raw = np.asarray(point_labels)
    if not allow_batch:
        lab = raw.reshape(1, -1)
    else:
        lab = raw[None] if raw.ndim == 1 and not batched else raw
    if lab.shape != coords.shape[:2]:
        want = coords.shape[:2] if batched else coords.shape[1:2]
        raise ValueError(
            f"{labels_name} must have one label per point, shape {tuple(want)}; "
            f"got shape {raw.shape}"
        )
    as_float = lab.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise ValueError(f"{labels_name} must be integers")
    labels = lab.astype(np.int32)
    allowed = (PADDING_LABEL, *LABELS) if allow_padding else LABELS
    bad = ~np.isin(labels, allowed)
    if bad.any():
        extra = "-1 padding, 2/3 box corners" if allow_padding else "2/3 box corners"
        raise ValueError(
            f"{labels_name} must be 1 (foreground) or 0 (background) ({extra} are also "
            f"accepted); got {sorted(set(labels[bad].tolist()))}"
        )
    return coords, labels, batched


def check_boxes(
    box: Any, *, allow_batch: bool = True, name: str = "box"
) -> tuple[np.ndarray, bool]:
    """A box -> (boxes (K, 4) float64, batched). With allow_batch, (4,) or (K, 4); without
    it, any array of 4 values (e.g. (4,), (1, 4) or (2, 2)) and K = 1."""
    boxes = np.asarray(box, np.float64)
    batched = False
    if not allow_batch:
        if boxes.size != 4:
            raise ValueError(f"{name} must be 4 values x0, y0, x1, y1; got shape {boxes.shape}")
        boxes = boxes.reshape(1, 4)
    elif boxes.shape == (4,):
        boxes = boxes[None]
    elif boxes.ndim == 2 and boxes.shape[1] == 4:
        batched = True
    else:
        raise ValueError(
            f"{name} must be (4,) or (K, 4) as x0, y0, x1, y1; got shape {boxes.shape}"
        )
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name} contains NaN or infinite values")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        i = int(np.argmax(flipped))
        which = f"{name} {i}" if batched else name
        raise ValueError(
            f"{which} is {boxes[i].tolist()}: expected x0, y0, x1, y1 with x1 >= x0 and y1 >= y0"
        )
    return boxes, batched


def check_mask_input(
    mask_input: Any, mask_size: int, *, name: str = "mask_input"
) -> tuple[np.ndarray, bool]:
    """Low-resolution logits (m, m), (1, m, m), (K, m, m) or (K, 1, m, m), m = mask_size ->
    (masks (K, m, m) float32, batched); batched when K > 1."""
    m = mask_size
    masks = np.asarray(mask_input, np.float32)
    if masks.shape == (m, m):
        masks = masks[None]
    elif masks.ndim == 4 and masks.shape[1:] == (1, m, m):
        masks = masks[:, 0]
    elif not (masks.ndim == 3 and masks.shape[1:] == (m, m)):
        raise ValueError(
            f"{name} must be low-resolution logits ({m}, {m}), (1, {m}, {m}) or "
            f"(K, {m}, {m}) (as returned in `logits`); got shape {masks.shape}"
        )
    if not np.all(np.isfinite(masks)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return masks, masks.shape[0] > 1


def check_prompts(
    point_coords: Any = None,
    point_labels: Any = None,
    box: Any = None,
    mask_input: Any = None,
    *,
    mask_size: int | None = None,
    allow_batch: bool = True,
    allow_padding: bool = True,
    coords_name: str = "point_coords",
    labels_name: str = "point_labels",
) -> Prompts:
    """Validate any combination of prompts and give them one leading prompt axis K.

    Shapes are those of `check_points`, `check_boxes` and `check_mask_input`; mask_input
    needs mask_size. The prompts given must agree on K, except that a single mask goes with
    a batch of K points or boxes (it is repeated). Labels without points are refused.
    """
    if point_coords is None and point_labels is not None:
        raise ValueError(f"{labels_name} given without {coords_name}")
    sizes: dict[str, int] = {}
    batched = False
    coords = labels = boxes = masks = None
    if point_coords is not None:
        coords, labels, b = check_points(
            point_coords,
            point_labels,
            allow_batch=allow_batch,
            allow_padding=allow_padding,
            coords_name=coords_name,
            labels_name=labels_name,
        )
        batched |= b
        sizes[coords_name] = coords.shape[0]
    if box is not None:
        boxes, b = check_boxes(box, allow_batch=allow_batch)
        batched |= b
        sizes["box"] = boxes.shape[0]
    if mask_input is not None:
        if mask_size is None:
            raise ValueError("mask_input is not accepted here")
        masks, b = check_mask_input(mask_input, mask_size)
        batched |= b
        sizes["mask_input"] = masks.shape[0]
    if len(set(sizes.values())) > 1 and sizes.get("mask_input") == 1:
        if len(set(sizes.values()) - {1}) == 1:  # one mask for a batch of prompts
            sizes["mask_input"] = max(sizes.values())
            masks = np.repeat(masks, sizes["mask_input"], axis=0)
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{n}: {s}" for n, s in sizes.items())
        raise ValueError(
            f"the prompts disagree on the number of prompts K ({desc}); give {coords_name} "
            f"(K, N, 2), {labels_name} (K, N), box (K, 4) and mask_input (K, m, m) alike"
        )
    k = next(iter(sizes.values()), 1)
    return Prompts(coords, labels, boxes, masks, k, batched)
