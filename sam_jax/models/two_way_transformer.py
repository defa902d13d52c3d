"""The two-way transformer of SAM's mask decoder: tokens and image attend to each other."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.attention import attention
from sam_jax.models.layers import MLP, MLPBlock, layer_norm


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`.

    q (B, Nq, D), k and v (B, Nk, D_kv) -> (B, Nq, D).
    """

    num_heads: int
    downsample_rate: int = 1

    @nn.compact
    def __call__(self, q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
        d = q.shape[-1]
        inner = d // self.downsample_rate
        heads, hd = self.num_heads, inner // self.num_heads
        b = q.shape[0]
        q = nn.Dense(inner, name="q_proj")(q).reshape(b, -1, heads, hd)
        k = nn.Dense(inner, name="k_proj")(k).reshape(b, -1, heads, hd)
        v = nn.Dense(inner, name="v_proj")(v).reshape(b, -1, heads, hd)
        out = attention(q, k, v)  # (B, Nq, heads, hd)
        return nn.Dense(d, name="out_proj")(out.reshape(b, -1, inner))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token; post-norm."""

    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    # SAM 2 names the (identical) token MLP's layers layers_0/layers_1 instead of lin1/lin2.
    sam2_mlp_names: bool = False

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe):
        """queries (B, Nt, D), keys (B, HW, D) and their encodings -> updated (queries, keys)."""
        self_attn = Attention(self.num_heads, name="self_attn")
        if self.skip_first_layer_pe:  # the first layer's tokens *are* the prompt encodings
            queries = self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries)
        queries = layer_norm(name="norm1")(queries)

        t2i = Attention(self.num_heads, self.downsample_rate, name="cross_attn_token_to_image")
        queries = queries + t2i(queries + query_pe, keys + key_pe, keys)
        queries = layer_norm(name="norm2")(queries)

        if self.sam2_mlp_names:
            mlp = MLP(self.mlp_dim, queries.shape[-1], 2, name="mlp")
        else:
            mlp = MLPBlock(self.mlp_dim, "relu", name="mlp")
        queries = queries + mlp(queries)
        queries = layer_norm(name="norm3")(queries)

        i2t = Attention(self.num_heads, self.downsample_rate, name="cross_attn_image_to_token")
        keys = keys + i2t(keys + key_pe, queries + query_pe, queries)
        keys = layer_norm(name="norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image (B, H, W, D), image_pe (H, W, D) or (B, H, W, D), tokens (B, Nt, D)
    -> (tokens (B, Nt, D), image tokens (B, HW, D))."""

    depth: int
    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    sam2_mlp_names: bool = False  # see TwoWayAttentionBlock

    @nn.compact
    def __call__(self, image, image_pe, tokens):
        b, h, w, d = image.shape
        keys = image.reshape(b, h * w, d)
        key_pe = jnp.broadcast_to(image_pe, (b, h, w, d)).reshape(b, h * w, d)
        queries = tokens
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.num_heads,
                self.mlp_dim,
                self.downsample_rate,
                skip_first_layer_pe=i == 0,
                sam2_mlp_names=self.sam2_mlp_names,
                name=f"layers_{i}",
            )(queries, keys, tokens, key_pe)
        final = Attention(self.num_heads, self.downsample_rate, name="final_attn_token_to_image")
        queries = queries + final(queries + tokens, keys + key_pe, keys)
        return layer_norm(name="norm_final_attn")(queries), keys
