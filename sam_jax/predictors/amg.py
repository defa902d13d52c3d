"""Segment-everything helpers in numpy: point grids, crop boxes, box NMS, boxes of masks,
connected components and small-region removal (with the NMS that follows it). No OpenCV,
SciPy or torchvision needed.

Boxes are xyxy with inclusive pixel indices (x1, y1 is the last covered pixel), areas are
(x1 - x0) * (y1 - y0), as in the reference implementation.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) in [0, 1]: cell centres of an n x n grid, row by row."""
    if n_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1; got {n_per_side}")
    side = np.linspace(0.5 / n_per_side, 1 - 0.5 / n_per_side, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, downscale_factor: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer i has int(n / downscale_factor**i) points per side."""
    return [
        build_point_grid(int(n_per_side / downscale_factor**layer)) for layer in range(n_layers + 1)
    ]


def generate_crop_boxes(
    size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (xyxy, exclusive ends) over an image of (height, width) and their layer.

    Layer 0 is the whole image; layer i >= 1 is a 2^i x 2^i grid of overlapping crops whose
    overlap is overlap_ratio * short side * 2 / 2^i pixels.
    """
    h, w = size
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * 2 / n)
        cw = math.ceil((overlap * (n - 1) + w) / n)
        ch = math.ceil((overlap * (n - 1) + h) / n)
        xs = [int((cw - overlap) * i) for i in range(n)]
        ys = [int((ch - overlap) * i) for i in range(n)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + cw, w), min(y0 + ch, h)])
            layers.append(layer)
    return boxes, layers


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy boxes -> (N, M) IoU, areas without the +1 convention. Computed
    in float32, in the order torchvision's NMS uses, so that ties at the threshold agree."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, np.float32(0))
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, np.float32(0))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, by decreasing score (ties: first index).
    A box is dropped when its IoU with a kept, higher-scored box exceeds iou_threshold."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= iou[i].astype(np.float64) > iou_threshold
    return np.asarray(keep, np.int64)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., 4) xyxy of the covered pixels (inclusive); zeros if empty."""
    masks = np.asarray(masks, bool)
    h, w = masks.shape[-2:]
    rows = masks.any(axis=-1)
    cols = masks.any(axis=-2)
    y1 = np.where(rows, np.arange(h), -1).max(axis=-1)
    y0 = np.where(rows, np.arange(h), h).min(axis=-1)
    x1 = np.where(cols, np.arange(w), -1).max(axis=-1)
    x0 = np.where(cols, np.arange(w), w).min(axis=-1)
    boxes = np.stack([x0, y0, x1, y1], axis=-1)
    empty = ~rows.any(axis=-1)
    return np.where(empty[..., None], 0, boxes).astype(np.int64)


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> np.ndarray:
    """True for boxes (image coordinates) within atol of a crop edge that is not an edge of
    the image itself: such masks are likely cut by the crop."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box, np.float64)[None]
    orig = np.asarray(orig_box, np.float64)[None]
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - orig) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True pixels, in raster order: (row, start, end exclusive)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # +1 at a run start, -1 after its end
    rs, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return rs, starts, ends


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a 2-D bool mask.

    Returns (labels, sizes): labels (H, W) int32 with 0 for background and 1..n numbered as
    OpenCV numbers them (by the first 2x2 block, in raster order, holding a pixel of the
    component); sizes (n + 1,) pixel counts (sizes[0] is the background). Works on
    horizontal runs joined by a small union-find, so its cost grows with the number of runs,
    not of pixels.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    rows, starts, ends = _runs(mask)
    n = len(rows)
    if n == 0:
        return np.zeros((h, w), np.int32), np.array([h * w], np.int64)
    # Runs in consecutive rows touch (8-connectivity) when start_a <= end_b and start_b <= end_a
    # with inclusive ends, i.e. a.start < b.end + 1 and b.start < a.end + 1 here.
    key = np.int64(w + 2)
    start_key = rows * key + starts
    end_key = rows * key + ends
    below = rows > 0
    b_idx = np.nonzero(below)[0]
    prev_row = rows[b_idx] - 1
    first = np.searchsorted(end_key, prev_row * key + starts[b_idx], side="left")
    last = np.searchsorted(start_key, prev_row * key + ends[b_idx], side="right")
    counts = np.maximum(last - first, 0)
    src = np.repeat(b_idx, counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    dst = np.repeat(first, counts) + offsets
    parent = np.arange(n)
    if len(src):
        while True:  # min-label propagation with pointer jumping
            m = np.minimum(parent[src], parent[dst])
            new = parent.copy()
            np.minimum.at(new, src, m)
            np.minimum.at(new, dst, m)
            new = new[new]
            while True:
                jumped = new[new]
                if np.array_equal(jumped, new):
                    break
                new = jumped
            if np.array_equal(new, parent):
                break
            parent = new
    _, comp = np.unique(parent, return_inverse=True)
    # Number components as OpenCV's block-based labelling does: by the first 2x2 block (in
    # raster order of blocks) holding one of their pixels. A block never holds two components.
    block = (rows // 2) * ((w + 1) // 2) + starts // 2
    first_block = np.full(comp.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first_block, comp, block)
    rank = np.empty_like(comp[: len(first_block)])
    rank[np.argsort(first_block, kind="stable")] = np.arange(len(first_block))
    comp = rank[comp]
    roots = first_block
    lengths = ends - starts
    sizes = np.concatenate([[0], np.bincount(comp, weights=lengths, minlength=len(roots))])
    sizes = sizes.astype(np.int64)
    sizes[0] = h * w - sizes[1:].sum()
    labels = np.zeros(h * w, np.int32)
    flat_start = rows * w + starts
    idx = np.repeat(flat_start, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    labels[idx] = np.repeat(comp + 1, lengths)
    return labels.reshape(h, w), sizes


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes ('holes') or drop islands ('islands') smaller than area_thresh pixels.

    Returns (mask, changed). In 'islands' mode the largest region is kept even when every
    region is small.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands'; got {mode!r}")
    mask = np.asarray(mask, bool)
    holes = mode == "holes"
    labels, sizes = connected_components(mask ^ holes)
    small = np.nonzero(sizes[1:] < area_thresh)[0] + 1
    if len(small) == 0:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    big = np.setdiff1d(np.arange(1, len(sizes)), small)
    if len(big) == 0:
        big = np.array([int(np.argmax(sizes[1:])) + 1])
    return np.isin(labels, big), True


def box_xyxy_to_xywh(box: np.ndarray) -> list[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def postprocess_small_regions(
    masks: np.ndarray, min_area: float, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) bool masks with holes and islands smaller than min_area pixels removed,
    then box NMS over them at nms_thresh to drop the duplicates this creates; masks that
    changed rank below unchanged ones. Returns (kept masks, their indices in `masks`)."""
    cleaned, scores = [], []
    for mask in masks:
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    cleaned = np.stack(cleaned) if cleaned else np.asarray(masks, bool)
    keep = nms(masks_to_boxes(cleaned), np.asarray(scores), nms_thresh)
    return cleaned[keep], keep
