"""Tell a checkpoint's variant from its keys and shapes (never from the file name)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from sam_jax.config import VARIANTS, HieraConfig, TinyViTConfig, ViTConfig

_TINY_VIT_BLOCK = re.compile(r"image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.")


def _count(state_dict: Mapping, prefix: str, suffix: str) -> int:
    """Number of indexed children `prefix.<i>.suffix` present."""
    i = 0
    while f"{prefix}.{i}.{suffix}" in state_dict:
        i += 1
    return i


def _vit_signature(sd: Mapping) -> dict | None:
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None or "image_encoder.pos_embed" not in sd:
        return None
    return {
        "type": ViTConfig,
        "embed_dim": int(np.shape(w)[0]),
        "depth": _count(sd, "image_encoder.blocks", "norm1.weight"),
    }


def _tiny_vit_signature(sd: Mapping) -> dict | None:
    """TinyViT (MobileSAM): stage widths and block counts. Stage 0 is convolutional, so
    the widths come from the patch embedding and then from each attention stage's norm."""
    w = sd.get("image_encoder.patch_embed.seq.2.c.weight")
    if w is None:
        return None
    blocks: dict[int, int] = {}  # stage -> number of blocks
    for key in sd:
        m = _TINY_VIT_BLOCK.match(key)
        if m:
            stage, block = int(m[1]), int(m[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    depths = tuple(blocks.get(i, 0) for i in range(len(blocks)))
    dims = [int(np.shape(w)[0])]
    for i in range(1, len(depths)):
        norm = sd.get(f"image_encoder.layers.{i}.blocks.0.attn.norm.weight")
        dims.append(-1 if norm is None else int(np.shape(norm)[0]))
    return {"type": TinyViTConfig, "embed_dims": tuple(dims), "depths": depths}


def _hiera_signature(sd: Mapping) -> dict | None:
    """SAM 2 Hiera: width and blocks per stage (a stage's first block projects its input
    to the doubled width); the SAM 2.1 behaviours from the parameters they add."""
    w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if w is None:
        return None
    depth = _count(sd, "image_encoder.trunk.blocks", "norm1.weight")
    starts = [i for i in range(depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in sd]
    bounds = [0, *starts, depth]
    no_obj_embed_spatial = "no_obj_embed_spatial" in sd
    proj_tpos = "obj_ptr_tpos_proj.weight" in sd
    return {
        "type": HieraConfig,
        "embed_dim": int(np.shape(w)[0]),
        "stages": tuple(bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)),
        "model": {
            "no_obj_embed_spatial": no_obj_embed_spatial,
            "proj_tpos_enc_in_obj_ptrs": proj_tpos,
            # No parameter tells the signed encoding: it comes with the other 2.1 behaviours.
            "use_signed_tpos_enc_to_obj_ptrs": no_obj_embed_spatial or proj_tpos,
        },
    }


def _matches(cfg, sig: dict) -> bool:
    enc = cfg.encoder
    # sig["model"] (optional) holds model-level fields; the other keys are encoder fields.
    return (
        type(enc) is sig["type"]
        and all(getattr(enc, k) == v for k, v in sig.items() if k not in ("type", "model"))
        and all(getattr(cfg, k, None) == v for k, v in sig.get("model", {}).items())
    )


# Each reads the encoder family's signature off a state_dict, or None if it is not that family.
SIGNATURES = (_vit_signature, _tiny_vit_signature, _hiera_signature)


def detect_variant(state_dict: Mapping) -> str:
    """The variant name whose encoder matches the checkpoint; ValueError if none does."""
    for signature in SIGNATURES:
        sig = signature(state_dict)
        if sig is None:
            continue
        for name, cfg in VARIANTS.items():
            if _matches(cfg, sig):
                return name
        found = ", ".join(f"{k}={v}" for k, v in sig.items() if k != "type")
        raise ValueError(
            f"checkpoint looks like a {sig['type'].__name__} encoder ({found}) "
            f"but fits no known variant; pass variant= explicitly"
        )
    sample = ", ".join(list(state_dict)[:5])
    raise ValueError(
        "cannot tell the model variant from the checkpoint keys "
        f"(first keys: {sample}); is this a SAM / SAM 2 checkpoint?"
    )
