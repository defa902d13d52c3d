"""SAM 2's memory encoder: a frame's features fused with its predicted mask.

Shapes (NHWC), for an image of size S and a feature grid (h, w) = (S/16, S/16):
    pix_feat (B, h, w, 256)  the frame's top-level (stride 16) features;
    masks    (B, H, W, 1) mask at image resolution (`pred_masks_high_res`, S x S; SAM 2's
             S is 16h, other sizes are resized to 16h x 16w first, bilinear and
             antialiased, as SAM 3 does with its 14h): logits, or already-scaled probabilities with skip_mask_sigmoid=True
             (the tracker feeds sigmoid(logits) * 20 - 10, or binarised * 20 - 10);
    -> features (B, h, w, 64), pos (B, h, w, 64) (sine encoding, no parameters), float32
       whatever the computation dtype `dtype` (parameters stay float32; LayerNorm in float32).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import Conv, Dense, DepthwiseConv, gelu, layer_norm
from sam_jax.models.position_encoding import sine_position_encoding
from sam_jax.models.resize import resize_bilinear_antialias


class MaskDownSampler(nn.Module):
    """Four stride-2 3x3 convs (1 -> 4 -> 16 -> 64 -> 256 channels), each followed by
    LayerNorm2d and GELU, then a 1x1 conv: (B, 16h, 16w, 1) -> (B, h, w, embed_dim).

    Flax names follow the torch Sequential indices: encoder_0/1 (conv, norm), encoder_3/4,
    encoder_6/7, encoder_9/10, encoder_12 (the GELUs hold the other indices).
    """

    embed_dim: int = 256
    num_layers: int = 4
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        chans, dt = 1, self.dtype
        for i in range(self.num_layers):
            chans *= 4
            x = Conv(chans, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dt,
                        name=f"encoder_{3 * i}")(x)  # fmt: skip
            x = gelu(layer_norm(1e-6, name=f"encoder_{3 * i + 1}", dtype=dt)(x))
        return Conv(self.embed_dim, (1, 1), dtype=dt, name=f"encoder_{3 * self.num_layers}")(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, Dense 4x + GELU + Dense, layer scale
    `gamma`, residual. (B, H, W, C) -> same."""

    kernel_size: int = 7
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c, dt = x.shape[-1], self.dtype
        y = DepthwiseConv(self.kernel_size, dtype=dt, name="dwconv")(x)
        y = layer_norm(1e-6, name="norm", dtype=dt)(y)
        y = gelu(Dense(4 * c, dtype=dt, name="pwconv1")(y))
        y = Dense(c, dtype=dt, name="pwconv2")(y)
        gamma = self.param("gamma", nn.initializers.constant(1e-6), (c,), jnp.float32)
        return x + gamma.astype(y.dtype) * y


class Fuser(nn.Module):
    """`num_layers` CXBlocks in sequence (named layers_0 ..)."""

    num_layers: int = 2
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.num_layers):
            x = CXBlock(dtype=self.dtype, name=f"layers_{i}")(x)
        return x


class MemoryEncoder(nn.Module):
    """Memory of one frame: pix_feat_proj(pix_feat) + mask_downsampler(mask), two CXBlocks,
    out_proj to `out_dim`; see the module docstring for shapes."""

    out_dim: int = 64
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self, pix_feat: jnp.ndarray, masks: jnp.ndarray, skip_mask_sigmoid: bool = False
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        b, h, w, c = pix_feat.shape
        if masks.ndim != 4 or masks.shape[0] != b or masks.shape[-1] != 1:
            raise ValueError(
                f"masks must be (B, H, W, 1) with the features' batch {b}; got {masks.shape}"
            )
        if not skip_mask_sigmoid:
            masks = jax.nn.sigmoid(masks)
        if masks.shape[1:3] != (16 * h, 16 * w):
            # SAM 3 (stride 14) resizes its S x S masks to 16x the grid, antialiased.
            masks = resize_bilinear_antialias(masks.astype(jnp.float32), (16 * h, 16 * w))
        dt = self.dtype
        m = MaskDownSampler(c, dtype=dt, name="mask_downsampler")(masks.astype(dt))
        x = Conv(c, (1, 1), dtype=dt, name="pix_feat_proj")(pix_feat) + m
        x = Fuser(dtype=dt, name="fuser")(x)
        if self.out_dim != c:
            x = Conv(self.out_dim, (1, 1), dtype=dt, name="out_proj")(x)
        x = x.astype(jnp.float32)
        pos = jnp.asarray(sine_position_encoding(h, w, x.shape[-1]), x.dtype)
        return x, jnp.broadcast_to(pos, x.shape)
