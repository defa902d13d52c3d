"""SAM 3's segmentation head: a pixel decoder over the backbone's FPN, per-query masks and
a semantic map (ultralytics' UniversalSegmentationHead as build_sam3_image_model sets it up).

    encoder states E (B, h*w, D), prompt P (B, P, D) with its valid mask
      E <- E + cross_attend_prompt(cross_attn_norm(E), P, P)   (8-head MHA, padded keys masked)
    levels [F_0 (4h, 4w), ..., F_{n-1} (2h, 2w), F_n (h, w)], finest first, NHWC width D
      F_n is replaced by E reshaped to (B, h, w, D); then from coarse to fine
      x <- relu(norms_i(conv_layers_i(F_{n-1-i} + nearest_upsample(x))))   -> pixels (B, 4h, 4w, D)
    pred_masks[b, q] = <mask_embed(queries[b, q]), instance_seg_head(pixels)[b]>  (B, Q, 4h, 4w)
    semantic_seg = semantic_seg_head(pixels)                                       (B, 1, 4h, 4w)

conv_layers_i are 3x3 convolutions (padding 1), norms_i GroupNorm(8 groups, eps 1e-5),
mask_embed a 3-layer ReLU MLP, the two heads 1x1 convolutions. The released model has
three upsampling stages but only three levels reach the head (SAM3VLBackbone's scalp=1
drops the 0.5 level), so stage 2 (`conv_layers_2`, `norms_2`) is never run; its
parameters exist so that checkpoints load strictly. The queries are the decoder's last
layer (after its output LayerNorm): the reference gets every layer but reads only the last.
Parameters mirror torch `segmentation_head.*` of SAM3SemanticModel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import MLP, Conv, layer_norm
from sam_jax.models.mha import MultiheadAttention
from sam_jax.models.resize import resize_nearest
from sam_jax.models.sam3_config import Sam3DetectorConfig

_GROUPS = 8  # GroupNorm groups of every pixel-decoder stage


class SegmentationOutput(NamedTuple):
    """The reference's output dict as fields, float32 logits on the finest level's grid
    (H0, W0) = (4h, 4w): `pred_masks` (B, Q, H0, W0) one mask per query, `semantic_seg`
    (B, 1, H0, W0) one map per prompt. `presence_logit` is always None: the released model
    has no presence head here (the decoder's presence token scores presence)."""

    pred_masks: jnp.ndarray
    semantic_seg: jnp.ndarray
    presence_logit: None = None


class PixelDecoder(nn.Module):
    """Levels finest first, (B or 1, H_i, W_i, D) each, the last (B, h, w, D)
    -> (B, H_0, W_0, D) after ReLU.

    Each finer level adds the running map upsampled by torch's 'nearest' rule to its own
    size (any sizes; 2x in SAM 3), then conv_layers_i, norms_i and ReLU, for i = 0, 1, ...
    from the coarsest step. At most `num_upsampling_stages` + 1 levels; stages the levels
    do not reach are created at init only.
    """

    hidden_dim: int = 256
    num_upsampling_stages: int = 3
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, levels: Sequence[jnp.ndarray]) -> jnp.ndarray:
        d, n, dt = self.hidden_dim, self.num_upsampling_stages, self.dtype
        if not 1 <= len(levels) <= n + 1:
            raise ValueError(f"the pixel decoder takes 1 to {n + 1} levels; got {len(levels)}")
        convs = [
            Conv(d, (3, 3), padding=((1, 1), (1, 1)), dtype=dt, name=f"conv_layers_{i}")
            for i in range(n)
        ]
        norms = [
            nn.GroupNorm(
                _GROUPS, epsilon=1e-5, use_fast_variance=False, dtype=dt, name=f"norms_{i}"
            )
            for i in range(n)
        ]
        x = levels[-1].astype(dt)
        for i, feat in enumerate(reversed(levels[:-1])):
            x = feat.astype(dt) + resize_nearest(x, feat.shape[1:3])
            x = jax.nn.relu(norms[i](convs[i](x)))
        if self.is_initializing():  # the checkpoint stores every stage, used or not
            for conv, norm in zip(convs[len(levels) - 1 :], norms[len(levels) - 1 :], strict=True):
                norm(conv(jnp.zeros((1, 1, 1, d), dt)))
        return x


class MaskPredictor(nn.Module):
    """Queries (B, Q, D) and per-pixel embeddings (B, H, W, D) -> (B, Q, H, W) logits,
    the dot product of mask_embed(query) with each pixel."""

    hidden_dim: int = 256
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, queries: jnp.ndarray, pixels: jnp.ndarray) -> jnp.ndarray:
        d = self.hidden_dim
        embed = MLP(d, d, 3, dtype=self.dtype, name="mask_embed")(queries.astype(self.dtype))
        return jnp.einsum("bqc,bhwc->bqhw", embed, pixels.astype(self.dtype))


