"""Where an evaluation clicks: the first click, the box, and the next corrective click.

The interactive protocol (as SAM's evaluation and RITM's before it): the first click is at
the object's innermost pixel; each next click goes to the largest error region of the
current prediction, at that region's innermost pixel, positive if the region is missed
object (false negative), negative if it is predicted background (false positive). Regions
are 4-connected components; everything is deterministic numpy.
"""

from __future__ import annotations

import numpy as np

from sam_jax.train.clicks import innermost_pixel


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of True pixels of (H, W) `mask`, in row-major order:
    row, start column, end column (exclusive)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # (H, W + 1): +1 where a run starts, -1 after it ends
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def _components(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Component index of each run: runs on adjacent rows whose columns overlap are
    4-connected. Union by repeated min-label propagation with pointer jumping."""
    n = len(rows)
    labels = np.arange(n)
    if n < 2:
        return labels
    big = int(max(ends.max(), 1)) + 1
    key_start, key_end = rows * big + starts, rows * big + ends
    # runs b on the next row with end_b > start_a and start_b < end_a
    lo = np.searchsorted(key_end, (rows + 1) * big + starts, side="right")
    hi = np.searchsorted(key_start, (rows + 1) * big + ends, side="left")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), count)
    b = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    while True:
        low = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def largest_region(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the largest 4-connected component of `mask` (the first in row-major
    order on a tie); all False for an empty mask."""
    m = np.asarray(mask, bool)
    out = np.zeros_like(m)
    rows, starts, ends = _runs(m)
    if len(rows) == 0:
        return out
    comp = _components(rows, starts, ends)
    sizes = np.bincount(comp, weights=ends - starts)
    best = comp == int(np.argmax(sizes))  # argmax: the lowest label, i.e. the first found
    for r, s, e in zip(rows[best], starts[best], ends[best], strict=True):
        out[r, s:e] = True
    return out


def first_click(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first click on an object: its innermost pixel (`innermost_pixel`)."""
    return innermost_pixel(mask)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1: the tight box of a non-empty (H, W) mask in pixel edges
    (x1 = last column + 1), as the training box prompts are drawn."""
    ys, xs = np.nonzero(np.asarray(mask, bool))
    if len(xs) == 0:
        raise ValueError("mask_box needs a mask with at least one True pixel")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def next_click(
    pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[tuple[int, int], int] | None:
    """The corrective click for prediction `pred` of object `target` ((H, W) bool each):
    ((x, y), label) at the innermost pixel of the largest 4-connected error region, label 1
    for a false-negative region (missed object) and 0 for a false-positive one; a tie in
    size goes to the false negative. Pixels in `ignore` are never errors. None when the
    prediction has no error."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    keep = np.ones_like(target) if ignore is None else ~np.asarray(ignore, bool)
    fn = largest_region(target & ~pred & keep)
    fp = largest_region(pred & ~target & keep)
    n_fn, n_fp = np.count_nonzero(fn), np.count_nonzero(fp)
    if n_fn == 0 and n_fp == 0:
        return None
    region, label = (fn, 1) if n_fn >= n_fp else (fp, 0)
    ys, xs = np.nonzero(region)
    y0, x0 = ys.min(), xs.min()
    # Erode only the region's bounding box: outside it the region is absent anyway.
    x, y = innermost_pixel(region[y0 : ys.max() + 1, x0 : xs.max() + 1])
    return (int(x + x0), int(y + y0)), label
