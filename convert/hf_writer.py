"""Write sam_jax models in Hugging Face transformers' layout (config.json + model.safetensors).

`transformers.AutoModel.from_pretrained(folder)` then builds a `SamModel` (ViT SAM), a
`Sam2VideoModel` (SAM 2 / 2.1) or, for variables read from an image-only file, a `Sam2Model`,
holding the same tensors. Only safetensors and json are written: no torch needed.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np
from safetensors.numpy import save_file

from sam_jax.config import ModelConfig, Sam2Config, SamConfig, ViTConfig
from sam_jax.convert import hf_keymap, hf_sam2_keymap
from sam_jax.convert.hf_reader import CONFIG_FILE, SAFETENSORS_FILE, is_image_only
from sam_jax.convert.keymap import variables_to_state_dict


def _sam_to_hf(cfg: SamConfig) -> dict[str, Any]:
    enc = cfg.encoder
    if not isinstance(enc, ViTConfig):
        raise ValueError(
            f"transformers has no layout for a {type(enc).__name__} SAM (MobileSAM); "
            "only ViT SAM models can be written as SamModel"
        )
    size = enc.pretrain_image_size  # HF reads its input size off the position table
    d = cfg.prompt_embed_dim
    return {
        "model_type": "sam",
        "architectures": ["SamModel"],
        "tie_word_embeddings": True,
        "vision_config": {
            "model_type": "sam_vision_model",
            "hidden_size": enc.embed_dim,
            "num_hidden_layers": enc.depth,
            "num_attention_heads": enc.num_heads,
            "global_attn_indexes": list(enc.global_attn_indexes),
            "patch_size": enc.patch_size,
            "window_size": enc.window_size,
            "mlp_dim": int(enc.embed_dim * enc.mlp_ratio),
            "output_channels": enc.out_chans,
            "image_size": size,
            "num_pos_feats": d // 2,
        },
        "prompt_encoder_config": {
            "model_type": "sam_prompt_encoder",
            "hidden_size": d,
            "image_size": size,
            "patch_size": enc.patch_size,
            "mask_input_channels": cfg.mask_in_chans,
        },
        # Meta's two-way transformer normalises with eps 1e-5 (HF's default is 1e-6).
        "mask_decoder_config": {
            "model_type": "sam_mask_decoder",
            "hidden_size": d,
            "layer_norm_eps": 1e-5,
            **_decoder(cfg),
        },
    }


def _decoder(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "mlp_dim": cfg.decoder_mlp_dim,
        "num_hidden_layers": cfg.decoder_depth,
        "num_attention_heads": cfg.decoder_num_heads,
        "num_multimask_outputs": cfg.num_multimask_outputs,
        "iou_head_depth": cfg.iou_head_depth,
        "iou_head_hidden_dim": cfg.iou_head_hidden_dim,
    }


def _sam2_vision(cfg: Sam2Config) -> dict[str, Any]:
    enc, s = cfg.encoder, cfg.image_size
    n = len(enc.stages)
    levels = n - cfg.scalp
    return {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": enc.embed_dim,
            "num_attention_heads": enc.num_heads,
            "blocks_per_stage": list(enc.stages),
            "embed_dim_per_stage": [int(enc.embed_dim * enc.dim_mul**i) for i in range(n)],
            "num_attention_heads_per_stage": [
                int(enc.num_heads * enc.head_mul**i) for i in range(n)
            ],
            "window_size_per_stage": list(enc.window_spec),
            "global_attention_blocks": list(enc.global_att_blocks),
            "window_positional_embedding_background_size": list(
                enc.window_pos_embed_bkg_spatial_size
            ),
            "num_query_pool_stages": enc.q_pool,
            "query_stride": [enc.q_stride, enc.q_stride],
            "mlp_ratio": enc.mlp_ratio,
            "image_size": [s, s],
        },
        "backbone_channel_list": list(enc.channel_list),
        "backbone_feature_sizes": [[s // 4 // 2**i] * 2 for i in range(levels)],
        "fpn_hidden_size": cfg.d_model,
        "fpn_top_down_levels": list(cfg.fpn_top_down_levels),
        "num_feature_levels": levels,
    }


def _sam2_to_hf(cfg: Sam2Config, image_only: bool) -> dict[str, Any]:
    if cfg.conditioning_memory != "always":
        warnings.warn(
            f"transformers has no conditioning_memory={cfg.conditioning_memory!r}: it will "
            "track with 'always' (Meta's policy)",
            stacklevel=3,
        )
    out: dict[str, Any] = {
        "model_type": "sam2" if image_only else "sam2_video",
        "architectures": ["Sam2Model" if image_only else "Sam2VideoModel"],
        "vision_config": _sam2_vision(cfg),
        "prompt_encoder_config": {
            "model_type": "sam2_prompt_encoder",
            "hidden_size": cfg.d_model,
            "image_size": cfg.image_size,
            "patch_size": 16,
            "mask_input_channels": cfg.mask_in_chans,
        },
        "mask_decoder_config": {
            "model_type": "sam2_mask_decoder",
            "hidden_size": cfg.d_model,
            "dynamic_multimask_stability_delta": cfg.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": cfg.dynamic_multimask_stability_thresh,
            **_decoder(cfg),
        },
    }
    if image_only:
        return out
    g = cfg.embed_size
    return {
        **out,
        "image_size": cfg.image_size,
        "num_maskmem": cfg.num_maskmem,
        "sigmoid_scale_for_mem_enc": cfg.sigmoid_scale_for_mem_enc,
        "sigmoid_bias_for_mem_enc": cfg.sigmoid_bias_for_mem_enc,
        "enable_occlusion_spatial_embedding": cfg.no_obj_embed_spatial,
        "enable_temporal_pos_encoding_for_object_pointers": cfg.proj_tpos_enc_in_obj_ptrs,
        "multimask_output_for_tracking": cfg.multimask_output_for_tracking,
        "max_object_pointers_in_encoder": cfg.max_obj_ptrs_in_encoder,
        "memory_attention_hidden_size": cfg.d_model,
        "memory_attention_num_layers": cfg.memory_attention_layers,
        "memory_attention_feed_forward_hidden_size": cfg.memory_attention_mlp_dim,
        "memory_attention_rope_feat_sizes": [g, g],
        "memory_encoder_output_channels": cfg.mem_dim,
    }


def config_to_hf(cfg: ModelConfig, image_only: bool = False) -> dict[str, Any]:
    """The transformers `config.json` content of a model config (a `Sam2Model` one when
    `image_only`). ValueError for models transformers has no layout for (MobileSAM)."""
    if isinstance(cfg, Sam2Config):
        return _sam2_to_hf(cfg, image_only)
    return _sam_to_hf(cfg)


def hf_tensors(cfg: ModelConfig, variables: Mapping, image_only: bool = False) -> dict:
    """HF key -> numpy array (torch layout) for every variable (the memory path left out
    when `image_only`)."""
    sd = variables_to_state_dict(variables)
    sam2 = isinstance(cfg, Sam2Config)
    if image_only:
        sd = {k: v for k, v in sd.items() if not hf_sam2_keymap.is_memory_key(k)}
    names = (hf_sam2_keymap.sam2_hf_names if sam2 else hf_keymap.sam_hf_names)(sd)
    out: dict[str, np.ndarray] = {}
    stacked: dict[str, dict[int, np.ndarray]] = {}
    for meta, value in sd.items():
        name = names[meta]
        if name.row is None:
            out[name.key] = value
        else:
            stacked.setdefault(name.key, {})[name.row] = value
    for key, rows in stacked.items():
        out[key] = np.concatenate([rows[i] for i in sorted(rows)], axis=0)
    if sam2:  # SAM 2's prompt encoder keeps its own copy of the projection (not tied in HF)
        for alias, primary in hf_sam2_keymap.ALIASES.items():
            out[alias] = out[primary]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_hf(folder: str | os.PathLike, model: nn.Module, variables: Mapping) -> None:
    """Write `folder`/config.json and `folder`/model.safetensors (each file atomically)."""
    from sam_jax.checkpoint import atomic_write

    cfg = model.config
    image_only = isinstance(cfg, Sam2Config) and is_image_only(variables)
    config = {**config_to_hf(cfg, image_only), "dtype": "float32"}
    tensors = hf_tensors(cfg, variables, image_only)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / SAFETENSORS_FILE, lambda t: save_file(tensors, t, {"format": "pt"}))
    atomic_write(folder / CONFIG_FILE, lambda t: Path(t).write_text(text))
