"""SAM 2's Hiera trunk: a hierarchical ViT with windowed attention and query pooling.

Images (B, S, S, 3) -> four feature maps, finest first:
(B, S/4, S/4, C), (B, S/8, S/8, 2C), (B, S/16, S/16, 4C), (B, S/32, S/32, 8C).

Every stage after the first starts with a block that max-pools its queries 2x2 (halving the
grid) and doubles width and heads; that block still attends inside the previous stage's
windows, which pooling shrinks to the new window size. Windows are folded into the batch.
The maps come out in the computation dtype `dtype` (parameters stay float32; LayerNorm and
softmax statistics run in float32).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.config import HieraConfig
from sam_jax.models.attention import attention
from sam_jax.models.layers import Conv, Dense, MLPBlock, layer_norm
from sam_jax.models.remat import recompute_in_backward
from sam_jax.models.resize import bicubic_weights
from sam_jax.models.vit import window_partition, window_unpartition


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static layout of one Hiera block."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int  # 0 = global attention
    pool: bool  # max-pool the queries (first block of stages 2..q_pool+1)


def stage_ends(cfg: HieraConfig) -> list[int]:
    """Index of the last block of each stage."""
    return [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]


def block_specs(cfg: HieraConfig) -> list[BlockSpec]:
    """The per-block layout the reference derives from the stage table."""
    ends = stage_ends(cfg)
    pool_blocks = {end + 1 for end in ends[:-1][: cfg.q_pool]}
    dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
    specs = []
    for i in range(sum(cfg.stages)):
        # The window is read before the stage counter moves, so a stage's first block
        # keeps the previous stage's window (pooling then shrinks it to this stage's size).
        window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
        dim_out = dim
        if i - 1 in ends:
            dim_out = int(dim * cfg.dim_mul)
            heads = int(heads * cfg.head_mul)
            stage += 1
        specs.append(BlockSpec(dim, dim_out, heads, window, i in pool_blocks))
        dim = dim_out
    return specs


def max_pool(x: jnp.ndarray, stride: int) -> jnp.ndarray:
    """(N, H, W, ...) -> (N, H//s, W//s, ...): non-overlapping max pool, odd edges dropped.

    The maximum of the s * s strided views: XLA:CPU otherwise fuses a reduction over
    (.., s, .., s, ..) axes into the product that feeds it, which runs slower."""
    ho, wo = x.shape[1] // stride, x.shape[2] // stride
    x = x[:, : ho * stride, : wo * stride]
    views = [x[:, i::stride, j::stride] for i in range(stride) for j in range(stride)]
    return functools.reduce(jnp.maximum, views)


class MultiScaleAttention(nn.Module):
    """Self-attention whose queries may be pooled: (N, H, W, C_in) -> (N, H', W', dim_out)."""

    dim_out: int
    num_heads: int
    q_stride: int = 0  # 0: no pooling
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, h, w, _ = x.shape
        heads, hd = self.num_heads, self.dim_out // self.num_heads
        qkv = Dense(3 * self.dim_out, dtype=self.dtype, name="qkv")(x).reshape(
            n, h, w, 3, heads, hd
        )
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        if self.q_stride:
            q = max_pool(q, self.q_stride)  # per channel, so heads can stay split
            h, w = q.shape[1:3]
        q = q.reshape(n, h * w, heads, hd)
        k = k.reshape(n, -1, heads, hd)
        v = v.reshape(n, -1, heads, hd)
        out = attention(q, k, v)  # (n, h * w, heads, hd)
        out = out.reshape(n, h, w, self.dim_out)
        return Dense(self.dim_out, dtype=self.dtype, name="proj")(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm block: (B, H, W, dim) -> (B, H', W', dim_out); H' = H/2 when pooling."""

    spec: BlockSpec
    q_stride: int = 2
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        s, dt = self.spec, self.dtype
        stride = self.q_stride if s.pool else 0
        shortcut = x
        x = layer_norm(1e-6, name="norm1", dtype=dt)(x)
        if s.dim != s.dim_out:
            # The residual path is projected from the *normalised* input, as in the reference.
            shortcut = Dense(s.dim_out, dtype=dt, name="proj")(x)
            if stride:
                shortcut = max_pool(shortcut, stride)
        hw = shortcut.shape[1:3]
        if s.window_size:
            x = window_partition(x, s.window_size)
        x = MultiScaleAttention(s.dim_out, s.num_heads, stride, dtype=dt, name="attn")(x)
        if s.window_size:
            # Pooling shrank each window; the windows still tile the (pooled) padded grid.
            x = window_unpartition(x, s.window_size // (stride or 1), hw)
        x = shortcut + x
        y = layer_norm(1e-6, name="norm2", dtype=dt)(x)
        mlp = MLPBlock(
            int(s.dim_out * self.mlp_ratio), names=("layers_0", "layers_1"), dtype=dt, name="mlp"
        )
        return x + mlp(y)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution with padding 3: (B, S, S, 3) -> (B, S/4, S/4, C)."""

    embed_dim: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        pad = ((3, 3), (3, 3))
        conv = Conv(
            self.embed_dim, (7, 7), strides=(4, 4), padding=pad, dtype=self.dtype, name="proj"
        )
        return conv(x)


class Hiera(nn.Module):
    """The trunk. Parameters mirror torch `trunk.*` (pos_embed tables keep torch's NCHW)."""

    config: HieraConfig
    remat: bool = False  # recompute each block in the backward pass (recompute_in_backward)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    def position_embedding(self, h: int, w: int) -> jnp.ndarray:
        """(h, w, C): the background table resized bicubically plus the tiled window table."""
        cfg = self.config
        c = cfg.embed_dim
        bh, bw = cfg.window_pos_embed_bkg_spatial_size
        ws = cfg.window_spec[0]
        zeros = nn.initializers.zeros
        bkg = self.param("pos_embed", zeros, (1, c, bh, bw), jnp.float32)[0]
        win = self.param("pos_embed_window", zeros, (1, c, ws, ws), jnp.float32)[0]
        if h % ws or w % ws:
            raise ValueError(f"Hiera needs the S/4 grid ({h}x{w}) to be a multiple of {ws}")
        # The resize matrices are static numpy, built once per trace. Columns first, then
        # rows, each product leaving channels last: a three-operand einsum ended with a
        # transpose of the whole (C, h, w) table, twice as slow at 1024 px.
        cols = jnp.einsum("pw,chw->hpc", bicubic_weights(bw, w), bkg)  # (bh, w, C)
        bkg = jnp.einsum("oh,hpc->opc", bicubic_weights(bh, h), cols)
        return bkg + jnp.tile(win.transpose(1, 2, 0), (h // ws, w // ws, 1))

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> list[jnp.ndarray]:
        cfg = self.config
        x = PatchEmbed(cfg.embed_dim, dtype=self.dtype, name="patch_embed")(images)
        x = x + self.position_embedding(*x.shape[1:3]).astype(x.dtype)
        ends = set(stage_ends(cfg))
        outputs = []
        for i, spec in enumerate(block_specs(cfg)):
            block = MultiScaleBlock(
                spec, cfg.q_stride, cfg.mlp_ratio, dtype=self.dtype, name=f"blocks_{i}"
            )
            x = recompute_in_backward(block, x) if self.remat else block(x)
            if i in ends:
                outputs.append(x)
        return outputs
