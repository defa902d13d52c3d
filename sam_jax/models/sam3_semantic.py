"""SAM 3's concept model: text and exemplar-box prompts -> every matching instance.

    feats = model.apply(params, images, method="encode_image")   # once per image
    text = model.apply(params, ids, method="encode_text")        # once per caption set
    out = model.apply(params, feats, text, boxes=..., method="detect")

One image's features serve T prompts (the reference batches prompts, not images): `detect`
broadcasts features of batch 1 to the T captions. Per prompt t the prompt sequence is the
caption's tokens, then (with boxes) the geometry encoder's box tokens and its CLS token;
the fusion encoder conditions the 1x image level on it, the DETR decoder's queries read
the result, the dot-product scorer rates each query against the prompt and the
segmentation head draws each query's mask at 4x the grid.

Parameters mirror the `detector.*` keys of a SAM 3 checkpoint with the prefix stripped
(`backbone.vision_backbone.*`, `backbone.language_backbone.*`, `geometry_encoder.*`,
`transformer.encoder.*`, `transformer.decoder.*`, `dot_prod_scoring.*`,
`segmentation_head.*`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.config import Sam3SemanticConfig
from sam_jax.models.sam3_detr_decoder import Sam3DetrDecoder
from sam_jax.models.sam3_fusion_encoder import Sam3FusionEncoder
from sam_jax.models.sam3_geometry import Sam3GeometryEncoder
from sam_jax.models.sam3_neck import Sam3DualViTDetNeck
from sam_jax.models.sam3_scoring import DotProductScoring, detections
from sam_jax.models.sam3_seg_head import UniversalSegmentationHead
from sam_jax.models.sam3_text import Sam3TextEncoder


class Sam3VLBackbone(nn.Module):
    """The vision backbone and the text encoder side by side (`backbone.*`)."""

    config: Sam3SemanticConfig
    remat: bool = False
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.vision_backbone = Sam3DualViTDetNeck(cfg.encoder, self.remat, self.dtype)
        self.language_backbone = Sam3TextEncoder(cfg.text, self.remat, self.dtype)

    def image(self, images: jnp.ndarray) -> dict:
        out = self.vision_backbone(images)
        keep = len(out.sam3_features) - self.config.scalp
        return {"backbone_fpn": out.sam3_features[:keep], "vision_pos_enc": out.sam3_pos[:keep]}

    def text(self, ids: jnp.ndarray) -> dict:
        return self.language_backbone(ids)


class Sam3Transformer(nn.Module):
    """The fusion encoder and the DETR decoder (`transformer.encoder` / `.decoder`)."""

    config: Sam3SemanticConfig
    remat: bool = False
    dtype: Any = jnp.float32

    def setup(self) -> None:
        det = self.config.detector
        self.encoder = Sam3FusionEncoder(det, self.remat, self.dtype)
        self.decoder = Sam3DetrDecoder(det, self.dtype)


class Sam3Semantic(nn.Module):
    """SAM 3's concept model; see the module docstring. Images are (B, S, S, 3), stretched
    to S and normalised with the config's pixel mean and std."""

    config: Sam3SemanticConfig
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters and outputs stay float32)

    def setup(self) -> None:
        cfg, det = self.config, self.config.detector
        if cfg.image_size % cfg.encoder.stride:
            raise ValueError(
                f"SAM 3 image size must be a multiple of {cfg.encoder.stride}, got {cfg.image_size}"
            )
        self.backbone = Sam3VLBackbone(cfg, self.remat, self.dtype)
        self.geometry_encoder = Sam3GeometryEncoder(det, remat=self.remat, dtype=self.dtype)
        self.transformer = Sam3Transformer(cfg, self.remat, self.dtype)
        self.dot_prod_scoring = DotProductScoring(det.d_model, det.scoring_mlp_dim)
        self.segmentation_head = UniversalSegmentationHead(det, dtype=self.dtype)

    def encode_image(self, images: jnp.ndarray) -> dict:
        """(B, S, S, 3) -> {"backbone_fpn": [(B, 4g, 4g, D), (B, 2g, 2g, D), (B, g, g, D)],
        "vision_pos_enc": the same grids (1, h_i, w_i, D)}, g = S / 14, float32."""
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"images must be (B, {s}, {s}, 3) for this model; got {images.shape}")
        return self.backbone.image(images)

    def encode_text(self, ids: jnp.ndarray) -> dict:
        """Token ids (T, L) (sam_jax.text.CLIPTokenizer rows) -> {"language_features"
        (T, L, D), "language_valid" (T, L) bool, "language_embeds" (T, L, width)}."""
        return self.backbone.text(ids)

    def detect(
        self,
        features: dict,
        text: dict,
        boxes: jnp.ndarray | None = None,
        box_labels: jnp.ndarray | None = None,
        box_valid: jnp.ndarray | None = None,
    ) -> dict:
        """Detections for T prompts on one image (features of batch 1) or on T images.

        text: encode_text's dict for the T captions; boxes (T, N, 4) normalised
        (cx, cy, w, h) exemplars with box_labels (T, N) (1 positive, 0 negative) and
        box_valid (T, N) bool (right-padded; default all valid).
        Returns float32 {"pred_logits" (T, Q), "presence_logit" (T,), "pred_boxes" (T, Q, 4)
        cxcywh in [0, 1], "pred_boxes_xyxy" (T, Q, 4), "pred_masks" (T, Q, 4g, 4g) logits,
        "semantic_seg" (T, 4g, 4g) logits}. A query's score is
        sigmoid(pred_logits) * sigmoid(presence_logit).
        """
        prompt, valid = text["language_features"], text["language_valid"]
        t = prompt.shape[0]
        fpn = [_batch(f, t, "features") for f in features["backbone_fpn"]]
        pos = features["vision_pos_enc"]
        image, image_pos = fpn[-1], pos[-1]
        if boxes is not None:
            box_labels, box_valid = _box_defaults(boxes, box_labels, box_valid, t)
            geo = self.geometry_encoder(boxes, box_labels, box_valid, image, image_pos)
            prompt = jnp.concatenate([prompt, geo.tokens], axis=1)
            valid = jnp.concatenate([valid, geo.valid], axis=1)
        enc = self.transformer.encoder(image, image_pos, prompt, valid)
        dec = self.transformer.decoder(
            enc.memory, enc.pos, prompt, valid, spatial_shape=enc.spatial_shape
        )
        queries = dec.hidden_states[-1]
        det = detections(dec, self.dot_prod_scoring(queries, prompt, valid))
        seg = self.segmentation_head(fpn, queries, enc.memory, prompt, valid)
        return {
            "pred_logits": det.pred_logits[..., 0],
            "presence_logit": det.presence_logit[..., 0],
            "pred_boxes": det.pred_boxes,
            "pred_boxes_xyxy": det.pred_boxes_xyxy,
            "pred_masks": seg.pred_masks,
            "semantic_seg": seg.semantic_seg[:, 0],
        }

    def __call__(self, images: jnp.ndarray, ids: jnp.ndarray, **prompts: Any) -> dict:
        return self.detect(self.encode_image(images), self.encode_text(ids), **prompts)

    def init_everything(self, images: jnp.ndarray) -> dict:
        """Runs every submodule once (exemplar boxes included) so `init` creates every
        parameter the checkpoints hold."""
        ids = jnp.zeros((1, self.config.text.context_length), jnp.int32)
        boxes = jnp.full((1, 1, 4), 0.5, jnp.float32)
        return self(images[:1], ids, boxes=boxes)


def _batch(x: jnp.ndarray, t: int, name: str) -> jnp.ndarray:
    """x (1 or t, ...) -> (t, ...)."""
    if x.shape[0] not in (1, t):
        raise ValueError(f"{name} have batch {x.shape[0]}; expected 1 or the {t} prompts")
    return jnp.broadcast_to(x, (t, *x.shape[1:]))


def _box_defaults(boxes, labels, valid, t: int):
    if boxes.ndim != 3 or boxes.shape[0] != t or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (T={t}, N, 4) normalised cxcywh; got {boxes.shape}")
    n = boxes.shape[1]
    labels = jnp.ones((t, n), jnp.int32) if labels is None else labels
    valid = jnp.ones((t, n), bool) if valid is None else valid
    return labels, valid
