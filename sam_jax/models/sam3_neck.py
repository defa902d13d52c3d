"""SAM 3's vision backbone: the ViT trunk and its dual ViTDet neck.

Every neck level reads the trunk's last map (B, h, w, C) (h = H/14) and resamples it by its
scale factor, then projects to d_model with a 1x1 and a 3x3 convolution:

    4.0: 2x2 transposed conv to C/2, GELU, 2x2 transposed conv to C/4  -> (B, 4h, 4w, D)
    2.0: 2x2 transposed conv to C/2                                      -> (B, 2h, 2w, D)
    1.0: as is                                                           -> (B, h, w, D)
    0.5: 2x2 max pool (odd edges dropped)                                -> (B, h//2, w//2, D)

The detector's neck is `convs`; the tracker's (`sam2_convs`) has the same shape and its own
weights. Parameters mirror torch `detector.backbone.vision_backbone.*`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.hiera import max_pool
from sam_jax.models.layers import Conv, ConvTranspose2x2, gelu
from sam_jax.models.position_encoding import sine_position_encoding
from sam_jax.models.sam3_config import Sam3VisionConfig
from sam_jax.models.sam3_vit import ViT


class NeckLevel(nn.Module):
    """One level of a neck: (B, h, w, C) -> (B, h*s, w*s, d_model) for scale s (a torch
    nn.Sequential whose children keep their torch names)."""

    scale: float
    d_model: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c, dt = x.shape[-1], self.dtype
        if self.scale == 4.0:
            x = gelu(ConvTranspose2x2(c // 2, dtype=dt, name="dconv_2x2_0")(x))
            x = ConvTranspose2x2(c // 4, dtype=dt, name="dconv_2x2_1")(x)
        elif self.scale == 2.0:
            x = ConvTranspose2x2(c // 2, dtype=dt, name="dconv_2x2")(x)
        elif self.scale == 0.5:
            x = max_pool(x, 2)
        elif self.scale != 1.0:
            raise ValueError(f"neck scale must be one of 4, 2, 1, 0.5; got {self.scale}")
        x = Conv(self.d_model, (1, 1), dtype=dt, name="conv_1x1")(x)
        pad = ((1, 1), (1, 1))
        return Conv(self.d_model, (3, 3), padding=pad, dtype=dt, name="conv_3x3")(x)


class BackboneOutput(NamedTuple):
    """The reference's four neck outputs, each list finest level first (the order of
    `scale_factors`). Features are float32 (B, h_i, w_i, d_model); position encodings are
    image independent, float32 (1, h_i, w_i, d_model). `sam2_*` are None without the
    tracker's neck, `sam3_*` when the detector's neck is skipped."""

    sam3_features: list[jnp.ndarray] | None
    sam3_pos: list[jnp.ndarray] | None
    sam2_features: list[jnp.ndarray] | None
    sam2_pos: list[jnp.ndarray] | None


def sine_positions(features: list[jnp.ndarray], d_model: int) -> list[jnp.ndarray]:
    """The DETR sine encoding (normalised, temperature 1e4) of each map's grid,
    (1, h_i, w_i, d_model) float32 constants."""
    return [
        jnp.asarray(sine_position_encoding(f.shape[1], f.shape[2], d_model))[None] for f in features
    ]


class Sam3DualViTDetNeck(nn.Module):
    """(B, H, W, 3) normalised images -> BackboneOutput (`trunk`, `convs_i`, `sam2_convs_i`).

    `dtype` is the computation dtype of the trunk and the necks; outputs are float32.
    """

    config: Sam3VisionConfig
    remat: bool = False  # recompute trunk blocks in the backward pass
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, images: jnp.ndarray, detector_neck: bool = True) -> BackboneOutput:
        """`detector_neck=False` skips the detector's neck (`sam3_*` are None then): the
        tracker reads only `sam2_*`."""
        cfg = self.config
        x = ViT(cfg, remat=self.remat, dtype=self.dtype, name="trunk")(images)
        sam3 = self._levels(x, "convs") if detector_neck else None
        sam2 = self._levels(x, "sam2_convs") if cfg.add_sam2_neck else None
        return BackboneOutput(
            sam3,
            None if sam3 is None else sine_positions(sam3, cfg.d_model),
            sam2,
            None if sam2 is None else sine_positions(sam2, cfg.d_model),
        )

    def _levels(self, x: jnp.ndarray, prefix: str) -> list[jnp.ndarray]:
        cfg = self.config
        return [
            NeckLevel(s, cfg.d_model, dtype=self.dtype, name=f"{prefix}_{i}")(x).astype(jnp.float32)
            for i, s in enumerate(cfg.scale_factors)
        ]


class Sam3TrackerImageEncoder(nn.Module):
    """The interactive tracker's image encoder (`image_encoder.vision_backbone.*`): the trunk
    and the tracker's neck, the coarsest `scalp` levels dropped. (B, S, S, 3) -> the dict of
    `Sam2ImageEncoder`: `backbone_fpn` [(B, 4g, 4g, D), (B, 2g, 2g, D), (B, g, g, D)] with
    g = S / 14, `vision_pos_enc` [(1, h_i, w_i, D)] and `vision_features` = the g x g level,
    all float32."""

    config: Sam3VisionConfig
    scalp: int = 1
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> dict:
        if not self.config.add_sam2_neck:
            raise ValueError("the tracker reads the SAM 2 neck: add_sam2_neck must be True")
        out = Sam3DualViTDetNeck(
            self.config, remat=self.remat, dtype=self.dtype, name="vision_backbone"
        )(images, detector_neck=False)
        keep = len(out.sam2_features) - self.scalp
        features, pos = out.sam2_features[:keep], out.sam2_pos[:keep]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
