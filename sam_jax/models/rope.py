"""Axial 2-D rotary position encoding (RoPE) of SAM 2's memory attention.

Channel pairs (x[2i], x[2i+1]) of a token at grid position (row, col) are rotated by an
angle: the first dim/4 pairs by col * f_k, the last dim/4 pairs by row * f_k, with
f_k = theta ** (-4k / dim). Tokens are the row-major flattening of an (h, w) feature grid.
The tables are numpy constants built at trace time; the rotation is real-valued.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=32)
def axial_rope_tables(
    h: int, w: int, dim: int, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (h * w, dim // 2) float32, for the row-major tokens of an (h, w) grid.

    Angles are formed in float32 like the reference's tables, then cos/sin are taken.
    """
    if dim % 4:
        raise ValueError(f"RoPE needs a head width divisible by 4, got {dim}")
    exponents = np.arange(0, dim, 4, dtype=np.float32) / np.float32(dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    freqs = np.float32(1) / powers  # float32 steps, correctly rounded: the reference's bits
    idx = np.arange(h * w)
    col = (idx % w).astype(np.float32)
    row = (idx // w).astype(np.float32)
    angles = np.concatenate([np.outer(col, freqs), np.outer(row, freqs)], axis=-1)
    angles = angles.astype(np.float32).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jnp.ndarray, cos: np.ndarray, sin: np.ndarray) -> jnp.ndarray:
    """Rotate the channel pairs of x (..., L, dim) by tables (L, dim // 2).

    The rotation is computed in (at least) float32, so bfloat16 inputs keep the tables'
    precision; the result has x's dtype."""
    dt = jnp.promote_types(x.dtype, jnp.float32)
    pairs = x.astype(dt).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c = jnp.asarray(cos, dt)
    s = jnp.asarray(sin, dt)
    out = jnp.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(x.shape)
    return out.astype(x.dtype)


def apply_rope_to_keys(
    k: jnp.ndarray, cos: np.ndarray, sin: np.ndarray, num_k_rope: int
) -> jnp.ndarray:
    """RoPE on the first `num_k_rope` tokens of k (..., M, dim), the rest left as is.

    Those tokens are whole frames of the grid the tables describe (num_k_rope a multiple
    of its h * w tokens); every frame gets the same positions, the tables tiled per frame.
    """
    n = cos.shape[0]
    if num_k_rope < 0 or num_k_rope > k.shape[-2]:
        raise ValueError(f"num_k_rope={num_k_rope} outside [0, {k.shape[-2]}]")
    if num_k_rope == 0:
        return k
    if num_k_rope % n:
        raise ValueError(
            f"{num_k_rope} rotated keys are not whole frames of {n} tokens (the feature grid)"
        )
    frames = k[..., :num_k_rope, :].reshape(*k.shape[:-2], num_k_rope // n, n, k.shape[-1])
    rotated = apply_rope(frames, cos, sin).reshape(*k.shape[:-2], num_k_rope, k.shape[-1])
    return jnp.concatenate([rotated, k[..., num_k_rope:, :]], axis=-2)
