"""Resizing that matches torch.nn.functional.interpolate bit for bit in its index math.

jax.image.resize antialiases when shrinking and so differs from torch; these helpers build
the (static) interpolation weights in numpy and apply them as small matmuls or gathers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


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
    wh = jnp.asarray(linear_weights(h_in, size[0]), x.dtype)
    ww = jnp.asarray(linear_weights(w_in, size[1]), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", wh, x)
    return jnp.einsum("pw,bowc->bopc", ww, x)


def resize_linear_rows(table: jnp.ndarray, size: int) -> jnp.ndarray:
    """(L, C) -> (size, C), torch 'linear' along the first axis."""
    if table.shape[0] == size:
        return table
    return jnp.asarray(linear_weights(table.shape[0], size), table.dtype) @ table
