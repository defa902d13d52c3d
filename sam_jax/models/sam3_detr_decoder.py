"""SAM 3's DETR-style decoder: learned queries refine boxes over the fused image memory.

ultralytics' TransformerDecoder as `_create_sam3_transformer` builds it, run as
`SAM3SemanticModel._run_decoder` runs it (eval, no DAC, no memory padding, valid ratios 1):

    x = query_embed (Q, D) per batch item;  b_0 = sigmoid(reference_points) (Q, 4) cxcywh
    t = presence_token (1, D) per batch item
    for layer l = 0 .. L-1, with boxes b = b_l:
        query_pos = ref_point_head(sine(b))              sine: (B, Q, 4) -> (B, Q, 2D)
        bias      = boxRPB(b, H, W)                      (B, heads, Q, HW), zero row for t
        [t, x]    = layers_l([t, x], [0, query_pos], memory, prompt, bias)
        hs_l      = norm(x)
        b_{l+1}   = sigmoid(inverse_sigmoid(b_l) + bbox_embed(hs_l))
        presence_l = clip(presence_token_head(presence_token_out_norm(t)), -10, 10)

sine(b) is DETR's embedding of each coordinate, D / 2 interleaved sin/cos channels at
temperature 1e4 of coordinate * 2pi, concatenated in the order (cy, cx, w, h). The box
relative position bias ("log" boxRPB) of a query with corners (x1, y1, x2, y2) at key
(row i, column j) of the H x W grid is

    by(i) = boxRPB_embed_y(f(i / H - [y1, y2]))      bx(j) = boxRPB_embed_x(f(j / W - [x1, x2]))
    bias[head, i * W + j] = by(i)[head] + bx(j)[head],   f(d) = sign(d) log2(8|d| + 1) / 3

(each embed a 2 -> D -> heads ReLU MLP), added to the image cross-attention logits.

Parameter names are the reference's (`transformer.decoder.*` of a SAM 3 checkpoint):
`layers_<i>`, `norm`, `bbox_embed`, `query_embed`, `reference_points`, `boxRPB_embed_x`,
`boxRPB_embed_y`, `presence_token`, `presence_token_head`, `presence_token_out_norm`,
`ref_point_head`; MLPs keep torch's `layers.<i>` entries.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.models.layers import MLP, Table, layer_norm
from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_decoder_layer import Sam3DecoderLayer

PRESENCE_LOGIT_MAX = 10.0  # the reference clamps the presence logits to +-10
_RPB_LOG_RANGE = 8.0  # boxRPB "log": offsets scaled by 8, then log2(8 |d| + 1) / log2(8)


class DecoderOutput(NamedTuple):
    """What `Sam3DetrDecoder` returns, batch-first, float32 (L layers, Q queries).

    hidden_states: (L, B, Q, D) every layer's queries after the final `norm`.
    reference_boxes: (L, B, Q, 4) the boxes each layer was given (cxcywh in [0, 1]): the
        learned starting boxes, then each layer's refinement; the reference's
        `intermediate_ref_boxes`.
    boxes: (L, B, Q, 4) each layer's refined boxes, sigmoid(inverse_sigmoid(reference
        boxes) + bbox_embed(hidden states)): `pred_boxes` of SAM3SemanticModel per layer.
    presence_logits: (L, B, 1) per-layer presence logit in [-10, 10], or None without a
        presence token.
    presence_features: (B, D) the presence token after the last layer (before its norm),
        or None without a presence token.
    """

    hidden_states: jnp.ndarray
    reference_boxes: jnp.ndarray
    boxes: jnp.ndarray
    presence_logits: jnp.ndarray | None
    presence_features: jnp.ndarray | None


def inverse_sigmoid(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """log(x / (1 - x)) with x clipped to [0, 1] and both terms floored at eps."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
    """(..., 4) centre-size boxes -> (..., 4) corners (x1, y1, x2, y2)."""
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return jnp.concatenate([centre - half, centre + half], axis=-1)


