"""Tell a checkpoint's variant from its keys and shapes (never from the file name): Meta's
and ultralytics' torch names, or Hugging Face transformers' names."""

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


def _vit(sd: Mapping, prefix: str, patch: str, blocks: str, norm: str) -> dict | None:
    w = sd.get(f"{prefix}.{patch}.weight")
    if w is None or f"{prefix}.pos_embed" not in sd:
        return None
    return {
        "type": ViTConfig,
        "embed_dim": int(np.shape(w)[0]),
        "depth": _count(sd, f"{prefix}.{blocks}", f"{norm}.weight"),
    }


def _vit_signature(sd: Mapping) -> dict | None:
    return _vit(sd, "image_encoder", "patch_embed.proj", "blocks", "norm1")


def _hf_vit_signature(sd: Mapping) -> dict | None:
    """Hugging Face transformers' SamModel names."""
    return _vit(sd, "vision_encoder", "patch_embed.projection", "layers", "layer_norm1")


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


def _hiera(sd: Mapping, trunk: str, patch: str, norm: str, spatial: str, tpos: str) -> dict | None:
    """SAM 2 Hiera: width and blocks per stage (a stage's first block projects its input
    to the doubled width); the SAM 2.1 behaviours from the parameters they add."""
    w = sd.get(f"{trunk}.{patch}.weight")
    if w is None:
        return None
    depth = _count(sd, f"{trunk}.blocks", f"{norm}.weight")
    starts = [i for i in range(depth) if f"{trunk}.blocks.{i}.proj.weight" in sd]
    bounds = [0, *starts, depth]
    no_obj_embed_spatial = spatial in sd
    proj_tpos = tpos in sd
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


def _hiera_signature(sd: Mapping) -> dict | None:
    return _hiera(
        sd, "image_encoder.trunk", "patch_embed.proj", "norm1", "no_obj_embed_spatial",
        "obj_ptr_tpos_proj.weight",
    )  # fmt: skip


def _hf_hiera_signature(sd: Mapping) -> dict | None:
    """Hugging Face transformers' Sam2VideoModel / Sam2Model names (an image-only Sam2Model
    file has neither 2.1 parameter, so it reads as SAM 2.0: the same image model)."""
    return _hiera(
        sd, "vision_encoder.backbone", "patch_embed.projection", "layer_norm1",
        "occlusion_spatial_embedding_parameter",
        "temporal_positional_encoding_projection_layer.weight",
    )  # fmt: skip


def _matches(cfg, sig: dict) -> bool:
    enc = cfg.encoder
    # sig["model"] (optional) holds model-level fields; the other keys are encoder fields.
    return (
        type(enc) is sig["type"]
        and all(getattr(enc, k) == v for k, v in sig.items() if k not in ("type", "model"))
        and all(getattr(cfg, k, None) == v for k, v in sig.get("model", {}).items())
    )


# Each reads the encoder family's signature off a state_dict, or None if it is not that family.
SIGNATURES = (
    _vit_signature,
    _tiny_vit_signature,
    _hiera_signature,
    _hf_vit_signature,
    _hf_hiera_signature,
)


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
