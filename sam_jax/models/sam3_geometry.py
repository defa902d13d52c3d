"""SAM 3's geometry (box exemplar) encoder, and torchvision's roi_align in JAX.

    boxes (B, N, 4) normalised (cx, cy, w, h), labels (B, N), valid (B, N),
    image (B, H, W, D), image_pos (1 or B, H, W, D)
      -> e = boxes_direct_project(boxes)
           + boxes_pool_project(roi_align(img_pre_norm(image), xyxy(boxes) * (W, H, W, H), 7))
           + boxes_pos_enc_project([sine(cy), sine(cx), h, w])
           + label_embed[labels]                                          (B, N, D)
      -> the CLS token inserted right after each item's valid boxes      (B, N + 1, D)
      -> norm(final_proj(.)) -> geometry_layers x Sam3EncoderLayer (self-attention among
         the valid tokens, cross-attention to the raw image tokens with image_pos on the keys)
      -> encode_norm -> GeometryPrompt(tokens (B, N + 1, D), valid (B, N + 1))

The box format is the reference's (ultralytics' SAM 3 predictor divides pixel boxes by the
image size, as cx, cy, w, h in [0, 1]); label 1 marks a positive exemplar, 0 a negative one.
The pooling reads the image after `img_pre_norm` (a LayerNorm over channels) while the
cross-attention reads it without; sine(t) is the DETR encoding of t * 2 pi, D / 2 channels
of interleaved sin / cos (no normalisation by a grid), and the height comes before the width.
The CLS placement is the reference's concatenation of right-padded sequences: box slots
0..n-1 keep the n valid boxes, slot n holds CLS, later slots keep the padded boxes' values
(slot N is zero), and the output is valid exactly at slots 0..n. Every token is computed,
padded ones included. This is the only prompt SequenceGeometryEncoder takes (boxes; it has
no point or mask path). Parameters mirror `geometry_encoder.*` of a SAM 3 detector.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.models.layers import Conv, Dense, Table, layer_norm
from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_detr_decoder import cxcywh_to_xyxy
from sam_jax.models.sam3_encoder_layer import Sam3EncoderLayer


def _divide(x: jnp.ndarray, y) -> jnp.ndarray:
    """x / y rounded as one IEEE division. XLA turns a division by a broadcast value into a
    product with its reciprocal, which can move ceil(length / output_size) off torchvision's
    sample count; a divisor of the full shape behind a barrier keeps the division."""
    shape = jnp.broadcast_shapes(jnp.shape(x), jnp.shape(y))
    y = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(y, x.dtype), shape))
    return jnp.broadcast_to(x, shape) / y


def _times_small_int(k: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """k * x rounded once, for integer-valued k in [0, 256): as the sum of two exact products
    (x split at its 8 low mantissa bits), so that a fused multiply-add XLA may form with the
    next addition rounds as the reference's separate product and sum do."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    x_hi = jax.lax.bitcast_convert_type(bits & jnp.int32(~0xFF), x.dtype)
    return k * x_hi + k * (x - x_hi)


def _axis_weights(start, end, size: int, out: int, sampling_ratio: int, aligned: bool, cap: int):
    """Per box, the (out, size) matrix summing one axis's bilinear weights over each bin's
    samples, and the number of samples per bin on this axis.

    Samples follow torchvision's kernel: bin p's sample i sits at start + p * bin +
    (i + 0.5) * bin / grid; a sample outside [-1, size] weighs nothing, one in [-1, 0] reads
    row 0, and one past size - 1 reads the last row.
    """
    length = end - start
    if not aligned:
        length = jnp.maximum(length, 1.0)
    bin_size = _divide(length, out)
    if sampling_ratio > 0:
        grid, cap = jnp.full_like(length, sampling_ratio), sampling_ratio
    else:
        grid = jnp.minimum(jnp.ceil(bin_size), cap)
    i = jnp.arange(cap, dtype=length.dtype) + 0.5
    p = jnp.arange(out, dtype=length.dtype)[:, None]
    b, g = bin_size[..., None, None], grid[..., None, None]
    pos = start[..., None, None] + _times_small_int(p, b) + _divide(i * b, g)  # (..., out, cap)
    weight = (i < g) & (pos >= -1.0) & (pos <= size)
    pos = jnp.clip(pos, 0.0, size)  # the weight above already drops what lies outside
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, pos - low)
    onehot = lambda k: jax.nn.one_hot(k, size, dtype=pos.dtype)  # noqa: E731
    w = onehot(low) * (1.0 - frac)[..., None] + onehot(high) * frac[..., None]
    w = jnp.where(weight[..., None], w, 0.0)
    return w.sum(axis=-2), grid