def _sine_frequencies(half: int) -> np.ndarray:
    """(half,) float32 divisors 1e4 ** (2 floor(k / 2) / half), computed in float32."""
    exponent = (2 * (np.arange(half, dtype=np.float32) // 2)).astype(np.float32) / np.float32(half)
    return np.power(np.float32(10000.0), exponent, dtype=np.float32)


def box_sine_embedding(boxes: jnp.ndarray, d_model: int) -> jnp.ndarray:
    """(..., 4) cxcywh boxes -> (..., 2 * d_model): d_model / 2 channels per coordinate,
    sin on even and cos on odd channels of coordinate * 2pi / frequency, in the order
    (cy, cx, w, h) (the reference puts y before x)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even for the box sine embedding, got {d_model}")
    div = jnp.asarray(_sine_frequencies(d_model // 2))
    angles = (boxes * np.float32(2 * np.pi))[..., None] / div  # (..., 4, d_model / 2)
    even = np.arange(d_model // 2) % 2 == 0
    emb = jnp.where(even, jnp.sin(angles), jnp.cos(angles))
    return jnp.concatenate([emb[..., i, :] for i in (1, 0, 2, 3)], axis=-1)


def _log_offsets(d: jnp.ndarray) -> jnp.ndarray:
    d = d * _RPB_LOG_RANGE
    return jnp.sign(d) * jnp.log2(jnp.abs(d) + 1.0) / np.log2(_RPB_LOG_RANGE)


def box_offsets(boxes: jnp.ndarray, grid: tuple[int, int]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """boxRPB's log-scaled offsets of the grid rows / columns from each box's edges.

    boxes (B, Q, 4) cxcywh -> (dy (B, Q, H, 2), dx (B, Q, W, 2)): row i / H minus (y1, y2)
    and column j / W minus (x1, x2), each through f(d) = sign(d) log2(8|d| + 1) / 3.
    """
    h, w = grid
    corners = cxcywh_to_xyxy(boxes)
    rows = jnp.arange(h, dtype=jnp.float32) / h
    cols = jnp.arange(w, dtype=jnp.float32) / w
    dy = rows[:, None] - corners[..., None, 1::2]
    dx = cols[:, None] - corners[..., None, 0::2]
    return _log_offsets(dy), _log_offsets(dx)


def box_relative_bias(
    embed_x: nn.Module, embed_y: nn.Module, boxes: jnp.ndarray, grid: tuple[int, int]
) -> jnp.ndarray:
    """boxRPB "log": (B, Q, 4) cxcywh boxes on an (H, W) grid -> (B, heads, Q, H * W)
    logit bias, row term embed_y(dy) plus column term embed_x(dx) (two 2 -> heads MLPs)."""
    dy, dx = box_offsets(boxes, grid)
    by = embed_y(dy).transpose(0, 3, 1, 2)  # (B, heads, Q, H)
    bx = embed_x(dx).transpose(0, 3, 1, 2)  # (B, heads, Q, W)
    bias = by[..., :, None] + bx[..., None, :]
    return bias.reshape(*bias.shape[:3], grid[0] * grid[1])


class Sam3DetrDecoder(nn.Module):
    """Fused image memory + prompt -> DecoderOutput; the math in the module docstring.

    `dtype` is the computation dtype of the layers' attention and feed-forward products;
    boxes, norms, heads and every output stay float32 (parameters are float32).
    """

    config: Sam3DetectorConfig = Sam3DetectorConfig()
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        d, nq, heads = cfg.d_model, cfg.num_queries, cfg.num_heads
        self.query_embed = Table(nq, d)
        self.reference_points = Table(nq, 4)
        self.layers = [
            Sam3DecoderLayer(heads, cfg.dim_feedforward, dtype=self.dtype)
            for _ in range(cfg.decoder_layers)
        ]
        self.norm = layer_norm()
        self.ref_point_head = MLP(d, d, 2)
        self.bbox_embed = MLP(d, 4, 3)
        self.boxRPB_embed_x = MLP(d, heads, 2)
        self.boxRPB_embed_y = MLP(d, heads, 2)
        if cfg.presence_token:
            self.presence_token = Table(1, d)
            self.presence_token_out_norm = layer_norm()
            self.presence_token_head = MLP(d, 1, 3)

    def __call__(
        self,
        memory: jnp.ndarray,
        memory_pos: jnp.ndarray,
        prompt: jnp.ndarray,
        prompt_valid: jnp.ndarray,
        *,
        spatial_shape: tuple[int, int],
    ) -> DecoderOutput:
        """memory (B, H*W, D) row-major over the (H, W) grid `spatial_shape` (static ints),
        memory_pos (B or 1, H*W, D), prompt (B, P, D), prompt_valid (B, P) bool (True at
        real tokens; each item should have one, else its text attention update is zero
        where the reference gives NaN). Bad shapes raise ValueError."""
        cfg = self.config
        grid = _check_inputs(cfg, memory, memory_pos, prompt, prompt_valid, spatial_shape)
        b, d, nq = memory.shape[0], cfg.d_model, cfg.num_queries
        context = {
            "memory": memory.astype(jnp.float32),
            "memory_pos": memory_pos.astype(jnp.float32),
            "prompt": prompt.astype(jnp.float32),
            "prompt_valid": prompt_valid,
        }
        x = jnp.broadcast_to(self.query_embed()[None], (b, nq, d))
        boxes = jax.nn.sigmoid(jnp.broadcast_to(self.reference_points()[None], (b, nq, 4)))
        presence = None
        if cfg.presence_token:
            presence = jnp.broadcast_to(self.presence_token()[None], (b, 1, d))
        hidden, refs, refined, presence_logits = [], [], [], []
        for layer in self.layers:
            x, presence = self._layer(layer, x, presence, boxes, grid, context)
            hs = self.norm(x)
            new_boxes = jax.nn.sigmoid(inverse_sigmoid(boxes) + self.bbox_embed(hs))
            hidden.append(hs)
            refs.append(boxes)
            refined.append(new_boxes)
            boxes = new_boxes
            if presence is not None:
                presence_logits.append(self._presence_logit(presence))
        return DecoderOutput(
            hidden_states=jnp.stack(hidden),
            reference_boxes=jnp.stack(refs),
            boxes=jnp.stack(refined),
            presence_logits=jnp.stack(presence_logits) if presence is not None else None,
            presence_features=presence[:, 0] if presence is not None else None,
        )

    def _layer(
        self,
        layer: Sam3DecoderLayer,
        x: jnp.ndarray,
        presence: jnp.ndarray | None,
        boxes: jnp.ndarray,
        grid: tuple[int, int],
        context: dict[str, jnp.ndarray],
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """One layer on queries x (B, Q, D) given their boxes (B, Q, 4); the presence token
        (B, 1, D) rides along as row 0 with a zero position and a zero box bias."""
        query_pos = self.ref_point_head(box_sine_embedding(boxes, self.config.d_model))
        bias = box_relative_bias(self.boxRPB_embed_x, self.boxRPB_embed_y, boxes, grid)
        if presence is None:
            return layer(x, query_pos, box_bias=bias, **context), None
        rows = jnp.concatenate([presence, x], axis=1)
        query_pos = jnp.concatenate([jnp.zeros_like(presence), query_pos], axis=1)
        bias = jnp.pad(bias, ((0, 0), (0, 0), (1, 0), (0, 0)))
        rows = layer(rows, query_pos, box_bias=bias, **context)
        return rows[:, 1:], rows[:, :1]

    def _presence_logit(self, token: jnp.ndarray) -> jnp.ndarray:
        """(B, 1, D) presence token -> (B, 1) logit clamped to +-PRESENCE_LOGIT_MAX."""
        logit = self.presence_token_head(self.presence_token_out_norm(token))[..., 0]
        return jnp.clip(logit, -PRESENCE_LOGIT_MAX, PRESENCE_LOGIT_MAX)


def _check_inputs(
    cfg: Sam3DetectorConfig,
    memory: jnp.ndarray,
    memory_pos: jnp.ndarray,
    prompt: jnp.ndarray,
    prompt_valid: jnp.ndarray,
    spatial_shape: tuple[int, int],
) -> tuple[int, int]:
    """ValueError naming the first input that does not fit; returns (H, W) as ints."""
    d = cfg.d_model
    if memory.ndim != 3 or memory.shape[-1] != d:
        raise ValueError(f"memory must be (B, H*W, {d}), got shape {memory.shape}")
    b, hw = memory.shape[:2]
    try:
        h, w = (int(s) for s in spatial_shape)
    except (TypeError, ValueError):
        raise ValueError(f"spatial_shape must be two ints (H, W), got {spatial_shape!r}") from None
    if h < 1 or w < 1 or h * w != hw:
        raise ValueError(f"spatial_shape {(h, w)} does not cover the memory's {hw} tokens")
    if memory_pos.shape not in ((b, hw, d), (1, hw, d)):
        raise ValueError(f"memory_pos must be ({b} or 1, {hw}, {d}), got shape {memory_pos.shape}")
    if prompt.ndim != 3 or prompt.shape[0] != b or prompt.shape[-1] != d or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be ({b}, P, {d}) with P >= 1, got shape {prompt.shape}")
    if prompt_valid.shape != prompt.shape[:2] or prompt_valid.dtype != jnp.bool_:
        raise ValueError(
            f"prompt_valid must be a bool array of shape {prompt.shape[:2]}, got "
            f"{prompt_valid.dtype} {prompt_valid.shape}"
        )
    return h, w
