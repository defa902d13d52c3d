"""SAM 3's detection head: dot-product query scores against the pooled prompt, and boxes.

    prompt' = out_norm(prompt + layers_1(relu(layers_0(prompt))))     (B, P, D), prompt_mlp
    pooled  = sum_p valid[p] prompt'[p] / max(1, sum_p valid[p])        (B, D)
    logits  = clip(hs_proj(hs) . prompt_proj(pooled) / sqrt(d_proj), -12, 12)   (B, Q, 1)

(ultralytics' DotProductScoring as `build_sam3_image_model` configures it: a 2-layer
residual prompt MLP of width 2048 with a LayerNorm on its output, d_proj = d_model.) The
prompt MLP runs over every prompt token, padding too, before the masked mean; a prompt with
no valid token pools to zeros. Parameter names are the reference's `dot_prod_scoring.*`.

`detections` then assembles what SAM3SemanticModel._update_scores_and_boxes keeps: the last
decoder layer's logits, boxes (cxcywh and xyxy) and presence logit. The boxes are the
decoder's own refinement of its last layer (`DecoderOutput.boxes[-1]`): the reference
recomputes sigmoid(inverse_sigmoid(reference box) + bbox_embed(hs)) there with the same
`transformer.decoder.bbox_embed` on the same values, so there is nothing to redo.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import Dense, layer_norm
from sam_jax.models.sam3_detr_decoder import DecoderOutput, cxcywh_to_xyxy

SCORE_LOGIT_MAX = 12.0  # the reference clamps the dot-product logits to +-12


class Detections(NamedTuple):
    """The detector's per-query outputs for its last decoder layer, float32.

    pred_logits: (B, Q, 1) query scores (logits, in [-12, 12]).
    pred_boxes: (B, Q, 4) cxcywh boxes in [0, 1] (normalised image coordinates).
    pred_boxes_xyxy: (B, Q, 4) the same boxes as corners (x1, y1, x2, y2).
    presence_logit: (B, 1) the presence token's logit in [-10, 10], or None without one.
    """

    pred_logits: jnp.ndarray
    pred_boxes: jnp.ndarray
    pred_boxes_xyxy: jnp.ndarray
    presence_logit: jnp.ndarray | None


class PromptMLP(nn.Module):
    """(..., D) -> (..., D): out_norm(x + layers_1(relu(layers_0(x)))) (ultralytics MLP
    with residual=True and an output LayerNorm)."""

    hidden_dim: int = 2048

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = jax.nn.relu(Dense(self.hidden_dim, name="layers_0")(x))
        h = Dense(x.shape[-1], name="layers_1")(h)
        return layer_norm(name="out_norm")(x + h)


class DotProductScoring(nn.Module):
    """Query scores from the dot product with the mean-pooled, projected prompt.

    hs (..., B, Q, D) (one layer or stacked layers), prompt (B, P, D), prompt_valid (B, P)
    bool -> (..., B, Q, 1) float32 logits; the math in the module docstring.
    """

    d_proj: int = 256
    mlp_dim: int = 2048

    @nn.compact
    def __call__(
        self, hs: jnp.ndarray, prompt: jnp.ndarray, prompt_valid: jnp.ndarray
    ) -> jnp.ndarray:
        _check_inputs(hs, prompt, prompt_valid)
        f32 = jnp.float32
        prompt = PromptMLP(self.mlp_dim, name="prompt_mlp")(prompt.astype(f32))
        weight = prompt_valid.astype(f32)[..., None]  # (B, P, 1)
        count = jnp.maximum(jnp.sum(weight, axis=1), 1.0)  # (B, 1)
        pooled = jnp.sum(prompt * weight, axis=1) / count  # (B, D)
        key = Dense(self.d_proj, name="prompt_proj")(pooled)  # (B, d_proj)
        queries = Dense(self.d_proj, name="hs_proj")(hs.astype(f32))  # (..., B, Q, d_proj)
        scores = jnp.einsum("...bqc,bc->...bq", queries, key)[..., None]
        scores = scores * (1.0 / float(self.d_proj) ** 0.5)
        return jnp.clip(scores, -SCORE_LOGIT_MAX, SCORE_LOGIT_MAX)


def detections(decoder_out: DecoderOutput, scores: jnp.ndarray) -> Detections:
    """The head outputs of SAM3SemanticModel for the last decoder layer.

    `scores`: DotProductScoring's logits for the last layer (B, Q, 1), or for every layer
    (L, B, Q, 1) (the last is taken). Boxes and presence come from `decoder_out`.
    """
    boxes = decoder_out.boxes[-1]
    if scores.ndim == 4:
        scores = scores[-1]
    if scores.shape != (*boxes.shape[:2], 1):
        raise ValueError(
            f"scores must be (B, Q, 1) = {(*boxes.shape[:2], 1)} or (L, B, Q, 1), got "
            f"{scores.shape}"
        )
    presence = decoder_out.presence_logits
    return Detections(
        pred_logits=scores,
        pred_boxes=boxes,
        pred_boxes_xyxy=cxcywh_to_xyxy(boxes),
        presence_logit=None if presence is None else presence[-1],
    )


def _check_inputs(hs: jnp.ndarray, prompt: jnp.ndarray, prompt_valid: jnp.ndarray) -> None:
    """ValueError naming the first input that does not fit."""
    if prompt.ndim != 3:
        raise ValueError(f"prompt must be (B, P, D), got shape {prompt.shape}")
    b, _, d = prompt.shape
    if hs.ndim not in (3, 4) or hs.shape[-3] != b or hs.shape[-1] != d:
        raise ValueError(
            f"hs must be (B, Q, D) or (L, B, Q, D) with B = {b}, D = {d}; got shape {hs.shape}"
        )
    if prompt_valid.shape != prompt.shape[:2] or prompt_valid.dtype != jnp.bool_:
        raise ValueError(
            f"prompt_valid must be a bool array of shape {prompt.shape[:2]}, got "
            f"{prompt_valid.dtype} {prompt_valid.shape}"
        )