def roi_align(
    features: jnp.ndarray,
    boxes: jnp.ndarray,
    output_size: int,
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_samples: int | None = None,
) -> jnp.ndarray:
    """torchvision.ops.roi_align (average RoIAlign, its CPU/CUDA kernel) on NHWC features.

    features (B, H, W, C); boxes (B, N, 4) as (x1, y1, x2, y2) in input coordinates (times
    `spatial_scale` gives feature pixels), the N boxes of item b read item b's map
    -> (B, N, output_size, output_size, C) in the promoted dtype of the two.

    Same arguments and meaning as torchvision's. With `sampling_ratio <= 0` a bin takes
    ceil(roi side / output_size) samples per axis; the count is data dependent, so shapes stay
    static by capping it at `max_samples` per axis (default: the map's side on that axis, as
    torchvision's compiled path does), which covers every RoI up to output_size times the map
    (boxes inside the map always). A longer RoI takes the capped count, evenly spaced, where
    torchvision takes more. Each bin is a separable weighted sum, Wy (out, H) @ map @ Wx^T
    (W, out) / count, equal to torchvision's per-sample sum up to float32 rounding. Sample
    positions are rounded as torchvision rounds them (a sample exactly on -1 or on the map's
    far edge is kept or dropped alike), except with both `aligned` and a `spatial_scale` that
    is not a power of two, where XLA may fuse the scaling and the offset into one rounding.
    """
    if features.ndim != 4 or boxes.ndim != 3 or boxes.shape[::2] != (features.shape[0], 4):
        raise ValueError(
            f"roi_align needs features (B, H, W, C) and boxes (B, N, 4); got {features.shape} "
            f"and {boxes.shape}"
        )
    if not 1 <= output_size <= 256 or (max_samples is not None and max_samples < 1):
        raise ValueError(
            f"output_size must be in [1, 256] and max_samples >= 1; got {output_size}, {max_samples}"
        )
    _, h, w, _ = features.shape
    dt = jnp.promote_types(features.dtype, boxes.dtype)
    rois = boxes.astype(jnp.float32)  # sample positions are float32 whatever the inputs
    rois = rois if spatial_scale == 1.0 else rois * spatial_scale
    rois = rois - 0.5 if aligned else rois
    x1, y1, x2, y2 = (rois[..., i] for i in range(4))
    wy, gy = _axis_weights(y1, y2, h, output_size, sampling_ratio, aligned, max_samples or h)
    wx, gx = _axis_weights(x1, x2, w, output_size, sampling_ratio, aligned, max_samples or w)
    out = jnp.einsum(
        "bnph,bhwc,bnqw->bnpqc",
        wy,
        features.astype(jnp.float32),
        wx,
        precision=jax.lax.Precision.HIGHEST,
    )
    count = jnp.maximum(gy * gx, 1.0)
    return (out / count[..., None, None, None]).astype(dt)


