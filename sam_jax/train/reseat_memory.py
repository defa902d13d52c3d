"""Re-seat a SAM 2 model's memory path so that training can teach it to track.

A small SAM 2 trained from scratch here learned a memory that tracking could not use
(measured on the stage-9 `sam2_tiny_shapes`): the memory encoder's mask branch was about 2%
of its output, so a frame's memory described the frame's pixels, hardly where the object
was; and the cross-attention put 1.6% of its weight on the query's own position, matching
content instead. Further training did not get out of that state (the tracked frames' IoU
stayed flat for 1100 steps). `reseat_memory` fixes two sets of weights, then training goes on
(`trainable="all_but_encoder_positional"` keeps the second fix in place):

* the mask branch's last convolution is scaled by `mask_gain`, so the mask weighs about as
  much as the pixels in every memory token;
* every memory-attention layer's cross-attention gets queries and keys that ignore content
  (zero kernels) and share one constant vector `c` (the biases). Under axial RoPE the logit
  of query position p against memory position p' is then sum_k |c_k|^2 cos(f_k (p' - p)) / sqrt(d),
  which peaks at p' = p: each position reads the memory at and around itself, in every
  stored frame. `c` fills the `pairs` highest-frequency channel pairs of each axis with
  `amplitude`; the defaults put about 0.2 of a query's weight on its own position of a frame
  and about 0.7 on the 3x3 around it (16x16 grid).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import Sam2Config


def positional_vector(dim: int, amplitude: float = 2.5, pairs: int = 10) -> np.ndarray:
    """(dim,) float32: `amplitude` on the first channel of the `pairs` highest-frequency
    RoPE pairs of each axis (column pairs first, then row pairs; see `sam_jax.models.rope`)."""
    if dim % 4 or not 0 < pairs <= dim // 4:
        raise ValueError(f"need dim % 4 == 0 and 0 < pairs <= dim / 4; got {dim}, {pairs}")
    c = np.zeros((dim // 2, 2), np.float32)
    c[:pairs, 0] = amplitude
    c[dim // 4 : dim // 4 + pairs, 0] = amplitude
    return c.reshape(dim)


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
    last = max((k for k in down if k.startswith("encoder_")), key=lambda k: int(k.split("_")[1]))
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
