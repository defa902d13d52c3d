"""SAM's mask decoder: output tokens through the two-way transformer, then hypernetwork masks.

Two steps, as the transformer's (see `two_way_transformer`): `prepare_image` once per image,
`decode` per batch of prompts; calling the module does both.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.layers import MLP, ConvTranspose2x2, Table, gelu, layer_norm
from sam_jax.models.two_way_transformer import ImageCache, TwoWayTransformer


class MaskDecoder(nn.Module):
    """image_embeddings (B, h, w, D) + dense prompt (B, h, w, D) + sparse tokens (B, N, D)
    -> all mask logits (B, 1 + num_multimask_outputs, 4h, 4w) and IoU (B, 1 + num_multimask)."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def setup(self) -> None:
        d = self.transformer_dim
        num_mask_tokens = self.num_multimask_outputs + 1
        self.iou_token = Table(1, d)
        self.mask_tokens = Table(num_mask_tokens, d)
        self.transformer = TwoWayTransformer(d, self.depth, self.num_heads, self.mlp_dim)
        self.output_upscaling_0 = ConvTranspose2x2(d // 4)
        self.output_upscaling_1 = layer_norm(1e-6)
        self.output_upscaling_3 = ConvTranspose2x2(d // 8)
        self.output_hypernetworks_mlps = [MLP(d, d // 8, 3) for _ in range(num_mask_tokens)]
        self.iou_prediction_head = MLP(
            self.iou_head_hidden_dim, num_mask_tokens, self.iou_head_depth
        )

    def prepare_image(self, image_embeddings: jnp.ndarray, image_pe: jnp.ndarray) -> ImageCache:
        """The prompt-independent step. image_embeddings (Bi, h, w, D) with the dense prompt
        embedding already added, image_pe (h, w, D)."""
        return self.transformer.prepare(image_embeddings, image_pe)

    def decode(self, cache: ImageCache, sparse: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The prompt step: sparse tokens (B, N, D) on `cache` (batch 1 or B) -> all mask
        logits (B, 1 + num_multimask_outputs, 4h, 4w) and IoU (B, 1 + num_multimask_outputs)."""
        b = sparse.shape[0]
        _, h, w, d = cache.image.shape
        output_tokens = jnp.concatenate([self.iou_token(), self.mask_tokens()])
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1
        )
        hs, src = self.transformer.decode(cache, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + len(self.output_hypernetworks_mlps)]

        x = self.output_upscaling_0(src.reshape(b, h, w, d))
        x = gelu(self.output_upscaling_1(x))
        x = gelu(self.output_upscaling_3(x))  # (b, 4h, 4w, d/8)

        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )  # (b, num_mask_tokens, d/8)
        masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, x)
        return masks, self.iou_prediction_head(iou_token_out)

    def __call__(
        self,
        image_embeddings: jnp.ndarray,
        image_pe: jnp.ndarray,
        sparse: jnp.ndarray,
        dense: jnp.ndarray,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.decode(self.prepare_image(image_embeddings + dense, image_pe), sparse)
