"""SAM's mask decoder: output tokens through the two-way transformer, then hypernetwork masks."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.layers import MLP, ConvTranspose2x2, Table, gelu, layer_norm
from sam_jax.models.two_way_transformer import TwoWayTransformer


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

    @nn.compact
    def __call__(self, image_embeddings, image_pe, sparse, dense):
        d = self.transformer_dim
        num_mask_tokens = self.num_multimask_outputs + 1
        b, h, w, _ = image_embeddings.shape
        output_tokens = jnp.concatenate(
            [Table(1, d, name="iou_token")(), Table(num_mask_tokens, d, name="mask_tokens")()]
        )
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1
        )
        src = image_embeddings + dense
        hs, src = TwoWayTransformer(self.depth, self.num_heads, self.mlp_dim, name="transformer")(
            src, image_pe, tokens
        )
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + num_mask_tokens]

        x = src.reshape(b, h, w, d)
        x = ConvTranspose2x2(d // 4, name="output_upscaling_0")(x)
        x = gelu(layer_norm(1e-6, name="output_upscaling_1")(x))
        x = gelu(ConvTranspose2x2(d // 8, name="output_upscaling_3")(x))  # (b, 4h, 4w, d/8)

        hyper_in = jnp.stack(
            [
                MLP(d, d // 8, 3, name=f"output_hypernetworks_mlps_{i}")(mask_tokens_out[:, i])
                for i in range(num_mask_tokens)
            ],
            axis=1,
        )  # (b, num_mask_tokens, d/8)
        masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, x)
        iou = MLP(
            self.iou_head_hidden_dim,
            num_mask_tokens,
            self.iou_head_depth,
            name="iou_prediction_head",
        )(iou_token_out)
        return masks, iou
