"""The SAM model: image encoder, prompt encoder and mask decoder behind three methods.

emb = model.apply(params, images, method="encode_image")        # (B, S/16, S/16, 256)
logits, iou = model.apply(params, emb, point_coords=..., method="predict_masks")
logits, iou = model.apply(params, images, point_coords=...)      # both at once
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.config import SamConfig, TinyViTConfig, ViTConfig
from sam_jax.models.mask_decoder import MaskDecoder
from sam_jax.models.prompt_encoder import PromptEncoder
from sam_jax.models.tiny_vit import TinyViT
from sam_jax.models.vit import ImageEncoderViT

# Image-encoder module for each encoder config type (a variant table, not code paths).
ENCODERS: dict[type, type[nn.Module]] = {ViTConfig: ImageEncoderViT, TinyViTConfig: TinyViT}


def check_prompts(
    batch: int,
    point_coords: jnp.ndarray | None,
    point_labels: jnp.ndarray | None,
    boxes: jnp.ndarray | None,
    mask_inputs: jnp.ndarray | None,
) -> None:
    """Raise a ValueError naming the prompt whose shape does not fit the batch."""
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        if point_coords.ndim != 3 or point_coords.shape[0] != batch or point_coords.shape[2] != 2:
            raise ValueError(f"point_coords must be (B={batch}, N, 2); got {point_coords.shape}")
        if point_labels.shape != point_coords.shape[:2]:
            raise ValueError(
                f"point_labels must be (B, N) = {point_coords.shape[:2]}; got {point_labels.shape}"
            )
    if boxes is not None and boxes.shape != (batch, 4):
        raise ValueError(f"boxes must be (B={batch}, 4) xyxy; got {boxes.shape}")
    if mask_inputs is not None and (
        mask_inputs.ndim != 4 or mask_inputs.shape[0] != batch or mask_inputs.shape[-1] != 1
    ):
        raise ValueError(
            f"mask_inputs must be (B={batch}, m, m, 1) logits; got {mask_inputs.shape}"
        )


def prompt_batch(image_batch: int, **prompts: jnp.ndarray | None) -> int:
    """The batch of the prompts: that of the first one given, else the images'. Images of
    a batch of one are shared by every prompt; otherwise the two must agree (a ValueError
    names the prompt)."""
    given = [(name, p.shape[0]) for name, p in prompts.items() if p is not None and p.ndim > 0]
    if not given:
        return image_batch
    name, b = given[0]
    if image_batch not in (1, b):
        raise ValueError(
            f"{name} has batch {b} but the image features {image_batch}: give features of "
            f"batch {b}, or of batch 1 to share them"
        )
    return b


class Sam(nn.Module):
    """SAM / MobileSAM. Images are (B, S, S, 3), normalised and letterboxed to S."""

    config: SamConfig
    remat: bool = False
    dtype: Any = jnp.float32  # the image encoder's computation dtype; its output is float32

    def setup(self) -> None:
        cfg = self.config
        self.image_encoder = ENCODERS[type(cfg.encoder)](
            cfg.encoder, remat=self.remat, dtype=self.dtype
        )
        self.prompt_encoder = PromptEncoder(
            cfg.prompt_embed_dim, cfg.image_size, cfg.mask_in_chans, cfg.encoder.stride
        )
        self.mask_decoder = MaskDecoder(
            cfg.prompt_embed_dim,
            cfg.num_multimask_outputs,
            cfg.decoder_depth,
            cfg.decoder_num_heads,
            cfg.decoder_mlp_dim,
            cfg.iou_head_depth,
            cfg.iou_head_hidden_dim,
        )

    def encode_image(self, images: jnp.ndarray) -> jnp.ndarray:
        """(B, S, S, 3) -> (B, S/16, S/16, 256)."""
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"images must be (B, {s}, {s}, 3) for this model; got {images.shape}")
        return self.image_encoder(images)

    def predict_masks(
        self,
        image_embeddings: jnp.ndarray,
        point_coords: jnp.ndarray | None = None,
        point_labels: jnp.ndarray | None = None,
        boxes: jnp.ndarray | None = None,
        mask_inputs: jnp.ndarray | None = None,
        multimask_output: bool = True,
        decoder_cache: dict | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Mask logits (B, M, S/4, S/4) and IoU (B, M); M = 3 if multimask_output else 1.

        image_embeddings (B, g, g, D), or (1, g, g, D) shared by the B prompts.
        decoder_cache: `decoder_cache(image_embeddings)` of a batch of one, the decoder's
        per-image work done once for any number of prompts; used without mask inputs
        (with them the image side depends on the prompt, and the cache is not read).
        """
        g = self.config.embed_size
        d = self.config.prompt_embed_dim
        if image_embeddings.ndim != 4 or image_embeddings.shape[1:] != (g, g, d):
            raise ValueError(
                f"image_embeddings must be (B, {g}, {g}, {d}); got {image_embeddings.shape}"
            )
        b = prompt_batch(
            image_embeddings.shape[0],
            point_coords=point_coords,
            boxes=boxes,
            mask_inputs=mask_inputs,
        )
        check_prompts(b, point_coords, point_labels, boxes, mask_inputs)
        sparse, dense = self.prompt_encoder(b, point_coords, point_labels, boxes, mask_inputs)
        cache = decoder_cache if mask_inputs is None else None
        masks, iou = self.mask_decoder(
            image_embeddings, self.prompt_encoder.dense_pe(), sparse, dense, cache
        )
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep]

    def decoder_cache(self, image_embeddings: jnp.ndarray) -> dict:
        """The mask decoder's prompt-independent work on (1, g, g, D) embeddings, for
        `predict_masks(..., decoder_cache=...)` without mask inputs."""
        dense = self.prompt_encoder(1)[1]
        return self.mask_decoder.image_cache(
            image_embeddings + dense, self.prompt_encoder.dense_pe()
        )

    def init_everything(self, images: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Runs every branch once so that `init` creates every parameter."""
        b = images.shape[0]
        emb = self.encode_image(images)
        m = self.config.mask_input_size
        self.predict_masks(
            emb,
            point_coords=jnp.zeros((b, 1, 2)),
            point_labels=jnp.ones((b, 1), jnp.int32),
            boxes=jnp.zeros((b, 4)),
            mask_inputs=jnp.zeros((b, m, m, 1)),
        )
        return self.predict_masks(emb)

    def __call__(self, images: jnp.ndarray, **prompts) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.predict_masks(self.encode_image(images), **prompts)
