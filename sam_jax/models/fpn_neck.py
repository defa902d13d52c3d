"""SAM 2's feature-pyramid neck and the image encoder (Hiera trunk + neck) around it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.config import HieraConfig
from sam_jax.models.hiera import Hiera
from sam_jax.models.layers import Conv
from sam_jax.models.position_encoding import sine_position_encoding


class Lateral(nn.Module):
    """A 1x1 convolution to d_model (torch wraps it as `convs.<i>.conv`)."""

    d_model: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return Conv(self.d_model, (1, 1), dtype=self.dtype, name="conv")(x)


class FpnNeck(nn.Module):
    """Trunk maps (finest first, channels `backbone_channel_list` reversed) -> d_model maps.

    Levels in `top_down_levels` add the 2x nearest-upsampled output of the next coarser
    level to their lateral projection; the others keep their lateral projection only.
    Returns (features, positions), both finest first, each (B, h_i, w_i, d_model); the
    sine positions are image independent and returned as (1, h_i, w_i, d_model) float32.
    The features are in the computation dtype `dtype`.
    """

    d_model: int = 256
    top_down_levels: tuple[int, ...] = (2, 3)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, xs: list[jnp.ndarray]) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
        n = len(xs) - 1
        out: list[jnp.ndarray] = [None] * len(xs)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):  # coarsest first; torch numbers the convs in this order
            lateral = Lateral(self.d_model, dtype=self.dtype, name=f"convs_{n - i}")(xs[i])
            if i in self.top_down_levels and prev is not None:
                up = jnp.repeat(jnp.repeat(prev, 2, axis=1), 2, axis=2)
                prev = lateral + up
            else:
                prev = lateral
            out[i] = prev
        pos = [
            jnp.asarray(sine_position_encoding(f.shape[1], f.shape[2], self.d_model))[None]
            for f in out
        ]
        return out, pos


class Sam2ImageEncoder(nn.Module):
    """(B, S, S, 3) -> dict with, finest first after dropping the `scalp` coarsest levels,
    `backbone_fpn` [(B, S/4, S/4, D), (B, S/8, S/8, D), (B, S/16, S/16, D)],
    `vision_pos_enc` [(1, h_i, w_i, D)] and `vision_features` = the coarsest kept level,
    all float32 whatever the computation dtype `dtype` of the trunk and neck (the SAM heads
    and the memory path take float32 features)."""

    config: HieraConfig
    d_model: int = 256
    top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    def setup(self) -> None:
        self.trunk = Hiera(self.config, remat=self.remat, dtype=self.dtype)
        self.neck = FpnNeck(self.d_model, tuple(self.top_down_levels), dtype=self.dtype)

    def __call__(self, images: jnp.ndarray) -> dict:
        features, pos = self.neck(self.trunk(images))
        if self.scalp:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        features = [f.astype(jnp.float32) for f in features]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
