"""The SAM 2 / SAM 2.1 model: image encoder, SAM heads and memory modules behind methods.

feats = model.apply(params, images, method="encode_image")       # dict, see encode_image
logits, iou, obj = model.apply(params, feats, point_coords=..., method="predict_masks")
out = model.apply(params, feats["vision_features"], ..., method="forward_sam_heads")

Parameters mirror the torch SAM2Model (`image_encoder.trunk.*`, `sam_mask_decoder.*`,
`memory_attention.*`, ...), so every checkpoint key maps to a Flax path generically.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.config import Sam2Config
from sam_jax.models.fpn_neck import Sam2ImageEncoder
from sam_jax.models.layers import MLP, Conv, Dense
from sam_jax.models.memory_attention import MemoryAttention
from sam_jax.models.memory_encoder import MemoryEncoder
from sam_jax.models.prompt_encoder import PromptEncoder
from sam_jax.models.resize import linear_weights, resize_bilinear_antialias
from sam_jax.models.sam import check_prompts, prompt_batch
from sam_jax.models.sam2_mask_decoder import Sam2MaskDecoder, take_best
from sam_jax.models.sam3_config import Sam3VisionConfig
from sam_jax.models.sam3_neck import Sam3TrackerImageEncoder

# Logit written where the object score says "no object" (the reference's NO_OBJ_SCORE).
NO_OBJ_SCORE = -1024.0


class SamHeadsOutput(NamedTuple):
    """What the SAM heads produce for one prompt set (M = 3 if multimask else 1).

    low_res_multimasks (B, M, S/4, S/4) and high_res_multimasks (B, M, S, S) logits, already
    set to -1024 where the object score is <= 0; ious (B, M); low_res_masks (B, 1, S/4, S/4)
    and high_res_masks (B, 1, S, S): the best-IoU mask when multimask, else the one mask;
    obj_ptr (B, D) object pointer (no_obj_ptr where no object); object_score_logits (B, 1).
    """

    low_res_multimasks: jnp.ndarray
    high_res_multimasks: jnp.ndarray
    ious: jnp.ndarray
    low_res_masks: jnp.ndarray
    high_res_masks: jnp.ndarray
    obj_ptr: jnp.ndarray
    object_score_logits: jnp.ndarray


class Sam2(nn.Module):
    """SAM 2 / 2.1. Images are (B, S, S, 3), normalised and letterboxed to S (S % 32 == 0)."""

    config: Sam2Config
    remat: bool = False
    dtype: Any = jnp.float32  # encoder / memory computation dtype; their outputs are float32

    def setup(self) -> None:
        cfg = self.config
        d, mem = cfg.d_model, cfg.mem_dim
        if isinstance(cfg.encoder, Sam3VisionConfig):
            if cfg.image_size % cfg.encoder.stride:
                raise ValueError(
                    f"SAM 3 image size must be a multiple of {cfg.encoder.stride}, "
                    f"got {cfg.image_size}"
                )
            self.image_encoder = Sam3TrackerImageEncoder(
                cfg.encoder, cfg.scalp, remat=self.remat, dtype=self.dtype
            )
        else:
            if cfg.image_size % 32:
                raise ValueError(f"SAM 2 image size must be a multiple of 32, got {cfg.image_size}")
            self.image_encoder = Sam2ImageEncoder(
                cfg.encoder,
                d,
                tuple(cfg.fpn_top_down_levels),
                cfg.scalp,
                remat=self.remat,
                dtype=self.dtype,
            )
        self.sam_prompt_encoder = PromptEncoder(
            d, cfg.image_size, cfg.mask_in_chans, stride=cfg.encoder.stride
        )
        self.sam_mask_decoder = Sam2MaskDecoder(
            d,
            cfg.num_multimask_outputs,
            cfg.decoder_depth,
            cfg.decoder_num_heads,
            cfg.decoder_mlp_dim,
            cfg.iou_head_depth,
            cfg.iou_head_hidden_dim,
            cfg.dynamic_multimask_stability_delta,
            cfg.dynamic_multimask_stability_thresh,
            sam2_mlp_names=not isinstance(cfg.encoder, Sam3VisionConfig),
        )
        self.memory_attention = MemoryAttention(
            d_model=d,
            num_layers=cfg.memory_attention_layers,
            dim_feedforward=cfg.memory_attention_mlp_dim,
            dtype=self.dtype,
        )
        self.memory_encoder = MemoryEncoder(out_dim=mem, dtype=self.dtype)
        init = nn.initializers.truncated_normal(0.02)
        self.maskmem_tpos_enc = self.param(
            "maskmem_tpos_enc", init, (cfg.num_maskmem, 1, 1, mem), jnp.float32
        )
        self.no_mem_embed = self.param("no_mem_embed", init, (1, 1, d), jnp.float32)
        self.no_mem_pos_enc = self.param("no_mem_pos_enc", init, (1, 1, d), jnp.float32)
        self.no_obj_ptr = self.param("no_obj_ptr", init, (1, d), jnp.float32)
        self.obj_ptr_proj = MLP(d, d, 3)
        # Turns a full-size mask prompt into SAM-logit-scale stride-4 input (video mode).
        self.mask_downsample = Conv(1, (4, 4), strides=(4, 4), padding="VALID")
        if cfg.no_obj_embed_spatial:
            self.no_obj_embed_spatial = self.param(
                "no_obj_embed_spatial", init, (1, mem), jnp.float32
            )
        if cfg.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = Dense(mem)

    # ----------------------------------------------------------------------------- image

    def encode_image(self, images: jnp.ndarray) -> dict:
        """(B, S, S, 3) -> dict of arrays (D = 256):

        vision_features (B, S/16, S/16, D): the stride-16 FPN level (no no_mem_embed yet);
        vision_pos_enc [(B, S/4, S/4, D), (B, S/8, S/8, D), (B, S/16, S/16, D)] sine encodings;
        backbone_fpn: the three FPN levels, the two finest already through conv_s0 / conv_s1;
        high_res_features [(B, S/4, S/4, D/8), (B, S/8, S/8, D/4)] = backbone_fpn[:2].
        """
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"images must be (B, {s}, {s}, 3) for this model; got {images.shape}")
        out = self.image_encoder(images)
        fpn = list(out["backbone_fpn"])
        # Projected once per image here rather than on every prompt, as the reference does.
        fpn[0], fpn[1] = self.sam_mask_decoder.project_high_res(fpn[0], fpn[1])
        b = images.shape[0]
        pos = [jnp.broadcast_to(p, (b, *p.shape[1:])) for p in out["vision_pos_enc"]]
        return {
            "vision_features": out["vision_features"],
            "vision_pos_enc": pos,
            "backbone_fpn": fpn,
            "high_res_features": fpn[:2],
        }

    # ------------------------------------------------------------------------- SAM heads

    def forward_sam_heads(
        self,
        backbone_features: jnp.ndarray,
        point_coords: jnp.ndarray | None = None,
        point_labels: jnp.ndarray | None = None,
        mask_inputs: jnp.ndarray | None = None,
        high_res_features: list[jnp.ndarray] | None = None,
        multimask_output: bool = False,
        decoder_cache: dict | None = None,
    ) -> SamHeadsOutput:
        """The reference's `_forward_sam_heads`.

        backbone_features (B, S/16, S/16, D): features as the decoder sees them (image mode
        adds no_mem_embed first; video mode passes memory-conditioned features).
        point_coords (B, N, 2) input pixels with point_labels (B, N) in {-1, 0, 1, 2, 3}
        (box corners are points labelled 2 and 3); none -> one padding point (label -1).
        The prompt encoder always appends one more padding point, as in the reference.
        mask_inputs (B, m, m, 1) logits; resized (bilinear, antialiased) to S/4 if m differs.
        high_res_features: encode_image's, or None to decode without the skips.
        The features may hold a batch of one for B prompts. decoder_cache: the decoder's
        per-image work (`decoder_cache`), read only without mask_inputs.
        """
        cfg = self.config
        g, d = cfg.embed_size, cfg.d_model
        if backbone_features.ndim != 4 or backbone_features.shape[1:] != (g, g, d):
            raise ValueError(
                f"backbone_features must be (B, {g}, {g}, {d}); got {backbone_features.shape}"
            )
        b = prompt_batch(
            backbone_features.shape[0], point_coords=point_coords, mask_inputs=mask_inputs
        )
        check_prompts(b, point_coords, point_labels, None, mask_inputs)
        if point_coords is None:
            point_coords = jnp.zeros((b, 1, 2), jnp.float32)
            point_labels = -jnp.ones((b, 1), jnp.int32)
        if mask_inputs is not None:
            m = cfg.mask_input_size
            mask_inputs = resize_bilinear_antialias(mask_inputs.astype(jnp.float32), (m, m))

        sparse, dense = self.sam_prompt_encoder(b, point_coords, point_labels, None, mask_inputs)
        masks, ious, tokens, obj_logits = self.sam_mask_decoder(
            backbone_features,
            self.sam_prompt_encoder.dense_pe(),
            sparse,
            dense,
            high_res_features,
            multimask_output,
            decoder_cache if mask_inputs is None else None,
        )
        # A hard object / no-object decision gates the masks (and memory) ...
        is_obj = obj_logits > 0  # (b, 1)
        masks = jnp.where(is_obj[:, :, None, None], masks, NO_OBJ_SCORE)
        s = cfg.image_size
        wh = jnp.asarray(linear_weights(masks.shape[-2], s), masks.dtype)
        ww = jnp.asarray(linear_weights(masks.shape[-1], s), masks.dtype)
        high = jnp.einsum("oh,bmhw,pw->bmop", wh, masks, ww)

        token = tokens[:, 0]
        if multimask_output:
            best = jnp.argmax(ious, axis=-1)
            low_best, high_best = take_best(masks, best), take_best(high, best)
            token = take_best(tokens, best)[:, 0]
        else:
            low_best, high_best = masks, high
        # ... and also the pointer: no_obj_ptr replaces it when there is no object.
        obj_ptr = self.obj_ptr_proj(token)
        lam = is_obj.astype(obj_ptr.dtype)
        obj_ptr = lam * obj_ptr + (1 - lam) * self.no_obj_ptr
        return SamHeadsOutput(masks, high, ious, low_best, high_best, obj_ptr, obj_logits)

    def predict_masks(
        self,
        features: dict,
        point_coords: jnp.ndarray | None = None,
        point_labels: jnp.ndarray | None = None,
        boxes: jnp.ndarray | None = None,
        mask_inputs: jnp.ndarray | None = None,
        multimask_output: bool = True,
        decoder_cache: dict | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Image mode. features: encode_image's dict (vision_features and high_res_features
        are read). Prompts as for SAM: point_coords (B, N, 2) pixels, point_labels (B, N),
        boxes (B, 4) xyxy, mask_inputs (B, S/4, S/4, 1) logits.

        Returns logits (B, M, S/4, S/4) (-1024 where the object score is <= 0), iou (B, M)
        and object_score_logits (B, 1); M = 3 if multimask_output else 1. Features of a
        batch of one are shared by the B prompts; decoder_cache: `decoder_cache(features)`,
        the decoder's per-image work, read only without mask_inputs.
        """
        emb = features["vision_features"]
        b = prompt_batch(
            emb.shape[0], point_coords=point_coords, boxes=boxes, mask_inputs=mask_inputs
        )
        check_prompts(b, point_coords, point_labels, boxes, mask_inputs)
        # The "no memory" state of a first frame: the learned no-memory token is added.
        emb = emb + self.no_mem_embed.reshape(1, 1, 1, -1).astype(emb.dtype)
        if boxes is not None:
            # SAM 2 feeds a box as its two corners, labelled 2 and 3, before the clicks.
            corners = boxes.astype(jnp.float32).reshape(b, 2, 2)
            corner_labels = jnp.broadcast_to(jnp.asarray([2, 3], jnp.int32), (b, 2))
            if point_coords is None:
                point_coords, point_labels = corners, corner_labels
            else:
                point_coords = jnp.concatenate([corners, point_coords.astype(jnp.float32)], 1)
                point_labels = jnp.concatenate(
                    [corner_labels, point_labels.astype(jnp.int32)], axis=1
                )
        out = self.forward_sam_heads(
            emb,
            point_coords,
            point_labels,
            mask_inputs,
            list(features["high_res_features"]),
            multimask_output,
            decoder_cache,
        )
        return out.low_res_multimasks, out.ious, out.object_score_logits

    def decoder_cache(self, features: dict) -> dict:
        """The mask decoder's prompt-independent work on an image's features (batch of one)
        in image mode, for `predict_masks(..., decoder_cache=...)` without mask inputs."""
        emb = features["vision_features"] + self.no_mem_embed.reshape(1, 1, 1, -1)
        dense = self.sam_prompt_encoder(1)[1]
        return self.sam_mask_decoder.image_cache(
            emb + dense, self.sam_prompt_encoder.dense_pe(), list(features["high_res_features"])
        )

    def __call__(self, images: jnp.ndarray, **prompts) -> tuple[jnp.ndarray, ...]:
        return self.predict_masks(self.encode_image(images), **prompts)

    # ----------------------------------------------------------------------------- init

    def init_everything(self, images: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
        """Runs every submodule once (the memory path included) so `init` creates every
        parameter the checkpoints hold."""
        cfg = self.config
        b = images.shape[0]
        feats = self.encode_image(images)
        m = cfg.mask_input_size
        out = self.predict_masks(
            feats,
            point_coords=jnp.zeros((b, 1, 2)),
            point_labels=jnp.ones((b, 1), jnp.int32),
            boxes=jnp.zeros((b, 4)),
            mask_inputs=jnp.zeros((b, m, m, 1)),
        )
        s, g = cfg.image_size, cfg.embed_size
        self.mask_downsample(jnp.zeros((b, s, s, 1), jnp.float32))
        heads = self.forward_sam_heads(feats["vision_features"], multimask_output=False)
        pix = feats["vision_features"]
        masks = heads.high_res_masks.transpose(0, 2, 3, 1)  # (b, s, s, 1)
        mem, mem_pos = self.memory_encoder(pix, masks, skip_mask_sigmoid=False)
        mem_pos = mem_pos + self.maskmem_tpos_enc[0]
        if cfg.no_obj_embed_spatial:
            mem = mem + self.no_obj_embed_spatial[0]
        # One memory frame plus one object pointer split into d/mem_dim tokens.
        split = cfg.d_model // cfg.mem_dim
        ptr = heads.obj_ptr.reshape(b, split, cfg.mem_dim)
        ptr_pos = jnp.zeros_like(ptr)
        if cfg.proj_tpos_enc_in_obj_ptrs:
            ptr_pos = ptr_pos + self.obj_ptr_tpos_proj(jnp.zeros((b, cfg.d_model)))[:, None]
        self.memory_attention(
            pix.reshape(b, g * g, -1),
            feats["vision_pos_enc"][-1].reshape(b, g * g, -1),
            jnp.concatenate([mem.reshape(b, g * g, -1), ptr], axis=1),
            jnp.concatenate([mem_pos.reshape(b, g * g, -1), ptr_pos], axis=1),
            num_obj_ptr_tokens=split,
            feat_hw=(g, g),
        )
        _ = self.no_mem_pos_enc
        return out
