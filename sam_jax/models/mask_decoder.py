"""SAM's mask decoder: output tokens through the two-way transformer, then hypernetwork masks."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.layers import MLP, ConvTranspose2x2, Table, gelu, interleave, layer_norm
from sam_jax.models.two_way_transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """image_embeddings (B or 1, h, w, D) + dense prompt (B or 1, h, w, D) + sparse tokens
    (B, N, D) -> all mask logits (B, 1 + num_multimask_outputs, 4h, 4w) and IoU
    (B, 1 + num_multimask_outputs)."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def setup(self) -> None:
        d = self.transformer_dim
        self.num_mask_tokens = self.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(d, self.depth, self.num_heads, self.mlp_dim)
        self.iou_token = Table(1, d)
        self.mask_tokens = Table(self.num_mask_tokens, d)
        self.output_upscaling_0 = ConvTranspose2x2(d // 4, subpixel=True)
        self.output_upscaling_1 = layer_norm(1e-6)
        self.output_upscaling_3 = ConvTranspose2x2(d // 8, subpixel=True)
        self.output_hypernetworks_mlps = [MLP(d, d // 8, 3) for _ in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(
            self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth
        )

    def image_cache(self, image: jnp.ndarray, image_pe: jnp.ndarray) -> dict:
        """Prompt-independent decoder work for `image` = embeddings + the dense prompt."""
        return self.transformer.image_cache(image, image_pe)

    def __call__(self, image_embeddings, image_pe, sparse, dense, cache: dict | None = None):
        """`cache`: image_cache(image_embeddings + dense, image_pe), or None."""
        d = self.transformer_dim
        b = sparse.shape[0]
        h, w = image_embeddings.shape[1:3]
        output_tokens = jnp.concatenate([self.iou_token(), self.mask_tokens()])
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1
        )
        hs, src = self.transformer(image_embeddings + dense, image_pe, tokens, cache)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        x = src.reshape(b, h, w, d)
        x = gelu(self.output_upscaling_1(self.output_upscaling_0(x)))
        x = gelu(self.output_upscaling_3(x))  # (b, h, w, 2, 2, 2, 2, d/8)
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )  # (b, num_mask_tokens, d/8)
        masks = hypernetwork_masks(hyper_in, x)
        return masks, self.iou_prediction_head(iou_token_out)


def hypernetwork_masks(hyper_in: jnp.ndarray, features: jnp.ndarray) -> jnp.ndarray:
    """hyper_in (B, M, C) . features (B, h, w, 2, 2, 2, 2, C) (the upscaling's sub-pixel
    layout) -> masks (B, M, 4h, 4w). The pixels are interleaved after the product, on M
    values per pixel rather than C, and the features stay the product's left operand (their
    channels are its contracted minor axis: no transpose of the features)."""
    b, m = hyper_in.shape[:2]
    flat = features.reshape(b, -1, features.shape[-1])
    masks = jnp.einsum("bnc,bmc->bnm", flat, hyper_in).reshape(*features.shape[:-1], m)
    return interleave(masks, 2).transpose(0, 3, 1, 2)
