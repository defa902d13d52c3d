"""Image and coordinate transforms of the image predictor, in numpy.

The letterbox reproduces the reference predictor's preprocessing bit for bit: the image is
scaled by r = min(S / H, S / W) to (round(H r), round(W r)), placed at the top-left of an
S x S canvas filled with 114, and resized with OpenCV's 8-bit bilinear arithmetic (11-bit
fixed-point weights, a 2x2 box filter for exact 2x reductions), written here without OpenCV.

`linear_taps` gives the index/weight form of a half-pixel bilinear resize, which the
predictor uses to map masks back to the original image.
"""

from __future__ import annotations

import math

import numpy as np

PAD_VALUE = 114
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int]:
    """(ratio, new_height, new_width) of the letterbox of an (height, width) image into size."""
    r = min(size / height, size / width)
    return r, max(round(height * r), 1), max(round(width * r), 1)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of OpenCV's bilinear resize along one axis."""
    scale = 1.0 / (dst / src)  # as OpenCV: the inverse of the double-precision zoom
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    lo = np.floor(f).astype(np.int64)
    f = (f - lo.astype(np.float32)).astype(np.float32)
    # Outside the image the indices are clamped but the fractions kept (both taps may then
    # read the same pixel, which still matters to the rounding below).
    hi = np.clip(lo + 1, 0, src - 1)
    lo = np.clip(lo, 0, src - 1)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    return lo, hi, w0, w1


def resize_bilinear_u8(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """(H, W, C) uint8 -> (new_h, new_w, C) uint8, equal to cv2.resize(INTER_LINEAR)."""
    h, w, c = image.shape
    if (h, w) == (new_h, new_w):
        return image.copy()
    if w == 2 * new_w and h == 2 * new_h:  # OpenCV switches to a 2x2 average here
        s = image.astype(np.int32)
        s = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    xl, xh, xw0, xw1 = _linear_taps(w, new_w)
    yl, yh, yw0, yw1 = _linear_taps(h, new_h)
    rows = np.unique(np.concatenate([yl, yh]))
    src = image[rows].astype(np.int64)
    # Horizontal pass on the rows needed: exact integers, up to 255 * 2048.
    horiz = src[:, xl] * xw0[None, :, None] + src[:, xh] * xw1[None, :, None]
    pos = np.searchsorted(rows, yl), np.searchsorted(rows, yh)
    a = horiz[pos[0]].reshape(new_h, new_w * c)
    b = horiz[pos[1]].reshape(new_h, new_w * c)
    b0, b1 = yw0[:, None], yw1[:, None]
    # Vectorised path: 16-bit high products of (value >> 4) and the weight, then (x + 2) >> 2.
    fast = (((a >> 4) * b0) >> 16) + (((b >> 4) * b1) >> 16)
    fast = (fast + 2) >> 2
    return np.clip(fast, 0, 255).astype(np.uint8).reshape(new_h, new_w, c)


def letterbox(image: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8: aspect kept, top-left, padded with pad_value."""
    h, w, c = image.shape
    _, nh, nw = letterbox_geometry(h, w, size)
    out = np.full((size, size, c), pad_value, np.uint8)
    out[:nh, :nw] = resize_bilinear_u8(image, nh, nw)
    return out


def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, frac) of a half-pixel bilinear resize src -> dst (torch's 'bilinear',
    align_corners=False): out[i] = in[lo] * (1 - frac) + in[hi] * frac."""
    pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def ceil_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
