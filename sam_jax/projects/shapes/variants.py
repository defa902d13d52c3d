"""Architectures of this project that are not shipped as variants of the core table.

`sam_tiny_shapes_p16` is the from-scratch base of the bundled `sam_tiny_shapes`: the same
ViT with 16-pixel patches (a 16x16 embedding grid at 256 px). `repatch(..., 8)` turns it into
the `sam_tiny_shapes` architecture.
"""

from __future__ import annotations

import dataclasses

from sam_jax.config import VARIANTS as CORE_VARIANTS
from sam_jax.config import ModelConfig

_BUNDLED = CORE_VARIANTS["sam_tiny_shapes"]
SAM_TINY_SHAPES_P16 = dataclasses.replace(
    _BUNDLED,
    name="sam_tiny_shapes_p16",
    encoder=dataclasses.replace(_BUNDLED.encoder, patch_size=16, window_size=8),
)

VARIANTS: dict[str, ModelConfig] = {SAM_TINY_SHAPES_P16.name: SAM_TINY_SHAPES_P16}


def variant_config(name: str, image_size: int | None = None) -> ModelConfig:
    """The config of a variant of this project or of the core table (`sam_jax.VARIANTS`),
    optionally at another square image size."""
    table = {**CORE_VARIANTS, **VARIANTS}
    if name not in table:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(table)}")
    cfg = table[name]
    return cfg if image_size is None else dataclasses.replace(cfg, image_size=image_size)
