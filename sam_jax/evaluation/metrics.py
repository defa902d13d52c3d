"""Mask metrics in numpy: region similarity J (IoU) and the boundary F-measure F.

Definitions (those of the DAVIS benchmark, Perazzi et al. 2016, written anew here):

- J(pred, gt) = |pred & gt| / |pred | gt| over the pixels not in `ignore`; 1 when both are
  empty there (an absent object correctly predicted absent).
- The boundary of a mask is its pixels with at least one 4-neighbour outside the mask.
  Beyond the image edge counts as the pixel's own value, so where an object is cut by the
  frame, the frame edge is not part of its contour. Boundary pixels in `ignore` are dropped.
- Tolerance: a boundary pixel is matched when a boundary pixel of the other mask lies within
  Euclidean distance r = ceil(0.008 * image diagonal) pixels (at least 1), DAVIS's
  `bound_th = 0.008`; an explicit r can be passed instead.
- Precision P = matched predicted boundary pixels / predicted boundary pixels; recall R =
  matched ground-truth boundary pixels / ground-truth boundary pixels. With no predicted
  boundary P = 1, with no ground-truth boundary R = 1 (both empty: F = 1; one empty: F = 0).
- F = 2 P R / (P + R), 0 when P + R = 0.
"""

from __future__ import annotations

import math

import numpy as np

BOUNDARY_FRACTION = 0.008  # DAVIS's bound_th: tolerance as a fraction of the image diagonal


def _check_pair(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"masks must be two (H, W) arrays of one shape; got {pred.shape}, {target.shape}"
        )
    keep = np.ones(pred.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    if keep.shape != pred.shape:
        raise ValueError(f"ignore must be {pred.shape}; got {keep.shape}")
    return pred, target, keep


def iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Region similarity J of two (H, W) bool masks over the pixels outside `ignore`;
    1.0 when both masks are empty there."""
    pred, target, keep = _check_pair(pred, target, ignore)
    union = np.count_nonzero((pred | target) & keep)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & target & keep) / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of `mask` with a 4-neighbour outside it (the image edge is
    not a boundary: the padding repeats the edge pixels)."""
    m = np.asarray(mask, bool)
    p = np.pad(m, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def tolerance(shape: tuple[int, int], fraction: float = BOUNDARY_FRACTION) -> int:
    """DAVIS's matching distance in pixels for an image of `shape` (H, W):
    ceil(fraction * diagonal), at least 1."""
    return max(1, math.ceil(fraction * math.hypot(shape[0], shape[1])))


def _dilate_rows(mask: np.ndarray, half: int) -> np.ndarray:
    """Each row's True pixels widened by `half` pixels left and right (a running window
    count over a cumulative sum)."""
    if half == 0:
        return mask
    w = mask.shape[1]
    c = np.pad(np.cumsum(mask, axis=1, dtype=np.int32), ((0, 0), (1, 0)))
    hi = np.minimum(np.arange(w) + half + 1, w)
    lo = np.maximum(np.arange(w) - half, 0)
    return (c[:, hi] - c[:, lo]) > 0


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """`mask` dilated by the disk of `radius` pixels: True where a True pixel lies within
    Euclidean distance `radius`. One horizontal dilation per row offset dy, by the disk's
    half-width at dy, then shifted by dy: 2 * radius + 1 passes over the image."""
    m = np.asarray(mask, bool)
    h = m.shape[0]
    out = np.zeros_like(m)
    for dy in range(-radius, radius + 1):
        if abs(dy) >= h:
            continue
        half = math.isqrt(radius * radius - dy * dy)
        row = _dilate_rows(m, half)
        if dy >= 0:
            out[dy:] |= row[: h - dy]
        else:
            out[:dy] |= row[-dy:]
    return out


def boundary_prf(
    pred: np.ndarray,
    target: np.ndarray,
    ignore: np.ndarray | None = None,
    radius: int | None = None,
) -> tuple[float, float, float]:
    """(F, precision, recall) of the boundaries of two (H, W) bool masks, as the module
    docstring defines them; radius defaults to `tolerance(shape)`."""
    pred, target, keep = _check_pair(pred, target, ignore)
    r = tolerance(pred.shape) if radius is None else int(radius)
    bp, bt = boundary(pred) & keep, boundary(target) & keep
    n_p, n_t = np.count_nonzero(bp), np.count_nonzero(bt)
    if n_p == 0 and n_t == 0:
        return 1.0, 1.0, 1.0
    precision = np.count_nonzero(bp & dilate_disk(bt, r)) / n_p if n_p else 1.0
    recall = np.count_nonzero(bt & dilate_disk(bp, r)) / n_t if n_t else 1.0
    if precision + recall == 0:
        return 0.0, float(precision), float(recall)
    f = 2 * precision * recall / (precision + recall)
    return float(f), float(precision), float(recall)


def boundary_f(
    pred: np.ndarray,
    target: np.ndarray,
    ignore: np.ndarray | None = None,
    radius: int | None = None,
) -> float:
    """Boundary F-measure of two (H, W) bool masks (see `boundary_prf`), in [0, 1]."""
    return boundary_prf(pred, target, ignore, radius)[0]
