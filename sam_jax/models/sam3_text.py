"""SAM 3's text encoder: a CLIP-style causal transformer over CLIP BPE ids, resized to d_model.

    ids (B, L) int, L <= context_length (sam_jax.text.CLIPTokenizer rows: start, ids, end,
    zero padding)
      -> token table + position table[:L] -> depth x pre-LN blocks (causal self-attention,
         GELU MLP) -> final LayerNorm -> resizer (Linear width -> d_model)
      -> {"language_features": (B, L, d_model), "language_valid": (B, L) bool,
          "language_embeds": (B, L, width)}

Every token is returned, padding included; "language_valid" is ids != 0 (the reference's
`language_mask` is its negation, True at padding) and is what later attention over the text
should take as its key mask. Within the encoder only the causal mask applies: a token sees
itself and the tokens before it, so the padding after the end token changes nothing before
it. Id 0 is also the BPE symbol "!" where it does not end its piece and stays unmerged (as
in "wow!😀" or "!;"); the reference marks such a token as padding too, and so does this. "language_embeds" are the raw token-table rows, without
position. The CLIP text projection (`text_projection`, width -> projection_dim) is stored
by the checkpoints but unused; it is kept as a parameter so they load strictly.

Modules carry the names of ultralytics' VETextEncoder (the `detector.backbone.
language_backbone.*` keys of a SAM 3 checkpoint). The attention is torch's
nn.MultiheadAttention, whose packed q/k/v projection is stored in torch's layout:
`attn/in_proj_weight` (3 * width, width) and `attn/in_proj_bias` (3 * width,).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam_jax.models.layers import Dense, MLPBlock, Table, layer_norm
from sam_jax.models.mha import MultiheadAttention
from sam_jax.models.sam3_config import Sam3TextConfig

# Added to the logits of future keys: exp() of it is exactly 0 in float32, and unlike -inf it
# cannot turn into NaN in any attention implementation.
_MASKED = -1e9


SAM3_TEXT = Sam3TextConfig()


def causal_bias(length: int) -> np.ndarray:
    """(1, 1, L, L) additive attention bias: 0 where key <= query, _MASKED after."""
    future = np.triu(np.ones((length, length), bool), k=1)
    return np.where(future, _MASKED, 0.0).astype(np.float32)[None, None]


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). (B, L, C) -> (B, L, C)."""

    num_heads: int
    mlp_ratio: float
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
        dt, width = self.dtype, x.shape[-1]
        y = layer_norm(1e-5, name="ln_1", dtype=dt)(x)
        x = x + MultiheadAttention(self.num_heads, dtype=dt, name="attn")(y, bias=bias)
        y = layer_norm(1e-5, name="ln_2", dtype=dt)(x)
        mlp = MLPBlock(int(width * self.mlp_ratio), names=("c_fc", "c_proj"), dtype=dt, name="mlp")
        return x + mlp(y)


class Transformer(nn.Module):
    """`depth` ResidualAttentionBlocks named resblocks_0 .. resblocks_{depth-1}."""

    depth: int
    num_heads: int
    mlp_ratio: float
    remat: bool = False  # recompute blocks in the backward pass (fine-tuning memory)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
        block = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"resblocks_{i}")(
                x, bias
            )
        return x


class TextTransformer(nn.Module):
    """Ids (B, L) -> (tokens after the final LayerNorm (B, L, width) in the computation
    dtype, token-table rows (B, L, width) float32)."""

    config: Sam3TextConfig
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, ids: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        cfg, dt = self.config, self.dtype
        table = Table(cfg.vocab_size, cfg.width, name="token_embedding")()
        pos = self.param(
            "positional_embedding",
            nn.initializers.normal(0.01),
            (cfg.context_length, cfg.width),
            jnp.float32,
        )
        # Stored for strict loading only: SAM 3 reads the tokens, not CLIP's pooled vector.
        self.param(
            "text_projection",
            nn.initializers.normal(cfg.width**-0.5),
            (cfg.width, cfg.projection_dim),
            jnp.float32,
        )
        length = ids.shape[1]
        embeds = jnp.take(table, ids, axis=0)  # ids outside the table give NaN rows
        x = embeds.astype(dt) + pos[:length].astype(dt)
        x = Transformer(
            cfg.depth, cfg.num_heads, cfg.mlp_ratio, self.remat, dtype=dt, name="transformer"
        )(x, jnp.asarray(causal_bias(length)))
        if cfg.use_ln_post:
            x = layer_norm(1e-5, name="ln_final", dtype=dt)(x)
        return x, embeds


class Sam3TextEncoder(nn.Module):
    """ultralytics' VETextEncoder on token ids; outputs in the module docstring (float32)."""

    config: Sam3TextConfig = SAM3_TEXT
    remat: bool = False  # recompute blocks in the backward pass (fine-tuning memory)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, ids: jnp.ndarray) -> dict[str, jnp.ndarray]:
        cfg = self.config
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= cfg.context_length:
            raise ValueError(
                f"token ids must be (B, L) with 1 <= L <= {cfg.context_length}; got shape "
                f"{ids.shape}"
            )
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        tokens, embeds = TextTransformer(cfg, self.remat, dtype=self.dtype, name="encoder")(ids)
        features = Dense(cfg.d_model, dtype=self.dtype, name="resizer")(tokens)
        return {
            "language_features": features.astype(jnp.float32),
            "language_valid": ids != 0,
            "language_embeds": embeds,
        }
