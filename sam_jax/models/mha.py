"""torch's nn.MultiheadAttention in Flax, with torch's parameter layout.

    MultiheadAttention(num_heads)(query, key=None, value=None, *, bias=None, key_mask=None)

query (B, Nq, C); key (B, Nk, C) and value (B, Nk, C), both default to the query (self-
attention) -> (B, Nq, C). Parameters, as torch stores them: `in_proj_weight` (3C, C) with
the q, k and v projections stacked in that order, `in_proj_bias` (3C,), and the Dense
`out_proj`. `bias` is added to the logits, broadcastable to (B, heads, Nq, Nk) (torch's
float `attn_mask`); `key_mask` (B, Nk) bool is True at keys that may be attended to (the
negation of torch's `key_padding_mask`). A query whose keys are all masked gets zeros where
torch gives NaN. SAM 3's text encoder and detector use it for self- and cross-attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.attention import attention
from sam_jax.models.layers import Dense


class MultiheadAttention(nn.Module):
    """(B, Nq, C) queries over (B, Nk, C) keys and values -> (B, Nq, C)."""

    num_heads: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        query: jnp.ndarray,
        key: jnp.ndarray | None = None,
        value: jnp.ndarray | None = None,
        *,
        bias: jnp.ndarray | None = None,
        key_mask: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        key = query if key is None else key
        value = key if value is None else value
        c, h, dt = query.shape[-1], self.num_heads, self.dtype
        if c % h:
            raise ValueError(f"width {c} is not a multiple of {h} heads")
        init = nn.initializers.xavier_uniform(in_axis=-1, out_axis=-2)
        w = self.param("in_proj_weight", init, (3 * c, c), jnp.float32).astype(dt)
        w_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * c,), jnp.float32)
        w_bias = w_bias.astype(dt)

        def project(x: jnp.ndarray, i: int) -> jnp.ndarray:
            y = jnp.einsum("bnc,oc->bno", x.astype(dt), w[i * c : (i + 1) * c])
            y = y + w_bias[i * c : (i + 1) * c]
            return y.reshape(*x.shape[:2], h, c // h)

        if key is query and value is query:  # one packed product for self-attention
            qkv = jnp.einsum("bnc,oc->bno", query.astype(dt), w) + w_bias
            q, k, v = jnp.split(qkv.reshape(*query.shape[:2], 3, h, c // h), 3, axis=2)
            q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        else:
            q, k, v = project(query, 0), project(key, 1), project(value, 2)
        out = attention(q, k, v, bias=bias, key_mask=key_mask)
        return Dense(c, dtype=dt, name="out_proj")(out.reshape(*query.shape[:2], c))