def box_sine_encoding(boxes: jnp.ndarray, num_feats: int) -> jnp.ndarray:
    """(..., 4) normalised (cx, cy, w, h) -> (..., num_feats + 2): [sine(cy), sine(cx), h, w].

    sine(t) has num_feats / 2 channels, sin(t * 2 pi / T_k) at even k and cos at odd k, with
    T_k = 10000 ** (2 * (k // 2) / (num_feats / 2)).
    """
    if num_feats % 4:
        raise ValueError(f"the box sine encoding needs num_feats divisible by 4; got {num_feats}")
    half = num_feats // 2
    k = np.arange(half, dtype=np.float32)
    dim_t = jnp.asarray(10000.0 ** (2 * (k // 2) / half), jnp.float32)
    boxes = boxes.astype(jnp.float32)

    def sine(t: jnp.ndarray) -> jnp.ndarray:
        a = (t * (2 * math.pi))[..., None] / dim_t
        pairs = jnp.stack([jnp.sin(a[..., 0::2]), jnp.cos(a[..., 1::2])], axis=-1)
        return pairs.reshape(*t.shape, half)

    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return jnp.concatenate([sine(cy), sine(cx), h[..., None], w[..., None]], axis=-1)


def insert_cls(tokens: jnp.ndarray, valid: jnp.ndarray, cls: jnp.ndarray):
    """(B, N, D) right-padded tokens, (B, N) valid, (D,) cls -> (B, N + 1, D) with cls at
    slot n_b = valid[b].sum(), slot N zero, other slots as given; valid (B, N + 1) = slot <= n_b."""
    b, n, d = tokens.shape
    count = valid.sum(axis=1)[:, None]
    slots = jnp.arange(n + 1)[None, :]
    padded = jnp.concatenate([tokens, jnp.zeros((b, 1, d), tokens.dtype)], axis=1)
    out = jnp.where((slots == count)[..., None], cls.astype(tokens.dtype), padded)
    return out, slots <= count


class GeometryPrompt(NamedTuple):
    """The encoded box prompt: tokens (B, N + 1, D) float32 and valid (B, N + 1) bool (the
    valid boxes, then CLS). Concatenate after the text tokens to form the detector's prompt."""

    tokens: jnp.ndarray
    valid: jnp.ndarray


def _check_inputs(boxes, labels, valid, image, image_pos, d_model: int) -> None:
    """ValueError naming the first input whose shape, type or padding does not fit."""
    if image.ndim != 4 or image.shape[-1] != d_model:
        raise ValueError(f"image must be (B, H, W, {d_model}) NHWC; got {image.shape}")
    b, h, w, d = image.shape
    if image_pos.ndim != 4 or image_pos.shape[0] not in (1, b) or image_pos.shape[1:] != (h, w, d):
        raise ValueError(f"image_pos must be (1 or {b}, {h}, {w}, {d}); got {image_pos.shape}")
    if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be ({b}, N, 4) normalised (cx, cy, w, h); got {boxes.shape}")
    if labels.shape != boxes.shape[:2] or not (
        jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_
    ):
        raise ValueError(
            f"labels must be integers or bools of shape {boxes.shape[:2]} (1 positive, 0 "
            f"negative); got {labels.dtype} {labels.shape}"
        )
    if valid.shape != boxes.shape[:2] or valid.dtype != jnp.bool_:
        raise ValueError(
            f"valid must be a bool array of shape {boxes.shape[:2]}; got {valid.dtype} {valid.shape}"
        )
    try:
        concrete = np.asarray(valid)
    except jax.errors.TracerArrayConversionError:
        return  # traced: right padding is the caller's promise
    if (np.diff(concrete.astype(np.int8), axis=1) > 0).any():
        raise ValueError("valid must be right-padded: each item's valid boxes first, padding after")


class Sam3GeometryEncoder(nn.Module):
    """ultralytics' SequenceGeometryEncoder as build_sam3_image_model configures it: box
    direct projection, RoI pooling and sine encoding, label embedding, CLS token, post-encode
    projection and `config.geometry_layers` encoder layers (module docstring)."""

    config: Sam3DetectorConfig
    roi_size: int = 7
    remat: bool = False  # recompute layers in the backward pass
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        boxes: jnp.ndarray,
        labels: jnp.ndarray,
        valid: jnp.ndarray,
        image: jnp.ndarray,
        image_pos: jnp.ndarray,
    ) -> GeometryPrompt:
        """boxes (B, N, 4) normalised (cx, cy, w, h); labels (B, N) 1 positive / 0 negative
        (any other label gives NaN rows); valid (B, N) bool, right-padded (checked when
        concrete); image (B, H, W, D) NHWC, the detector's 1x neck level; image_pos (1 or B,
        H, W, D) its sine encoding -> GeometryPrompt (float32). N may be 0 (CLS only)."""
        cfg, dt = self.config, self.dtype
        d = cfg.d_model
        _check_inputs(boxes, labels, valid, image, image_pos, d)
        b, h, w, _ = image.shape
        n = boxes.shape[1]
        boxes = boxes.astype(jnp.float32)

        x = Dense(d, dtype=dt, name="boxes_direct_project")(boxes)
        pooled = roi_align(
            layer_norm(1e-5, name="img_pre_norm")(image),
            cxcywh_to_xyxy(boxes) * jnp.asarray([w, h, w, h], jnp.float32),
            self.roi_size,
        )
        pool_proj = Conv(
            d, (self.roi_size,) * 2, padding="VALID", dtype=dt, name="boxes_pool_project"
        )
        x = x + pool_proj(pooled.reshape(b * n, self.roi_size, self.roi_size, d)).reshape(b, n, d)
        x = x + Dense(d, dtype=dt, name="boxes_pos_enc_project")(box_sine_encoding(boxes, d))
        labels = labels.astype(jnp.int32)
        labels = jnp.where((labels == 0) | (labels == 1), labels, 2)  # 2: off the table, NaN
        labels_table = Table(2, d, name="label_embed")()
        x = jnp.take(labels_table, labels, axis=0, mode="fill").astype(dt) + x

        cls = Table(1, d, name="cls_embed")()[0]
        x, tokens_valid = insert_cls(x, valid, cls)
        x = Dense(d, dtype=dt, name="final_proj")(x)
        x = layer_norm(1e-5, name="norm", dtype=dt)(x)

        memory = image.reshape(b, h * w, d)
        pos = image_pos.reshape(-1, h * w, d)
        layer = nn.remat(Sam3EncoderLayer) if self.remat else Sam3EncoderLayer
        for i in range(cfg.geometry_layers):
            x = layer(
                num_heads=cfg.num_heads,
                dim_feedforward=cfg.dim_feedforward,
                pos_enc_at_cross_attn_keys=True,
                dtype=dt,
                name=f"encode_{i}",
            )(x, memory, tgt_valid=tokens_valid, pos=pos)
        x = layer_norm(1e-5, name="encode_norm", dtype=dt)(x)
        return GeometryPrompt(x.astype(jnp.float32), tokens_valid)
