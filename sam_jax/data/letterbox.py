"""Masks letterboxed exactly as the image predictor letterboxes images."""

from __future__ import annotations

import numpy as np

from sam_jax.transforms import letterbox_geometry


def nearest_taps(src: int, dst: int) -> np.ndarray:
    """Source index of each of dst pixels in a nearest-neighbour resize src -> dst, with pixel
    centres aligned (output centre i + 0.5 maps to input (i + 0.5) src / dst): the same
    alignment as the bilinear image resize, so the nearest source pixel is always one of
    the two the image's bilinear taps read."""
    idx = np.floor((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(idx, src - 1)


def letterbox_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or (..., H, W) bool -> (size, size) or (..., size, size) bool.

    The geometry of `sam_jax.transforms.letterbox` (the image predictor's preprocessing):
    scaled by r = min(size / H, size / W) to (round(H r), round(W r)), placed at the top-left,
    the rest padded (False). Resampled by nearest neighbour, so a pixel where the
    letterboxed image is a pure blend of in-mask pixels is in the mask, and one of
    out-of-mask pixels is not. Leading axes (objects K, frames T) are kept.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim < 2:
        raise ValueError(
            f"letterbox_mask: expected a (..., H, W) bool mask, got {mask.shape} {mask.dtype}"
        )
    h, w = mask.shape[-2:]
    _, nh, nw = letterbox_geometry(h, w, size)
    out = np.zeros((*mask.shape[:-2], size, size), bool)
    rows, cols = nearest_taps(h, nh), nearest_taps(w, nw)
    out[..., :nh, :nw] = mask[..., rows[:, None], cols[None, :]]
    return out
