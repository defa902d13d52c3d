"""Resizing that matches torch.nn.functional.interpolate in its index math.

jax.image.resize antialiases when shrinking and so differs from torch. Every mode here is
separable: a resize is one static (out, in) numpy matrix per spatial axis, built with
torch's index arithmetic and applied as two small matmuls ('nearest' is a gather). SAM
needs 'nearest', 'bilinear' and 'linear'; SAM 2 also 'bicubic' (Hiera's background
position embedding) and antialiased 'bilinear' (mask prompts of another size).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# torch's bicubic uses Keys' cubic convolution with this A.
_CUBIC_A = -0.75


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's 'nearest' mode: floor(dst * in / out)."""
    scale = in_size / out_size
    return np.minimum(np.floor(np.arange(out_size) * scale).astype(np.int64), in_size - 1)


def linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch's 'linear'/'bilinear' mode with align_corners=False."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    w = np.zeros((out_size, in_size), np.float32)
    np.add.at(w, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(w, (np.arange(out_size), hi), frac)
    return w


def _cubic_near(x: np.ndarray) -> np.ndarray:
    """Kernel value for |x| <= 1."""
    a = _CUBIC_A
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x: np.ndarray) -> np.ndarray:
    """Kernel value for 1 < |x| < 2."""
    a = _CUBIC_A
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch 'bicubic' with align_corners=False (no antialias).

    Unlike the linear modes the source coordinate is not clamped at 0, and the four taps
    read the border value when they fall outside the input (edge replication).
    """
    scale = in_size / out_size
    src = (np.arange(out_size) + 0.5) * scale - 0.5
    base = np.floor(src).astype(np.int64)
    t = src - base
    taps = np.stack([_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t)], 1)
    w = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for k in range(4):
        np.add.at(w, (rows, np.clip(base - 1 + k, 0, in_size - 1)), taps[:, k])
    return w.astype(np.float32)


def antialias_linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of torch 'bilinear' with antialias=True, align_corners=False.

    When shrinking, the triangle filter is widened by the scale factor so every input pixel
    contributes (a box-like average); when enlarging it equals plain bilinear except at
    the borders, where the taps are renormalised instead of clamped.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        # torch truncates toward zero here (static_cast<int64_t>), which is floor for >= 0.
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        taps = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        total = taps.sum()
        w[i, lo:hi] = taps / total if total != 0 else taps
    return w.astype(np.float32)


def resize_separable(x: jnp.ndarray, wh: np.ndarray, ww: np.ndarray) -> jnp.ndarray:
    """Apply (out_h, H) and (out_w, W) matrices to (B, H, W, C) -> (B, out_h, out_w, C)."""
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(wh, x.dtype), x)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(ww, x.dtype), x)


def resize_bicubic(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) -> (B, h, w, C), torch 'bicubic', align_corners=False."""
    _, h_in, w_in, _ = x.shape
    return resize_separable(x, bicubic_weights(h_in, size[0]), bicubic_weights(w_in, size[1]))


def resize_bilinear_antialias(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) -> (B, h, w, C), torch 'bilinear', align_corners=False, antialias=True."""
    _, h_in, w_in, _ = x.shape
    if (h_in, w_in) == tuple(size):
        return x
    wh = antialias_linear_weights(h_in, size[0])
    ww = antialias_linear_weights(w_in, size[1])
    return resize_separable(x, wh, ww)


def resize_nearest(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) -> (B, h, w, C), torch 'nearest'."""
    _, h_in, w_in, _ = x.shape
    x = jnp.take(x, nearest_indices(h_in, size[0]), axis=1)
    return jnp.take(x, nearest_indices(w_in, size[1]), axis=2)


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) -> (B, h, w, C), torch 'bilinear', align_corners=False, no antialias."""
    _, h_in, w_in, _ = x.shape
    if (h_in, w_in) == tuple(size):
        return x
    return resize_separable(x, linear_weights(h_in, size[0]), linear_weights(w_in, size[1]))


def resize_linear_rows(table: jnp.ndarray, size: int) -> jnp.ndarray:
    """(L, C) -> (size, C), torch 'linear' along the first axis."""
    if table.shape[0] == size:
        return table
    return jnp.asarray(linear_weights(table.shape[0], size), table.dtype) @ table
