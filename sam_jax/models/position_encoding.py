"""SAM 2's fixed 2-D sine position encoding (DETR style), computed as a trace-time constant."""

from __future__ import annotations

import math

import numpy as np


def sine_position_encoding(
    h: int,
    w: int,
    num_pos_feats: int = 256,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
) -> np.ndarray:
    """The (h, w, num_pos_feats) float32 encoding of a feature grid; no parameters.

    Channels are [y encoding, x encoding], each num_pos_feats/2 wide, interleaving
    sin (even channels) and cos (odd channels) of the 1-based row/column index, which is
    first normalised to (0, scale] by the last index when `normalize` is set.
    Broadcast it over the batch: `jnp.broadcast_to(pe, (b, h, w, c))`.
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    half = num_pos_feats // 2
    ys = np.arange(1, h + 1, dtype=np.float64)
    xs = np.arange(1, w + 1, dtype=np.float64)
    if normalize:
        eps = 1e-6
        ys = ys / (ys[-1] + eps) * scale
        xs = xs / (xs[-1] + eps) * scale
    dim_t = temperature ** (2 * (np.arange(half) // 2) / half)

    def encode(t: np.ndarray) -> np.ndarray:  # (n,) -> (n, half)
        a = t[:, None] / dim_t
        out = np.empty_like(a)
        out[:, 0::2] = np.sin(a[:, 0::2])
        out[:, 1::2] = np.cos(a[:, 1::2])
        return out

    pe_y = np.broadcast_to(encode(ys)[:, None, :], (h, w, half))
    pe_x = np.broadcast_to(encode(xs)[None, :, :], (h, w, half))
    return np.concatenate([pe_y, pe_x], axis=-1).astype(np.float32)
