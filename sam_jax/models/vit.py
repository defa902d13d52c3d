"""SAM's ViT image encoder: windowed and global attention with decomposed relative positions.

Images (B, S, S, 3) -> embeddings (B, S/16, S/16, 256), float32 whatever the computation
dtype (`dtype`: parameters stay float32; LayerNorm and softmax statistics run in float32,
matrix products in `dtype`). The position tables are stored at the pretraining size (64x64
grid for 1024 px) and resized for other S as the reference does: nearest for the absolute
embedding, linear for the relative-position tables.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam_jax.config import ViTConfig
from sam_jax.models.attention import attention
from sam_jax.models.layers import Conv, Dense, MLPBlock, layer_norm
from sam_jax.models.remat import recompute_in_backward
from sam_jax.models.resize import resize_linear_rows, resize_nearest


def window_partition(x: jnp.ndarray, ws: int) -> jnp.ndarray:
    """(B, H, W, C) -> (B * nH * nW, ws, ws, C), zero-padding H and W up to multiples of ws."""
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, -h % ws), (0, -w % ws), (0, 0)))
    nh, nw = x.shape[1] // ws, x.shape[2] // ws
    x = x.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, ws, ws, c)


def window_unpartition(x: jnp.ndarray, ws: int, hw: tuple[int, int]) -> jnp.ndarray:
    """Inverse of `window_partition`, cropping the padding: -> (B, H, W, C)."""
    h, w = hw
    nh, nw = -(-h // ws), -(-w // ws)
    c = x.shape[-1]
    x = x.reshape(-1, nh, nw, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, nh * ws, nw * ws, c)[:, :h, :w]


def relative_position_table(rel_pos: jnp.ndarray, size: int) -> jnp.ndarray:
    """(L, C) stored table -> (size, size, C) terms R[q, k] for query/key grids of `size`."""
    table = resize_linear_rows(rel_pos, 2 * size - 1)
    idx = np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1
    return table[idx]


class RelPosAttention(nn.Module):
    """Multi-head self-attention over an (H, W) grid with decomposed relative positions.

    (N, H, W, C) -> (N, H, W, C). `table_size` is the grid side the stored tables cover.
    """

    num_heads: int
    table_size: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, h, w, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        qkv = Dense(3 * c, dtype=self.dtype, name="qkv")(x).reshape(n, h, w, 3, heads, hd)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # (n, h, w, heads, hd)
        zeros = nn.initializers.zeros
        rel_pos_h = self.param("rel_pos_h", zeros, (2 * self.table_size - 1, hd), jnp.float32)
        rel_pos_w = self.param("rel_pos_w", zeros, (2 * self.table_size - 1, hd), jnp.float32)
        r_h = relative_position_table(rel_pos_h.astype(self.dtype), h)  # (h, kh, hd)
        r_w = relative_position_table(rel_pos_w.astype(self.dtype), w)  # (w, kw, hd)
        # The relative terms depend on (query, key row) and (query, key column) only: they
        # go to the attention in that factored form, never as a full (hw, hw) bias.
        rel_h = jnp.einsum("nhwxd,hkd->nxhwk", q, r_h).reshape(n, heads, h * w, h)
        rel_w = jnp.einsum("nhwxd,wkd->nxhwk", q, r_w).reshape(n, heads, h * w, w)
        tokens = (n, h * w, heads, hd)
        out = attention(
            q.reshape(tokens), k.reshape(tokens), v.reshape(tokens), rel_pos=(rel_h, rel_w)
        )
        return Dense(c, dtype=self.dtype, name="proj")(out.reshape(n, h, w, c))


class Block(nn.Module):
    """Pre-norm transformer block; windowed when `window_size` > 0, else global."""

    num_heads: int
    mlp_ratio: float
    window_size: int
    global_size: int  # grid side of the stored tables for a global block
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        dt = self.dtype
        y = layer_norm(1e-6, name="norm1", dtype=dt)(x)
        ws = self.window_size
        if ws > 0:
            y = window_partition(y, ws)  # windows folded into the batch
        table = ws if ws > 0 else self.global_size
        y = RelPosAttention(self.num_heads, table, dtype=dt, name="attn")(y)
        if ws > 0:
            y = window_unpartition(y, ws, (h, w))
        x = x + y
        y = layer_norm(1e-6, name="norm2", dtype=dt)(x)
        return x + MLPBlock(int(c * self.mlp_ratio), dtype=dt, name="mlp")(y)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, H, W, 3) -> (B, H/p, W/p, D) (trailing pixels
    that fill no patch are dropped); SAM 3's has no bias."""

    embed_dim: int
    patch_size: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        p = self.patch_size
        conv = Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=self.use_bias,
            dtype=self.dtype,
            name="proj",
        )
        return conv(x)


class ImageEncoderViT(nn.Module):
    """(B, S, S, 3) normalised images -> (B, S/16, S/16, out_chans) float32."""

    config: ViTConfig
    remat: bool = False  # recompute blocks in the backward pass (fine-tuning memory)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % cfg.patch_size:
            raise ValueError(
                f"images must be (B, S, S, 3) with S a multiple of {cfg.patch_size}; "
                f"got shape {x.shape}"
            )
        dt = self.dtype
        x = PatchEmbed(cfg.embed_dim, cfg.patch_size, dtype=dt, name="patch_embed")(x)
        grid = cfg.pretrain_image_size // cfg.patch_size
        pos = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, cfg.embed_dim))
        if pos.shape[1:3] != x.shape[1:3]:
            pos = resize_nearest(pos, x.shape[1:3])
        x = x + pos.astype(x.dtype)
        for i in range(cfg.depth):
            is_global = i in cfg.global_attn_indexes
            window = 0 if is_global else cfg.window_size
            block = Block(cfg.num_heads, cfg.mlp_ratio, window, grid, dtype=dt, name=f"blocks_{i}")
            x = recompute_in_backward(block, x) if self.remat else block(x)
        return neck(x, cfg.out_chans, dt)


def neck(x: jnp.ndarray, out_chans: int, dtype: Any) -> jnp.ndarray:
    """SAM's encoder neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) as modules named
    neck_0 .. neck_3 of the calling compact module; the output is float32, whatever `dtype`
    the convolutions compute in, since the decoders run in float32."""
    x = Conv(out_chans, (1, 1), use_bias=False, dtype=dtype, name="neck_0")(x)
    x = layer_norm(1e-6, name="neck_1", dtype=dtype)(x)
    pad = ((1, 1), (1, 1))
    x = Conv(out_chans, (3, 3), padding=pad, use_bias=False, dtype=dtype, name="neck_2")(x)
    return layer_norm(1e-6, name="neck_3", dtype=jnp.float32)(x)
