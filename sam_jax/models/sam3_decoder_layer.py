"""One layer of SAM 3's DETR-style decoder (ultralytics' TransformerDecoderLayer, eval).

    queries x (B, N, D) with their positions p (B, N, D), N = [presence token +] Q queries
      x = norm2(x + self_attn(x + p, x + p, x))
      x = catext_norm(x + ca_text(x + p, prompt, prompt, key_mask=prompt_valid))
      x = norm1(x + cross_attn(x + p, memory + memory_pos, memory, bias=box_bias))
      x = norm3(x + linear2(relu(linear1(x))))

Post-norm throughout. The presence token, when present, is row 0 of x with a zero position,
and its row of `box_bias` is zero (it attends to the image without a box prior); the layer
itself is agnostic of it: the decoder prepends and splits it. Eval only (no dropout); the
reference's divide-and-conquer (DAC) split of the queries is a training feature and
`_run_decoder` turns it off, so self-attention runs over all N rows and `norm2` normalises
them all (what `dac_use_selfatt_ln` reduces to without DAC).

Module names are the reference's (`self_attn`, `ca_text`, `cross_attn`, `norm1..3`,
`catext_norm`, `linear1`, `linear2`), so `transformer.decoder.layers.<i>.*` keys map
generically; the three attentions are torch nn.MultiheadAttention (`sam_jax.models.mha`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import layer_norm, mlp_on
from sam_jax.models.mha import MultiheadAttention


class Sam3DecoderLayer(nn.Module):
    """(B, N, D) queries -> (B, N, D), float32; see the module docstring for the math.

    `dtype` is the computation dtype of the attention and feed-forward products; the
    residual stream and the LayerNorms stay float32 (parameters are float32).
    """

    num_heads: int = 8
    dim_feedforward: int = 2048
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        query_pos: jnp.ndarray,
        *,
        memory: jnp.ndarray,
        memory_pos: jnp.ndarray,
        prompt: jnp.ndarray,
        prompt_valid: jnp.ndarray,
        box_bias: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """x, query_pos (B, N, D); memory, memory_pos (B, HW, D); prompt (B, P, D) with
        prompt_valid (B, P) bool; box_bias broadcastable to (B, heads, N, HW), added to the
        image cross-attention logits. A query whose prompt keys are all invalid gets a zero
        text update (the reference gives NaN)."""
        heads, dt, f32 = self.num_heads, self.dtype, jnp.float32

        def attend(name: str, q, k, v, **kw) -> jnp.ndarray:
            return MultiheadAttention(heads, dtype=dt, name=name)(q, k, v, **kw).astype(f32)

        q = x + query_pos
        x = layer_norm(name="norm2")(x + attend("self_attn", q, q, x))
        q = x + query_pos
        text = attend("ca_text", q, prompt, prompt, key_mask=prompt_valid)
        x = layer_norm(name="catext_norm")(x + text)
        image = attend("cross_attn", x + query_pos, memory + memory_pos, memory, bias=box_bias)
        x = layer_norm(name="norm1")(x + image)
        names = ("linear1", "linear2")
        h = mlp_on(self, x, self.dim_feedforward, names, jax.nn.relu, dt).astype(f32)
        return layer_norm(name="norm3")(x + h)
