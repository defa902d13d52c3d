"""SAM 3's pre-norm encoder layer: self-attention, cross-attention to a second sequence, FFN.

    tgt (B, N, D), memory (B, M, D) -> (B, N, D)

    x = tgt
    y = norm1(x);  x = x + self_attn(q=y (+ query_pos), k=y (+ query_pos), v=y)
    y = norm2(x);  x = x + cross_attn_image(q=y (+ query_pos), k=memory (+ pos), v=memory)
    y = norm3(x);  x = x + linear2(relu(linear1(y)))

Each "(+ ...)" is one of the three flags: `pos_enc_at_attn` (query_pos on the self-attention
queries and keys), `pos_enc_at_cross_attn_queries` (query_pos on the cross-attention
queries), `pos_enc_at_cross_attn_keys` (pos on the cross-attention keys). Values never
carry a position. There is no final norm in the layer. Two users, with their flags:

- the image-prompt fusion encoder (`sam3_fusion_encoder`): image tokens over the prompt,
  query_pos = the image's sine encoding, pos_enc_at_attn only;
- the geometry encoder (`sam3_geometry`): box tokens over the image, pos = the image's
  sine encoding, pos_enc_at_cross_attn_keys only.

Both attentions are torch's nn.MultiheadAttention (`sam_jax.models.mha`); eval mode, so the
reference's dropouts are identities. Parameter names mirror ultralytics'
TransformerEncoderLayer: `self_attn`, `cross_attn_image`, `linear1`, `linear2`, `norm1..3`
(LayerNorm eps 1e-5). Only the reference's pre-norm form is written, the one SAM 3 builds.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import layer_norm, mlp_on
from sam_jax.models.mha import MultiheadAttention


def _check_pos(name: str, pos: jnp.ndarray | None, x: jnp.ndarray, needed: bool) -> None:
    """ValueError unless `pos` is given when `needed` and broadcasts onto x (B, N, D)."""
    if pos is None:
        if needed:
            raise ValueError(f"this layer adds {name} (its flags say so) but {name} is None")
        return
    b, n, d = x.shape
    if pos.ndim != 3 or pos.shape[0] not in (1, b) or pos.shape[1:] != (n, d):
        raise ValueError(f"{name} must be (1 or {b}, {n}, {d}); got {pos.shape}")


def _check_mask(name: str, valid: jnp.ndarray | None, x: jnp.ndarray) -> None:
    if valid is not None and (valid.shape != x.shape[:2] or valid.dtype != jnp.bool_):
        raise ValueError(
            f"{name} must be a bool array of shape {x.shape[:2]}; got {valid.dtype} {valid.shape}"
        )


class Sam3EncoderLayer(nn.Module):
    """One pre-norm layer (module docstring). Output (B, N, D) in the computation dtype."""

    num_heads: int = 8
    dim_feedforward: int = 2048
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_queries: bool = False
    pos_enc_at_cross_attn_keys: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        tgt: jnp.ndarray,
        memory: jnp.ndarray,
        *,
        tgt_valid: jnp.ndarray | None = None,
        memory_valid: jnp.ndarray | None = None,
        pos: jnp.ndarray | None = None,
        query_pos: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """tgt (B, N, D) over memory (B, M, D).

        tgt_valid (B, N) / memory_valid (B, M) bool: keys that may be attended to in the self-
        and the cross-attention (None: all). pos (1 or B, M, D): memory's position encoding;
        query_pos (1 or B, N, D): tgt's. A token with no valid key at all gets a zero attention
        update (torch gives NaN there).
        """
        if tgt.ndim != 3 or memory.ndim != 3 or memory.shape[::2] != tgt.shape[::2]:
            raise ValueError(
                f"tgt (B, N, D) and memory (B, M, D) must agree in B and D; got {tgt.shape} "
                f"and {memory.shape}"
            )
        _check_mask("tgt_valid", tgt_valid, tgt)
        _check_mask("memory_valid", memory_valid, memory)
        needs_query_pos = self.pos_enc_at_attn or self.pos_enc_at_cross_attn_queries
        _check_pos("query_pos", query_pos, tgt, needs_query_pos)
        _check_pos("pos", pos, memory, self.pos_enc_at_cross_attn_keys)
        dt = self.dtype
        x = tgt.astype(dt)

        y = layer_norm(1e-5, name="norm1", dtype=dt)(x)
        qk = y + query_pos.astype(dt) if self.pos_enc_at_attn else y
        attn = MultiheadAttention(self.num_heads, dtype=dt, name="self_attn")
        x = x + attn(qk, qk, y, key_mask=tgt_valid)

        y = layer_norm(1e-5, name="norm2", dtype=dt)(x)
        q = y + query_pos.astype(dt) if self.pos_enc_at_cross_attn_queries else y
        mem = memory.astype(dt)
        k = mem + pos.astype(dt) if self.pos_enc_at_cross_attn_keys else mem
        cross = MultiheadAttention(self.num_heads, dtype=dt, name="cross_attn_image")
        x = x + cross(q, k, mem, key_mask=memory_valid)

        y = layer_norm(1e-5, name="norm3", dtype=dt)(x)
        names = ("linear1", "linear2")
        return x + mlp_on(self, y, self.dim_feedforward, names, jax.nn.relu, dt)
