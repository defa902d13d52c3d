"""SAM 2's memory attention: the current frame's features attend to the memory bank.

Memory layout (the sequence axis of `memory`, `memory_pos` and `memory_mask`):

    [ frame-memory tokens: num_frames * h * w | object-pointer tokens: num_obj_ptr_tokens ]

Each memory frame contributes its h * w spatial tokens in row-major order (the same grid as
the current frame); each object pointer contributes 4 tokens of 64 channels (a 256-d pointer
split in 4). Frame tokens get axial RoPE, every frame with the same positions (so a masked
frame slot moves nothing); pointer tokens get none. The fixed-shape memory bank of the video
tracker marks its empty slots False in `memory_mask`: those tokens then take no part at all,
and the output equals the reference fed only the valid tokens.

`dtype` is the computation dtype (parameters stay float32; LayerNorm, RoPE and softmax
statistics run in float32); inputs and output are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.attention import attention
from sam_jax.models.layers import Dense, layer_norm, mlp_on
from sam_jax.models.rope import apply_rope, apply_rope_to_keys, axial_rope_tables


class RoPEAttention(nn.Module):
    """Single-width attention with axial RoPE on q and on the first `num_k_rope` keys.

    q (B, Nq, D) with Nq = h * w; k, v (B, Nk, D_kv); key_mask (B, Nk) bool or None
    -> (B, Nq, D).
    """

    num_heads: int = 1
    rope_theta: float = 10000.0
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        q: jnp.ndarray,
        k: jnp.ndarray,
        v: jnp.ndarray,
        feat_hw: tuple[int, int],
        num_k_rope: int,
        key_mask: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        b, nq, d = q.shape
        heads, hd = self.num_heads, d // self.num_heads
        h, w = feat_hw
        if h * w != nq:
            raise ValueError(f"{nq} query tokens are not a {h}x{w} feature grid")
        dt = self.dtype
        q = Dense(d, dtype=dt, name="q_proj")(q).reshape(b, nq, heads, hd)
        k = Dense(d, dtype=dt, name="k_proj")(k).reshape(b, -1, heads, hd)
        v_proj = Dense(d, dtype=dt, name="v_proj")
        # Narrow values (the 64-d memory in cross-attention) are projected AFTER weighting:
        # P (v W + c) = (P v) W + c for rows of P summing to 1, 4x fewer multiplications
        # against the long memory axis than projecting every memory token first.
        project_after = v.shape[-1] < d
        if project_after:
            vals = v[:, :, None].astype(dt)  # (B, Nk, 1, D_kv), shared by the heads
        else:
            vals = v_proj(v).reshape(b, -1, heads, hd)

        # RoPE rotates along the token axis of (B, heads, tokens, hd).
        cos, sin = axial_rope_tables(h, w, hd, self.rope_theta)
        q = apply_rope(q.transpose(0, 2, 1, 3), cos, sin).transpose(0, 2, 1, 3)
        k = apply_rope_to_keys(k.transpose(0, 2, 1, 3), cos, sin, num_k_rope).transpose(0, 2, 1, 3)

        # Masked keys take no part; a row with no valid key comes back as zeros. With a mask
        # ("auto") the blocked implementation skips the key blocks of empty frame slots.
        out = attention(q, k, vals, key_mask=key_mask, key_blocks=h * w)  # (B, Nq, H, hd|D_kv)
        if project_after:
            full = v_proj(out).reshape(b, nq, heads, heads, hd)  # every head's columns
            out = jnp.diagonal(full, axis1=2, axis2=3).transpose(0, 1, 3, 2)  # its own
            if key_mask is not None:  # a row with no valid key attends to nothing (no bias)
                attends = jnp.any(key_mask, axis=-1)[:, None, None, None]
                out = out * attends.astype(out.dtype)
        return Dense(d, dtype=dt, name="out_proj")(out.reshape(b, nq, d))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to memory, ReLU MLP.

    Positional encodings follow the reference configuration: none on the self-attention
    inputs (RoPE only), `memory_pos` added to the cross-attention keys only.
    """

    dim_feedforward: int = 2048
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, tgt, memory, memory_pos, feat_hw, num_obj_ptr_tokens, memory_mask=None):
        dt = self.dtype
        x = layer_norm(name="norm1", dtype=dt)(tgt)
        hw = tgt.shape[1]
        tgt = tgt + RoPEAttention(dtype=dt, name="self_attn")(x, x, x, feat_hw, num_k_rope=hw)

        x = layer_norm(name="norm2", dtype=dt)(tgt)
        num_k_rope = memory.shape[1] - num_obj_ptr_tokens
        tgt = tgt + RoPEAttention(dtype=dt, name="cross_attn_image")(
            x, memory + memory_pos, memory, feat_hw, num_k_rope, memory_mask
        )

        x = layer_norm(name="norm3", dtype=dt)(tgt)
        names = ("linear1", "linear2")
        return tgt + mlp_on(self, x, self.dim_feedforward, names, jax.nn.relu, dt)


class MemoryAttention(nn.Module):
    """Conditions the current frame's features on the memory bank (eval mode: no dropout).

    Call:
        curr (B, HW, d_model) current-frame features, HW = h * w row-major;
        curr_pos (B, HW, d_model) their sine position encoding;
        memory (B, M, 64), memory_pos (B, M, 64): frame tokens then object-pointer tokens,
            M = num_frames * HW + num_obj_ptr_tokens (see the module docstring);
        num_obj_ptr_tokens: static int, the pointer tokens (slots) at the end of memory;
        memory_mask (B, M) bool or None: True marks a valid token; False tokens have no
            influence whatever their values (NaN included);
        feat_hw: static (h, w) of the feature grid (S/16, S/16).
    Returns (B, HW, d_model).
    """

    d_model: int = 256
    num_layers: int = 4
    dim_feedforward: int = 2048
    pos_enc_at_input: bool = True
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(
        self,
        curr: jnp.ndarray,
        curr_pos: jnp.ndarray,
        memory: jnp.ndarray,
        memory_pos: jnp.ndarray,
        num_obj_ptr_tokens: int,
        memory_mask: jnp.ndarray | None = None,
        feat_hw: tuple[int, int] = (64, 64),
    ) -> jnp.ndarray:
        if curr.shape[-1] != self.d_model:
            raise ValueError(f"curr has {curr.shape[-1]} channels, d_model is {self.d_model}")
        if curr.shape[0] != memory.shape[0]:
            raise ValueError(f"batch sizes differ: curr {curr.shape}, memory {memory.shape}")
        num_frame_tokens = memory.shape[1] - num_obj_ptr_tokens
        hw = feat_hw[0] * feat_hw[1]
        if num_obj_ptr_tokens < 0 or num_frame_tokens < 0 or num_frame_tokens % hw:
            raise ValueError(
                f"memory of {memory.shape[1]} tokens is not frames of {feat_hw[0]}x{feat_hw[1]} "
                f"tokens followed by {num_obj_ptr_tokens} object-pointer tokens"
            )
        if memory_mask is not None:
            valid = memory_mask[..., None]
            memory = jnp.where(valid, memory, 0)
            memory_pos = jnp.where(valid, memory_pos, 0)

        x = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        dt = self.dtype
        x, memory, memory_pos = x.astype(dt), memory.astype(dt), memory_pos.astype(dt)
        for i in range(self.num_layers):
            x = MemoryAttentionLayer(self.dim_feedforward, dtype=dt, name=f"layers_{i}")(
                x, memory, memory_pos, tuple(feat_hw), num_obj_ptr_tokens, memory_mask
            )
        return layer_norm(name="norm", dtype=jnp.float32)(x)