class UniversalSegmentationHead(nn.Module):
    """SAM 3's segmentation head; the math is in the module docstring.

    Call with `backbone_fpn` (the FPN levels after scalp, finest first: at 1008 px
    [(B|1, 288, 288, D), (B|1, 144, 144, D), (B|1, 72, 72, D)]; only the last level's
    shape is read, its values are replaced by the encoder states), `queries` (B, Q, D)
    (the decoder's last layer), `encoder_hidden_states` (B, h*w, D) (the fusion encoder's
    output over the last level's grid, row-major), `prompt` (B, P, D) and `prompt_valid`
    (B, P) bool, True at real prompt tokens (None: all valid). Levels of batch 1 are shared
    by the B prompts. A batch item with no valid prompt token gets a zero attention update
    (torch gives NaN). Returns SegmentationOutput, float32 whatever `dtype`.
    """

    config: Sam3DetectorConfig = Sam3DetectorConfig()
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        backbone_fpn: Sequence[jnp.ndarray],
        queries: jnp.ndarray,
        encoder_hidden_states: jnp.ndarray,
        prompt: jnp.ndarray,
        prompt_valid: jnp.ndarray | None = None,
    ) -> SegmentationOutput:
        cfg, dt = self.config, self.dtype
        d = cfg.d_model
        _check_inputs(backbone_fpn, queries, encoder_hidden_states, prompt, prompt_valid, cfg)
        states = encoder_hidden_states.astype(dt)
        normed = layer_norm(1e-5, name="cross_attn_norm", dtype=dt)(states)
        attended = MultiheadAttention(cfg.num_heads, dtype=dt, name="cross_attend_prompt")(
            normed, prompt.astype(dt), prompt.astype(dt), key_mask=prompt_valid
        )
        states = states + attended
        b, (h, w) = states.shape[0], backbone_fpn[-1].shape[1:3]
        levels = [*backbone_fpn[:-1], states.reshape(b, h, w, d)]
        pixels = PixelDecoder(d, cfg.mask_upsampling_stages, dtype=dt, name="pixel_decoder")(levels)
        instance = Conv(d, (1, 1), dtype=dt, name="instance_seg_head")(pixels)
        masks = MaskPredictor(d, dtype=dt, name="mask_predictor")(queries, instance)
        semantic = Conv(1, (1, 1), dtype=dt, name="semantic_seg_head")(pixels)
        return SegmentationOutput(
            pred_masks=masks.astype(jnp.float32),
            semantic_seg=jnp.moveaxis(semantic, -1, 1).astype(jnp.float32),
        )


def _check_inputs(
    levels: Sequence[jnp.ndarray],
    queries: jnp.ndarray,
    states: jnp.ndarray,
    prompt: jnp.ndarray,
    prompt_valid: jnp.ndarray | None,
    cfg: Sam3DetectorConfig,
) -> None:
    """ValueError naming the first input whose shape does not fit the others."""
    d = cfg.d_model
    if states.ndim != 3 or states.shape[-1] != d:
        raise ValueError(f"encoder_hidden_states must be (B, h*w, {d}); got {states.shape}")
    b = states.shape[0]
    if not 1 <= len(levels) <= cfg.mask_upsampling_stages + 1:
        raise ValueError(
            f"backbone_fpn must hold 1 to {cfg.mask_upsampling_stages + 1} levels; "
            f"got {len(levels)}"
        )
    for i, level in enumerate(levels):
        if level.ndim != 4 or level.shape[-1] != d or level.shape[0] not in (1, b):
            raise ValueError(
                f"backbone_fpn[{i}] must be (B or 1, H, W, {d}) with B = {b}; got {level.shape}"
            )
    h, w = levels[-1].shape[1:3]
    if states.shape[1] != h * w:
        raise ValueError(
            f"encoder_hidden_states has {states.shape[1]} tokens; the last backbone_fpn "
            f"level's {h}x{w} grid needs {h * w}"
        )
    if queries.ndim != 3 or queries.shape[0] != b or queries.shape[-1] != d:
        raise ValueError(
            f"queries must be (B, Q, {d}) with B = {b} (the decoder's last layer, not every "
            f"layer); got {queries.shape}"
        )
    if prompt.ndim != 3 or prompt.shape[0] != b or prompt.shape[-1] != d:
        raise ValueError(f"prompt must be (B, P, {d}) with B = {b}; got {prompt.shape}")
    if prompt_valid is not None and (
        prompt_valid.shape != prompt.shape[:2] or prompt_valid.dtype != jnp.bool_
    ):
        raise ValueError(
            f"prompt_valid must be bool {prompt.shape[:2]}; got {prompt_valid.dtype} "
            f"{prompt_valid.shape}"
        )
