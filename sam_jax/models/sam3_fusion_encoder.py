"""SAM 3's image-prompt fusion encoder: image tokens attend to themselves and to the prompt.

    image (B, H, W, D), image_pos (1 or B, H, W, D), prompt (B, L, D), prompt_valid (B, L)
      -> x = image flattened row-major to (B, HW, D), pos likewise
      -> encoder_layers x Sam3EncoderLayer(pos_enc_at_attn=True): pre-norm self-attention of
         the image tokens with pos on queries and keys, cross-attention to the prompt (no
         position on either side; prompt_valid is the key mask), ReLU FFN
      -> FusionEncoderOutput(memory = x (B, HW, D), pos (B, HW, D), spatial_shape (H, W),
         valid_ratios (B, 1, 2) ones)

As the released model builds ultralytics' TransformerEncoderFusion: one feature level (the
1x neck level, 72 x 72 at 1008 px) and so no level embedding, no pooled text added to the
image (add_pooled_text_to_img_feat=False, so pool_text_with_mask has no effect), no image
padding mask (every image token is a valid key), no final norm. The prompt (text tokens then
geometry tokens, concatenated by the caller) is read, never updated: the reference's
"memory_text" output is its input prompt, so this returns nothing for it. Its valid ratios
are all ones (no padding mask) and are returned for the decoder's reference-point scaling.

Parameters mirror `transformer.encoder.*` of a SAM 3 detector: `layers_{i}` (torch
`layers.{i}`), each a Sam3EncoderLayer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_encoder_layer import Sam3EncoderLayer


class FusionEncoderOutput(NamedTuple):
    """The encoded image for the decoder and the segmentation head.

    memory: (B, HW, D) float32, row-major tokens of the (H, W) grid.
    pos: (B, HW, D) float32, the image position encoding flattened the same way (the
        reference's "pos_embed", unchanged by the encoder).
    spatial_shape: (H, W) Python ints (static while traced inside a model).
    valid_ratios: (B, 1, 2) float32 ones, (w, h) valid fraction of the one level.
    """

    memory: jnp.ndarray
    pos: jnp.ndarray
    spatial_shape: tuple[int, int]
    valid_ratios: jnp.ndarray


def _check_inputs(image, image_pos, prompt, prompt_valid, d_model: int) -> None:
    """ValueError naming the first input whose shape or type does not fit."""
    if image.ndim != 4 or image.shape[-1] != d_model:
        raise ValueError(f"image must be (B, H, W, {d_model}) NHWC; got {image.shape}")
    b, h, w, _ = image.shape
    if (
        image_pos.ndim != 4
        or image_pos.shape[0] not in (1, b)
        or image_pos.shape[1:]
        != (
            h,
            w,
            d_model,
        )
    ):
        raise ValueError(
            f"image_pos must be (1 or {b}, {h}, {w}, {d_model}); got {image_pos.shape}"
        )
    if prompt.ndim != 3 or prompt.shape[0] != b or prompt.shape[2] != d_model:
        raise ValueError(f"prompt must be ({b}, L, {d_model}); got {prompt.shape}")
    if prompt_valid.shape != prompt.shape[:2] or prompt_valid.dtype != jnp.bool_:
        raise ValueError(
            f"prompt_valid must be a bool array of shape {prompt.shape[:2]}; got "
            f"{prompt_valid.dtype} {prompt_valid.shape}"
        )


class Sam3FusionEncoder(nn.Module):
    """The fusion encoder (module docstring) with the sizes of `config`."""

    config: Sam3DetectorConfig
    remat: bool = False  # recompute layers in the backward pass
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        image: jnp.ndarray,
        image_pos: jnp.ndarray,
        prompt: jnp.ndarray,
        prompt_valid: jnp.ndarray,
    ) -> FusionEncoderOutput:
        """image (B, H, W, D) NHWC, image_pos (1 or B, H, W, D), prompt (B, L, D), prompt_valid
        (B, L) bool (True: a real prompt token) -> FusionEncoderOutput (float32). An item
        whose prompt has no valid token gets no cross-attention update (torch: NaN)."""
        cfg = self.config
        _check_inputs(image, image_pos, prompt, prompt_valid, cfg.d_model)
        b, h, w, d = image.shape
        x = image.reshape(b, h * w, d)
        pos = jnp.broadcast_to(image_pos.reshape(-1, h * w, d), (b, h * w, d))
        layer = nn.remat(Sam3EncoderLayer) if self.remat else Sam3EncoderLayer
        for i in range(cfg.encoder_layers):
            x = layer(
                num_heads=cfg.num_heads,
                dim_feedforward=cfg.dim_feedforward,
                pos_enc_at_attn=True,
                dtype=self.dtype,
                name=f"layers_{i}",
            )(x, prompt, memory_valid=prompt_valid, query_pos=pos)
        return FusionEncoderOutput(
            memory=x.astype(jnp.float32),
            pos=pos.astype(jnp.float32),
            spatial_shape=(h, w),
            valid_ratios=jnp.ones((b, 1, 2), jnp.float32),
        )
