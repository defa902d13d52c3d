"""Hand-drawn masks shared by the data-layer tests: rectangles and ellipses on an H x W grid."""

from __future__ import annotations

import numpy as np

H, W = 40, 56


def rect(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def ellipse(cy, cx, ry, rx, h=H, w=W):
    y, x = np.mgrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
