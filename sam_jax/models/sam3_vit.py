"""SAM 3's ViT trunk: windowed and global attention with 2-D RoPE, tiled absolute positions.

Images (B, H, W, 3) -> tokens (B, H/p, W/p, C) (p = patch_size, 14; 72x72x1024 at 1008 px),
the output of the last (global) block. Trailing pixels that do not fill a patch are dropped,
as the reference's strided convolution drops them. Parameters mirror torch
`detector.backbone.vision_backbone.trunk.*`; `pos_embed` keeps torch's (1, 1 + P*P, C) layout,
its class-token row unused.

Positions: the absolute table (P x P, the pretraining grid) is tiled over the token grid;
inside attention, queries and keys are rotated by axial RoPE over the grid the block
attends over (one window, or the whole grid for a global block), the positions scaled by
rope_pt_size / grid side. Computation runs in `dtype` (parameters stay float32; LayerNorm,
RoPE and softmax statistics in float32).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam_jax.models.attention import attention
from sam_jax.models.layers import Dense, MLPBlock, layer_norm
from sam_jax.models.remat import recompute_in_backward
from sam_jax.models.rope import apply_rope
from sam_jax.models.sam3_config import Sam3VisionConfig
from sam_jax.models.vit import PatchEmbed, window_partition, window_unpartition

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which every trunk norm uses


@functools.lru_cache(maxsize=32)
def scaled_axial_rope_tables(
    end_x: int, end_y: int, dim: int, scale: float, theta: float = 10000.0
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (end_x * end_y, dim // 2) float32: token t sits at
    x = (t % end_x) * scale, y = (t // end_x) * scale; the first dim/4 channel pairs turn
    by x * f_k, the last dim/4 by y * f_k, f_k = theta ** (-4k / dim).

    The reference passes the grid's height as end_x, so on a non-square (h, w) grid the
    tokens (row-major over w columns) are placed as if the grid had h columns; square grids
    get x = column, y = row. Positions and angles are float32 products, as in the reference.
    """
    exponents = np.arange(0, dim, 4, dtype=np.float32)[: dim // 4] / np.float32(dim)
    freqs = np.float32(1) / (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    idx = np.arange(end_x * end_y)
    x = (idx % end_x).astype(np.float32) * np.float32(scale)
    y = (idx // end_x).astype(np.float32) * np.float32(scale)
    angles = np.concatenate([np.outer(x, freqs), np.outer(y, freqs)], axis=-1)
    angles = angles.astype(np.float32).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def tiled_abs_pos(pos_embed: jnp.ndarray, h: int, w: int) -> jnp.ndarray:
    """(1, 1 + P*P, C) table with a class-token row -> (h, w, C): the P x P grid repeated
    over (h, w), cropped at the bottom and right edges."""
    n = pos_embed.shape[1] - 1
    p = int(round(n**0.5))
    if p * p != n:
        raise ValueError(f"pos_embed holds {n} grid rows after the class token, not a square")
    grid = pos_embed[0, 1:].reshape(p, p, -1)
    return grid[np.arange(h) % p][:, np.arange(w) % p]


class Attention(nn.Module):
    """Multi-head self-attention over an (h, w) grid with axial RoPE on queries and keys.

    (N, h, w, C) -> (N, h, w, C). `rope_scale` multiplies the grid positions.
    """

    num_heads: int
    rope_scale: float = 1.0
    rope_theta: float = 10000.0
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, h, w, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(x).reshape(n, h * w, 3, heads, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (n, h * w, heads, hd)
        cos, sin = scaled_axial_rope_tables(h, w, hd, self.rope_scale, self.rope_theta)
        # Tables (L, hd/2) broadcast over the heads axis that follows the tokens here.
        q = apply_rope(q, cos[:, None], sin[:, None])
        k = apply_rope(k, cos[:, None], sin[:, None])
        out = attention(q, k, v).reshape(n, h, w, c)
        return Dense(c, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
    """Pre-norm block, (B, h, w, C) -> same; windowed (zero-padded to whole windows) when
    `window_size` > 0, else global."""

    num_heads: int
    mlp_ratio: float
    window_size: int
    rope_pt_size: int  # RoPE's pretraining grid side
    rope_interp: bool = True
    rope_theta: float = 10000.0
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        ws, dt = self.window_size, self.dtype
        y = layer_norm(LN_EPS, name="norm1", dtype=dt)(x)
        if ws > 0:
            y = window_partition(y, ws)  # windows folded into the batch
        # The reference scales by the pretraining grid over the attended grid's height.
        side = ws if ws > 0 else h
        scale = self.rope_pt_size / side if self.rope_interp else 1.0
        attn = Attention(self.num_heads, scale, self.rope_theta, dtype=dt, name="attn")
        y = attn(y)
        if ws > 0:
            y = window_unpartition(y, ws, (h, w))
        x = x + y
        y = layer_norm(LN_EPS, name="norm2", dtype=dt)(x)
        mlp = MLPBlock(int(c * self.mlp_ratio), names=("fc1", "fc2"), dtype=dt, name="mlp")
        return x + mlp(y)


class ViT(nn.Module):
    """The trunk: (B, H, W, 3) normalised images -> (B, H/p, W/p, embed_dim) in `dtype`."""

    config: Sam3VisionConfig
    remat: bool = False  # recompute blocks in the backward pass (fine-tuning memory)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        p = cfg.patch_size
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < p:
            raise ValueError(
                f"images must be (B, H, W, 3) with H and W at least the patch size {p}; "
                f"got shape {images.shape}"
            )
        x = PatchEmbed(cfg.embed_dim, p, dtype=self.dtype, use_bias=False, name="patch_embed")(
            images
        )
        rows = 1 + cfg.pretrain_grid**2  # a class-token row first, unused
        pos = self.param("pos_embed", nn.initializers.zeros, (1, rows, cfg.embed_dim))
        x = x + tiled_abs_pos(pos, *x.shape[1:3]).astype(x.dtype)
        x = layer_norm(LN_EPS, name="ln_pre", dtype=self.dtype)(x)
        rope_pt = cfg.window_size if cfg.rope_pt_size is None else cfg.rope_pt_size
        for i in range(cfg.depth):
            block = Block(
                cfg.num_heads,
                cfg.mlp_ratio,
                0 if i in cfg.global_att_blocks else cfg.window_size,
                rope_pt,
                cfg.rope_interp,
                cfg.rope_theta,
                dtype=self.dtype,
                name=f"blocks_{i}",
            )
            x = recompute_in_backward(block, x) if self.remat else block(x)
        return x
