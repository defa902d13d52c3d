"""Separable bilinear resampling between the letterboxed model frame and the original image.

A resize along one axis is given by *taps*: a tuple (lo, hi, frac) or (lo, hi, frac, valid) of
1-D arrays, one entry per output position, lo/hi int32 indices into the input axis, frac
float32 in [0, 1] and valid bool. Output i is x[lo[i]] * (1 - frac[i]) + x[hi[i]] * frac[i];
`valid` (when present) marks the outputs that lie inside a pasted crop. Taps are built once
per geometry with NumPy and passed to jitted code as arrays, so a new geometry of the same
length does not recompile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from sam_jax.transforms import letterbox_geometry, linear_taps

Taps = tuple[jnp.ndarray, ...]


def make_taps(lo: Any, hi: Any, frac: Any, valid: Any = None) -> Taps:
    """Taps (lo int32, hi int32, frac float32[, valid bool]) from array-likes of length n."""
    out = (jnp.asarray(lo, jnp.int32), jnp.asarray(hi, jnp.int32), jnp.asarray(frac, jnp.float32))
    return out if valid is None else (*out, jnp.asarray(valid, bool))


def lerp(x: jnp.ndarray, taps: Taps, axis: int) -> jnp.ndarray:
    """Resample `x` along `axis` with `taps`: the axis' length becomes len(taps[0]); other axes
    are unchanged. Values are x[lo] * (1 - frac) + x[hi] * frac (float result)."""
    lo, hi, frac = taps[:3]
    shape = [1] * x.ndim
    shape[axis] = -1
    f = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1.0 - f) + jnp.take(x, hi, axis=axis) * f


def resample(x: jnp.ndarray, taps_h: Taps, taps_w: Taps) -> jnp.ndarray:
    """(..., h, w) -> (..., len(taps_h[0]), len(taps_w[0])): along the width first, then the
    height (the order matters for float rounding; the reference resamples in this order)."""
    x = lerp(x, taps_w, axis=x.ndim - 1)
    return lerp(x, taps_h, axis=x.ndim - 2)


def unletterbox_taps(height: int, width: int, size: int, mask_size: int) -> tuple[Taps, Taps]:
    """(taps_h, taps_w) taking an (m, m) map over the letterboxed S x S input back to the
    original (height, width), with m = mask_size and S = size.

    Along each axis the image covers span = round(n r) * m / S map pixels (r the letterbox
    ratio); output pixel i samples position (i + 0.5) * span / n - 0.5. If both spans are
    whole numbers the map is cropped to them first (samples clamped inside the span),
    otherwise samples are clamped inside the whole map, as the reference resampler does in
    each case.
    """
    _, nh, nw = letterbox_geometry(height, width, size)
    span_h, span_w = nh * mask_size / size, nw * mask_size / size
    whole = abs(span_h - round(span_h)) + abs(span_w - round(span_w)) <= 1e-3
    out = []
    for n, span in ((height, span_h), (width, span_w)):
        last = max(round(span), 1) - 1 if whole else mask_size - 1
        span_used = round(span) if whole else span
        pos = (np.arange(n, dtype=np.float64) + 0.5) * span_used / n - 0.5
        pos = np.clip(pos, 0.0, last)
        lo = np.floor(pos).astype(np.int64)
        out.append(make_taps(lo, np.minimum(lo + 1, last), pos - lo))
    return out[0], out[1]


def crop_paste_taps(crop: Sequence[int], size: int, src: int) -> tuple[Taps, Taps]:
    """(taps_y, taps_x) of length S = size placing an (src, src) map, resized to the crop
    x0, y0, x1, y1, into the S x S frame. Positions outside the crop are flagged invalid."""
    x0, y0, x1, y1 = crop
    out = []
    for a0, a1 in ((y0, y1), (x0, x1)):
        lo = np.zeros(size, np.int64)
        hi = np.zeros(size, np.int64)
        frac = np.zeros(size, np.float32)
        lo[a0:a1], hi[a0:a1], frac[a0:a1] = linear_taps(src, a1 - a0)
        valid = np.zeros(size, bool)
        valid[a0:a1] = True
        out.append(make_taps(lo, hi, frac, valid))
    return out[0], out[1]


def crop_zoom_taps(crop: Sequence[int], size: int) -> tuple[Taps, Taps]:
    """(taps_y, taps_x) of length S = size resizing the crop x0, y0, x1, y1 of an S x S frame
    up to S x S."""
    x0, y0, x1, y1 = crop
    out = []
    for a0, a1 in ((y0, y1), (x0, x1)):
        lo, hi, frac = linear_taps(a1 - a0, size)
        out.append(make_taps(lo + a0, hi + a0, frac))
    return out[0], out[1]
