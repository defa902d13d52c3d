"""Give a trained SAM ViT finer patches, keeping what it learned (FlexiViT-style resizing).

Finer patches mean a finer embedding grid, so finer masks and small objects that span
several cells. The new model starts as the old one looking at the image upsampled r times
(r = old patch / new patch):
- a p/r-pixel patch is embedded as the old kernel embeds that patch upsampled r times
  (nearest), so the new kernel sums r x r blocks of the old one;
- the position table is resized bilinearly to the r-times larger grid (smoother than the
  nearest resize the encoder applies at other image sizes) and the relative-position
  tables linearly, as the encoder does;
- attention windows grow r times, so each still covers the same pixels.
The prompt encoder and mask decoder have no grid-sized weights and are kept as they are.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from sam_jax.checkpoint import build_from_config
from sam_jax.config import SamConfig, ViTConfig
from sam_jax.models.resize import resize_bilinear, resize_linear_rows


def repatch(
    model: nn.Module, variables: dict, patch_size: int, name: str | None = None
) -> tuple[nn.Module, dict]:
    """(model, variables) of a ViT SAM -> the same with `patch_size`-pixel patches.

    `patch_size` must divide the current one; `name` renames the variant (else kept).
    Returns a new (model, variables)."""
    cfg = model.config
    if not (isinstance(cfg, SamConfig) and isinstance(cfg.encoder, ViTConfig)):
        raise ValueError(f"repatch needs a SAM ViT model; got {type(cfg).__name__}")
    old = cfg.encoder.patch_size
    if patch_size < 1 or old % patch_size:
        raise ValueError(f"patch_size must divide the current patch size {old}; got {patch_size}")
    r = old // patch_size
    encoder = dataclasses.replace(
        cfg.encoder, patch_size=patch_size, window_size=cfg.encoder.window_size * r
    )
    new_cfg = dataclasses.replace(cfg, encoder=encoder, name=name or cfg.name)
    new_model = build_from_config(new_cfg, remat=model.remat)

    variables = jax.tree.map(np.asarray, variables)
    enc = dict(variables["params"]["image_encoder"])
    kernel = enc["patch_embed"]["proj"]["kernel"]  # (p, p, 3, D)
    d = kernel.shape[-1]
    kernel = kernel.reshape(patch_size, r, patch_size, r, 3, d).sum((1, 3))
    enc["patch_embed"] = {"proj": {**enc["patch_embed"]["proj"], "kernel": kernel}}
    grid = enc["pos_embed"].shape[1] * r
    enc["pos_embed"] = np.asarray(resize_bilinear(enc["pos_embed"], (grid, grid)))
    for module, block in enc.items():
        if module.startswith("blocks_"):
            attn = dict(block["attn"])
            for t in ("rel_pos_h", "rel_pos_w"):  # 2n - 1 rows -> 2rn - 1
                attn[t] = np.asarray(resize_linear_rows(attn[t], r * (len(attn[t]) + 1) - 1))
            enc[module] = {**block, "attn": attn}
    params = {**variables["params"], "image_encoder": enc}
    return new_model, {**variables, "params": params}
