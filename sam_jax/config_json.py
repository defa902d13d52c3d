"""Model configs to and from JSON (the `config` entry of a sam_jax .safetensors file's
metadata), including the field names of files written by older versions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sam_jax.config import (
    SAM2_1,
    HieraConfig,
    ModelConfig,
    Sam2Config,
    Sam3SemanticConfig,
    SamConfig,
    TinyViTConfig,
    ViTConfig,
)
from sam_jax.models.sam3_config import Sam3DetectorConfig, Sam3TextConfig, Sam3VisionConfig

ENCODER_TYPES: dict[str, type] = {
    "vit": ViTConfig,
    "tiny_vit": TinyViTConfig,
    "hiera": HieraConfig,
    "sam3_vit": Sam3VisionConfig,
}
MODEL_TYPES: dict[str, type] = {
    "sam": SamConfig,
    "sam2": Sam2Config,
    "sam3_semantic": Sam3SemanticConfig,
}
# Nested configs other than the encoder, by field name.
_NESTED: dict[str, type] = {"text": Sam3TextConfig, "detector": Sam3DetectorConfig}


def _type_name(table: dict[str, type], obj: Any) -> str:
    return next(k for k, v in table.items() if type(obj) is v)


def config_to_json(cfg: ModelConfig) -> str:
    """Serialise a model config (for safetensors metadata)."""
    d = dataclasses.asdict(cfg)
    d["encoder"]["type"] = _type_name(ENCODER_TYPES, cfg.encoder)
    d["type"] = _type_name(MODEL_TYPES, cfg)
    return json.dumps(d, sort_keys=True)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _upgrade_legacy_keys(d: dict[str, Any]) -> dict[str, Any]:
    """Model fields of files written by older versions, mapped to the current names:
    `sam2_1` (one switch) -> the three SAM2_1 behaviours; `cond_memory_in_window_only`
    (bool) -> `conditioning_memory`."""
    d = dict(d)
    if "sam2_1" in d:
        d.update(dict.fromkeys(SAM2_1, bool(d.pop("sam2_1"))))
    if "cond_memory_in_window_only" in d:
        d["conditioning_memory"] = "in_window" if d.pop("cond_memory_in_window_only") else "always"
    return d


def config_from_json(text: str) -> ModelConfig:
    """Inverse of `config_to_json`; also reads the field names of older files."""
    d = json.loads(text)
    enc = dict(d.pop("encoder"))
    enc_cls = ENCODER_TYPES[enc.pop("type")]
    cls = MODEL_TYPES[d.pop("type")]
    nested = {k: _NESTED[k](**_tuples(d.pop(k))) for k in list(d) if k in _NESTED}
    return cls(encoder=enc_cls(**_tuples(enc)), **nested, **_tuples(_upgrade_legacy_keys(d)))
