"""Fewer remembered frames for a trained SAM 2 model (a smaller `num_maskmem`).

A frame attends to the spatial memories of the conditioning frames and of the
`num_maskmem - 1` frames before it. The temporal table `maskmem_tpos_enc`
(num_maskmem, 1, 1, m) holds row k - 1 for the memory k frames back and its last row for
conditioning frames, so shortening the window to n keeps rows 0 .. n - 2 and the last one:
every memory still in reach keeps its encoding, and the shortened model equals the
original one with the memories older than n - 1 frames dropped.

A model that reads its memory by position (`reseat_memory`) holds a moving object where it
was in each remembered frame; a shorter window keeps fewer such lagging copies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from sam_jax.checkpoint import build_from_config
from sam_jax.config import Sam2Config


def shorten_memory(model: Any, variables: dict, num_maskmem: int) -> tuple[Any, dict]:
    """(model, variables) remembering `num_maskmem - 1` recent frames instead of the
    config's; 2 <= num_maskmem <= the model's own. Other parameters are shared."""
    cfg = model.config
    if not isinstance(cfg, Sam2Config):
        raise ValueError(f"shorten_memory needs a SAM 2 model; got {cfg.name}")
    if not 2 <= num_maskmem <= cfg.num_maskmem:
        raise ValueError(
            f"num_maskmem must be in [2, {cfg.num_maskmem}] (the model's own); got {num_maskmem}"
        )
    if num_maskmem == cfg.num_maskmem:
        return model, variables
    table = jnp.asarray(variables["params"]["maskmem_tpos_enc"])
    params = dict(variables["params"])
    params["maskmem_tpos_enc"] = jnp.concatenate([table[: num_maskmem - 1], table[-1:]], axis=0)
    new_model = build_from_config(dataclasses.replace(cfg, num_maskmem=num_maskmem))
    return new_model, {**variables, "params": params}
