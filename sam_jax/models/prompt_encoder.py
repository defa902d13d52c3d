"""SAM's prompt encoder: points, boxes and masks -> sparse tokens and a dense embedding."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import Conv, Table, gelu, layer_norm
from sam_jax.models.resize import resize_bilinear


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature encoding of normalised (x, y) coordinates."""

    num_pos_feats: int = 128

    def setup(self) -> None:
        # A fixed random projection, not trained: kept out of 'params' like torch's buffer.
        self.gaussian = self.variable(
            "buffers",
            "positional_encoding_gaussian_matrix",
            lambda: jax.random.normal(self.make_rng("params"), (2, self.num_pos_feats)),
        )

    def encode(self, coords: jnp.ndarray) -> jnp.ndarray:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * num_pos_feats)."""
        proj = (2.0 * coords - 1.0) @ self.gaussian.value.astype(coords.dtype)
        proj = 2.0 * math.pi * proj
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)

    def grid(self, h: int, w: int) -> jnp.ndarray:
        """Encoding of every cell centre of an (h, w) grid: (h, w, 2 * num_pos_feats).

        A cell's angle is a row term plus a column term, so sin and cos are taken on the h + w
        terms and combined by the angle-addition formulas (XLA:CPU's sin and cos cost ten
        times an exp; a 64 x 64 grid's were the prompt decoder's costliest elementwise work).
        Equal to `encode` on each centre up to float32 rounding of the angles.
        """
        g = 2.0 * math.pi * self.gaussian.value.astype(jnp.float32)
        col = (2.0 * (jnp.arange(w, dtype=jnp.float32) + 0.5) / w - 1.0)[:, None] * g[0]
        row = (2.0 * (jnp.arange(h, dtype=jnp.float32) + 0.5) / h - 1.0)[:, None] * g[1]
        terms = jnp.concatenate([jnp.sin(col), jnp.cos(col), jnp.sin(row), jnp.cos(row)])
        # A product with the identity (exact) stores the terms: XLA would otherwise fuse the
        # sin and cos into the (h, w) combination below and take them once per cell again
        # (it drops an optimization_barrier there).
        terms = terms @ jnp.eye(terms.shape[-1], dtype=terms.dtype)
        sc, cc = terms[None, :w], terms[None, w : 2 * w]
        sr, cr = terms[2 * w : 2 * w + h, None], terms[2 * w + h :, None]
        return jnp.concatenate([sr * cc + cr * sc, cr * cc - sr * sc], axis=-1)

    def points(self, coords: jnp.ndarray, image_size: int) -> jnp.ndarray:
        """(B, N, 2) pixel coordinates of a square image -> (B, N, 2 * num_pos_feats)."""
        return self.encode(coords / image_size)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    point_coords (B, N, 2) pixels with point_labels (B, N) in {-1, 0, 1, 2, 3};
    boxes (B, 4) xyxy; mask_inputs (B, m, m, 1) logits (resized to 4g if m differs).
    Returns sparse (B, N' , D) and dense (B, g, g, D) embeddings, g = S / stride (S/16);
    without mask inputs dense is the no-mask embedding as (1, g, g, D), for every item.
    """

    embed_dim: int
    image_size: int
    mask_in_chans: int = 16
    stride: int = 16  # the image encoder's: pixels per embedding cell

    def setup(self) -> None:
        d = self.embed_dim
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        self.point_embeddings = [Table(1, d) for _ in range(4)]
        self.not_a_point_embed = Table(1, d)
        self.no_mask_embed = Table(1, d)
        c = self.mask_in_chans
        self.mask_downscaling_0 = Conv(c // 4, (2, 2), strides=(2, 2), padding="VALID")
        self.mask_downscaling_1 = layer_norm(1e-6)
        self.mask_downscaling_3 = Conv(c, (2, 2), strides=(2, 2), padding="VALID")
        self.mask_downscaling_4 = layer_norm(1e-6)
        self.mask_downscaling_6 = Conv(d, (1, 1))

    @property
    def embed_size(self) -> int:
        return self.image_size // self.stride

    def dense_pe(self) -> jnp.ndarray:
        """Positional encoding of the image-embedding grid: (g, g, D)."""
        return self.pe_layer.grid(self.embed_size, self.embed_size)

    def embed_points(self, coords: jnp.ndarray, labels: jnp.ndarray, pad: bool) -> jnp.ndarray:
        coords = coords.astype(jnp.float32) + 0.5  # to pixel centres
        labels = labels.astype(jnp.int32)
        if pad:  # a "not a point" token stands in for the missing box
            b = coords.shape[0]
            coords = jnp.concatenate([coords, jnp.zeros((b, 1, 2), coords.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), jnp.int32)], axis=1)
        emb = self.pe_layer.points(coords, self.image_size)
        lab = labels[..., None]
        emb = jnp.where(lab == -1, self.not_a_point_embed()[0], emb)
        for i, table in enumerate(self.point_embeddings):
            emb = emb + jnp.where(lab == i, table()[0], 0.0)
        return emb

    def embed_boxes(self, boxes: jnp.ndarray) -> jnp.ndarray:
        corners = boxes.astype(jnp.float32).reshape(-1, 2, 2) + 0.5
        emb = self.pe_layer.points(corners, self.image_size)
        corner_tokens = jnp.concatenate([self.point_embeddings[2](), self.point_embeddings[3]()])
        return emb + corner_tokens

    def embed_masks(self, masks: jnp.ndarray) -> jnp.ndarray:
        m = 4 * self.embed_size
        x = resize_bilinear(masks.astype(jnp.float32), (m, m))
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def __call__(
        self,
        batch_size: int,
        point_coords: jnp.ndarray | None = None,
        point_labels: jnp.ndarray | None = None,
        boxes: jnp.ndarray | None = None,
        mask_inputs: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        sparse = [jnp.zeros((batch_size, 0, self.embed_dim), jnp.float32)]
        if point_coords is not None:
            sparse.append(self.embed_points(point_coords, point_labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if mask_inputs is not None:
            dense = self.embed_masks(mask_inputs)
        else:
            g = self.embed_size
            # One copy for the whole batch: the decoder broadcasts it (and can then project
            # the image once for all the prompts).
            dense = jnp.broadcast_to(self.no_mask_embed(), (1, g, g, self.embed_dim))
        return jnp.concatenate(sparse, axis=1), dense
