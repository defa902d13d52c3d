"""Re-seat a SAM 2 model's memory path so that training can teach it to track by position.

`reseat_memory` sets two groups of weights, then training goes on (with the trainable rule
`ALL_BUT_ENCODER_POSITIONAL`, which keeps the second group in place):

* the memory encoder's mask branch (its last convolution) is scaled by `mask_gain`, so the
  mask weighs more against the pixels in every memory token;
* every memory-attention layer's cross-attention gets queries and keys that ignore content
  (zero kernels) and share one constant vector `c` (the biases). Under axial RoPE the logit
  of query position p against memory position p' is then sum_k |c_k|^2 cos(f_k (p' - p)) / sqrt(d),
  which peaks at p' = p: each position reads the memory at and around itself, in every
  stored frame. `c` fills the `pairs` highest-frequency channel pairs of each axis with
  `amplitude`; the defaults put about 0.2 of a query's weight on its own position of a frame
  and more than 0.6 on the 3x3 around it (16x16 grid; tested).

With those keys every stored frame weighs the same. `weigh_recent_memory` lets the keys see
the frame's temporal encoding through one channel `j` and nothing else, so that the most
recent frame's logits are scaled by `gain`:

* channel `j` of everything that enters the keys but the temporal table is made zero: the
  memory encoder's output and its no-object embedding, the object pointers (each of their
  `D / m` tokens) and their temporal projection; `j` is the lowest-frequency sine channel
  of the rows of SAM 2's 2-D position encoding, which is below 2 pi / 10000^(1 - 4/m) on
  every grid (0.0011 for m = 64), so the spatial encoding adds nothing there either;
* the key kernel's row `j` becomes the key bias `c`, so a frame's key is `c (1 + e_j)`
  with `e_j` its temporal encoding's channel `j`, set to `gain - 1` for the most recent
  frame and 0 for the others; object pointers keep the key `c`.

Why and what it gave the bundled `sam2_tiny_shapes`: sam_jax/projects/shapes/README.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import Sam2Config

# A trainable rule for `sam_jax.train.step.make_optimizer` after `reseat_memory`: as the
# "all_but_encoder" preset, but the memory attention's cross-attention keeps the positional
# queries and keys it was given. (trained, frozen) globs over "/"-joined parameter paths.
ALL_BUT_ENCODER_POSITIONAL = (
    None,
    ("image_encoder/*", "memory_attention/*/cross_attn_image/[qk]_proj/*"),
)


def positional_vector(dim: int, amplitude: float = 2.5, pairs: int = 10) -> np.ndarray:
    """(dim,) float32: `amplitude` on the first channel of the `pairs` highest-frequency
    RoPE pairs of each axis (column pairs first, then row pairs; see `sam_jax.models.rope`)."""
    if dim % 4 or not 0 < pairs <= dim // 4:
        raise ValueError(f"need dim % 4 == 0 and 0 < pairs <= dim / 4; got {dim}, {pairs}")
    c = np.zeros((dim // 2, 2), np.float32)
    c[:pairs, 0] = amplitude
    c[dim // 4 : dim // 4 + pairs, 0] = amplitude
    return c.reshape(dim)


def _last_numbered(tree: dict, prefix: str) -> str:
    """The key `prefix + n` with the largest n (e.g. a Sequential's last layer)."""
    return max((k for k in tree if k.startswith(prefix)), key=lambda k: int(k[len(prefix) :]))


def reseat_memory(
    config: Sam2Config,
    variables: Any,
    mask_gain: float = 20.0,
    amplitude: float = 2.5,
    pairs: int = 10,
) -> Any:
    """The variables with the memory encoder's mask branch scaled by `mask_gain` and every
    cross-attention made positional (module docstring); nothing else changes."""
    if not isinstance(config, Sam2Config):
        raise ValueError(f"reseat_memory needs a SAM 2 model; got {config.name}")
    params = jax.tree.map(lambda x: x, variables["params"])  # new containers, same leaves
    down = params["memory_encoder"]["mask_downsampler"]
    last = _last_numbered(down, "encoder_")
    down[last] = {k: v * mask_gain for k, v in down[last].items()}
    c = positional_vector(config.d_model, amplitude, pairs)
    for name, layer in params["memory_attention"].items():
        if name.startswith("layers_"):
            for proj in ("q_proj", "k_proj"):
                p = layer["cross_attn_image"][proj]
                p["kernel"] = jnp.zeros_like(p["kernel"])
                # a buffer per leaf: the train step donates its state, once per buffer
                p["bias"] = jnp.array(c, p["bias"].dtype)
    return {**variables, "params": params}


def recency_channel(mem_dim: int) -> int:
    """The channel `weigh_recent_memory` uses: the last sine channel of the row half of
    the memories' 2-D position encoding (`position_encoding.sine_position_encoding`)."""
    return mem_dim // 2 - 2


def weigh_recent_memory(config: Sam2Config, variables: Any, gain: float = 1.6) -> Any:
    """The variables of a re-seated model (`reseat_memory`) with the most recent frame's
    memory weighted by `gain` in every cross-attention (module docstring); the memory
    encoder, pointer projections, temporal table and key kernels change in channel j only."""
    if not isinstance(config, Sam2Config):
        raise ValueError(f"weigh_recent_memory needs a SAM 2 model; got {config.name}")
    params = jax.tree.map(lambda x: x, variables["params"])
    layers = [v for k, v in params["memory_attention"].items() if k.startswith("layers_")]
    if any(np.any(np.asarray(x["cross_attn_image"]["q_proj"]["kernel"])) for x in layers):
        raise ValueError("weigh_recent_memory needs a re-seated model (reseat_memory first)")
    m, j = config.mem_dim, recency_channel(config.mem_dim)
    cols = np.arange(j, config.d_model, m)  # channel j of each pointer token

    def zero(leaf: jnp.ndarray, index) -> jnp.ndarray:
        return jnp.asarray(leaf).at[index].set(0)

    out = params["memory_encoder"]["out_proj"]
    out["kernel"], out["bias"] = zero(out["kernel"], (..., j)), zero(out["bias"], j)
    mlp = params["obj_ptr_proj"]
    last = mlp[_last_numbered(mlp, "layers_")]
    last["kernel"], last["bias"] = zero(last["kernel"], (..., cols)), zero(last["bias"], cols)
    params["no_obj_ptr"] = zero(params["no_obj_ptr"], (..., cols))
    if "no_obj_embed_spatial" in params:  # SAM 2.1
        params["no_obj_embed_spatial"] = zero(params["no_obj_embed_spatial"], (..., j))
    if "obj_ptr_tpos_proj" in params:  # SAM 2.1; SAM 2's raw 1-D sine is below 0.001 there
        tp = params["obj_ptr_tpos_proj"]
        tp["kernel"], tp["bias"] = zero(tp["kernel"], (..., j)), zero(tp["bias"], j)
    # rows: the recent frame at distance k uses row k - 1; conditioning frames the last row
    tpos = jnp.asarray(params["maskmem_tpos_enc"])
    params["maskmem_tpos_enc"] = zero(tpos, (..., j)).at[0, ..., j].set(gain - 1.0)
    for layer in layers:
        k = layer["cross_attn_image"]["k_proj"]
        k["kernel"] = jnp.asarray(k["kernel"]).at[j].set(k["bias"])
    return {**variables, "params": params}
