"""Hugging Face transformers `config.json` <-> sam_jax model configs.

Reads the configs of `SamModel` ("sam"), `Sam2Model` ("sam2") and `Sam2VideoModel`
("sam2_video"). Fields a file leaves out take transformers' defaults (older versions wrote
only the fields that differ). An HF setting sam_jax does not implement (e.g. a ViT without
relative positions) is a ValueError naming the field; fields that only shape training
(dropout, initialiser ranges) are ignored. A config equal to a named variant's gets its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sam_jax.config import VARIANTS, HieraConfig, ModelConfig, Sam2Config, SamConfig, ViTConfig

# transformers' defaults (5.x; unchanged since the models were added).
SAM_VISION = {
    "hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 1024, "patch_size": 16,
    "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True, "mlp_ratio": 4.0,
    "use_abs_pos": True, "use_rel_pos": True, "window_size": 14,
    "global_attn_indexes": [2, 5, 8, 11], "num_pos_feats": 128, "mlp_dim": None,
}  # fmt: skip
PROMPT = {
    "hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16,
    "num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
}  # fmt: skip
DECODER = {
    "hidden_size": 256, "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
    "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3,
    "iou_head_hidden_dim": 256, "layer_norm_eps": 1e-6,
    "dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}  # fmt: skip
HIERA = {
    "hidden_size": 96, "num_attention_heads": 1, "num_channels": 3, "image_size": [1024, 1024],
    "patch_kernel_size": [7, 7], "patch_stride": [4, 4], "patch_padding": [3, 3],
    "query_stride": [2, 2], "window_positional_embedding_background_size": [7, 7],
    "num_query_pool_stages": 3, "blocks_per_stage": [1, 2, 7, 2],
    "embed_dim_per_stage": [96, 192, 384, 768], "num_attention_heads_per_stage": [1, 2, 4, 8],
    "window_size_per_stage": [8, 4, 14, 7], "global_attention_blocks": [5, 7, 9],
    "mlp_ratio": 4.0, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
}  # fmt: skip
SAM2_VISION = {
    "backbone_channel_list": [768, 384, 192, 96], "fpn_hidden_size": 256, "fpn_kernel_size": 1,
    "fpn_stride": 1, "fpn_padding": 0, "fpn_top_down_levels": [2, 3], "num_feature_levels": 3,
    "hidden_act": "gelu", "layer_norm_eps": 1e-6,
}  # fmt: skip
VIDEO = {
    "num_maskmem": 7, "image_size": 1024, "sigmoid_scale_for_mem_enc": 20.0,
    "sigmoid_bias_for_mem_enc": -10.0, "enable_occlusion_spatial_embedding": True,
    "multimask_output_in_sam": True, "multimask_min_pt_num": 0, "multimask_max_pt_num": 1,
    "multimask_output_for_tracking": True, "max_object_pointers_in_encoder": 16,
    "max_cond_frame_num": -1, "enable_temporal_pos_encoding_for_object_pointers": True,
    "memory_attention_hidden_size": 256, "memory_attention_num_layers": 4,
    "memory_attention_num_attention_heads": 1, "memory_attention_downsample_rate": 1,
    "memory_attention_feed_forward_hidden_size": 2048,
    "memory_attention_feed_forward_hidden_act": "relu", "memory_encoder_hidden_size": 256,
    "memory_encoder_output_channels": 64, "mask_downsampler_embed_dim": 256,
    "mask_downsampler_kernel_size": 3, "mask_downsampler_stride": 2,
    "mask_downsampler_padding": 1, "mask_downsampler_total_stride": 16,
    "mask_downsampler_hidden_act": "gelu", "memory_fuser_num_layers": 2,
    "memory_fuser_embed_dim": 256, "memory_fuser_intermediate_dim": 1024,
    "memory_fuser_kernel_size": 7, "memory_fuser_padding": 3, "memory_fuser_hidden_act": "gelu",
}  # fmt: skip

# The settings sam_jax's modules hard-wire: an HF config must have these values.
_FIXED_SAM_VISION = {
    "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True,
    "use_abs_pos": True, "use_rel_pos": True,
}  # fmt: skip
_FIXED_PROMPT = {"num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6}
_FIXED_DECODER = {"attention_downsample_rate": 2, "dynamic_multimask_via_stability": True}
_FIXED_HIERA = {
    "num_channels": 3, "patch_kernel_size": [7, 7], "patch_stride": [4, 4],
    "patch_padding": [3, 3], "hidden_act": "gelu", "layer_norm_eps": 1e-6,
}  # fmt: skip
_FIXED_SAM2_VISION = {"fpn_kernel_size": 1, "fpn_stride": 1, "fpn_padding": 0}
_FIXED_VIDEO_KEYS = (
    "multimask_output_in_sam", "multimask_min_pt_num", "multimask_max_pt_num",
    "max_cond_frame_num", "memory_attention_num_attention_heads",
    "memory_attention_downsample_rate", "memory_attention_feed_forward_hidden_act",
    "memory_encoder_hidden_size", "mask_downsampler_embed_dim", "mask_downsampler_kernel_size",
    "mask_downsampler_stride", "mask_downsampler_padding", "mask_downsampler_total_stride",
    "mask_downsampler_hidden_act", "memory_fuser_num_layers", "memory_fuser_embed_dim",
    "memory_fuser_intermediate_dim", "memory_fuser_kernel_size", "memory_fuser_padding",
    "memory_fuser_hidden_act",
)  # fmt: skip
_FIXED_VIDEO = {key: VIDEO[key] for key in _FIXED_VIDEO_KEYS}

MODEL_TYPES = ("sam", "sam2", "sam2_video")


def _section(hf: Mapping, name: str | None, defaults: Mapping) -> dict:
    """The named sub-config (or the top level) over transformers' defaults."""
    given = hf if name is None else hf.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"config.json: {name} is not an object")
    return {**defaults, **{k: given[k] for k in defaults if k in given}}


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _check_fixed(section: Mapping, fixed: Mapping, where: str) -> None:
    for key, want in fixed.items():
        if _norm(section[key]) != _norm(want):
            raise ValueError(
                f"config.json: {where}{key} = {section[key]!r}; sam_jax implements only {want!r}"
            )


def _same(where: str, **values: Any) -> Any:
    """The one value several fields must share; ValueError naming them otherwise."""
    distinct = {repr(_norm(v)) for v in values.values()}
    if len(distinct) > 1:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ValueError(f"config.json: {where} must agree: {shown}")
    return next(iter(values.values()))


def _square(value: Any, where: str) -> int:
    """An HF size given as N or [N, N]."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"config.json: {where} = {value!r}; only square sizes are supported")
        value = value[0]
    return int(value)


def named(cfg: ModelConfig) -> ModelConfig:
    """`cfg` named after the variant it equals, if any (else as it is, "custom")."""
    for name, variant in VARIANTS.items():
        if dataclasses.replace(cfg, name=name) == variant:
            return variant
    return cfg


def _sam_from_hf(hf: Mapping) -> SamConfig:
    v = _section(hf, "vision_config", SAM_VISION)
    p = _section(hf, "prompt_encoder_config", PROMPT)
    m = _section(hf, "mask_decoder_config", DECODER)
    _check_fixed(v, _FIXED_SAM_VISION, "vision_config.")
    _check_fixed(p, _FIXED_PROMPT, "prompt_encoder_config.")
    _check_fixed(m, _FIXED_DECODER, "mask_decoder_config.")
    width = v["hidden_size"]
    mlp_dim = v["mlp_dim"] if v["mlp_dim"] is not None else int(width * v["mlp_ratio"])
    if int(width * (mlp_dim / width)) != mlp_dim:
        raise ValueError(f"config.json: vision_config.mlp_dim {mlp_dim} is not a whole ratio")
    size = _same(
        "the image sizes",
        vision_config=_square(v["image_size"], "vision_config.image_size"),
        prompt_encoder_config=_square(p["image_size"], "prompt_encoder_config.image_size"),
    )
    dim = _same(
        "the prompt widths",
        **{
            "vision_config.output_channels": v["output_channels"],
            "prompt_encoder_config.hidden_size": p["hidden_size"],
            "mask_decoder_config.hidden_size": m["hidden_size"],
            "2 * vision_config.num_pos_feats": 2 * v["num_pos_feats"],
        },
    )
    patch = _same(
        "the patch sizes",
        vision_config=_square(v["patch_size"], "vision_config.patch_size"),
        prompt_encoder_config=_square(p["patch_size"], "prompt_encoder_config.patch_size"),
    )
    encoder = ViTConfig(
        embed_dim=width,
        depth=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"],
        global_attn_indexes=tuple(v["global_attn_indexes"]),
        patch_size=patch,
        window_size=v["window_size"],
        mlp_ratio=mlp_dim / width,
        out_chans=dim,
        pretrain_image_size=size,
    )
    return SamConfig(
        encoder=encoder,
        image_size=size,
        prompt_embed_dim=dim,
        mask_in_chans=p["mask_input_channels"],
        **_decoder_fields(m),
    )


def _decoder_fields(m: Mapping) -> dict[str, Any]:
    return {
        "decoder_depth": m["num_hidden_layers"],
        "decoder_mlp_dim": m["mlp_dim"],
        "decoder_num_heads": m["num_attention_heads"],
        "num_multimask_outputs": m["num_multimask_outputs"],
        "iou_head_depth": m["iou_head_depth"],
        "iou_head_hidden_dim": m["iou_head_hidden_dim"],
    }


def _hiera_from_hf(b: Mapping) -> HieraConfig:
    _check_fixed(b, _FIXED_HIERA, "vision_config.backbone_config.")
    width, heads, n = b["hidden_size"], b["num_attention_heads"], len(b["blocks_per_stage"])
    stride = _square(b["query_stride"], "vision_config.backbone_config.query_stride")
    # sam_jax's Hiera doubles width and heads at each stage, as every SAM 2 size does.
    for key, first in (("embed_dim_per_stage", width), ("num_attention_heads_per_stage", heads)):
        if _norm(b[key]) != [first * 2**i for i in range(n)]:
            raise ValueError(
                f"config.json: vision_config.backbone_config.{key} = {b[key]!r}; sam_jax "
                f"implements only a doubling per stage from {first}"
            )
    return HieraConfig(
        embed_dim=width,
        num_heads=heads,
        stages=tuple(b["blocks_per_stage"]),
        global_att_blocks=tuple(b["global_attention_blocks"]),
        window_spec=tuple(b["window_size_per_stage"]),
        window_pos_embed_bkg_spatial_size=tuple(b["window_positional_embedding_background_size"]),
        q_pool=b["num_query_pool_stages"],
        q_stride=stride,
        mlp_ratio=b["mlp_ratio"],
    )


def _memory_fields(hf: Mapping, d_model: int) -> dict[str, Any]:
    """The Sam2Config fields of a `Sam2VideoModel` config's memory settings."""
    t = _section(hf, None, VIDEO)
    _check_fixed(t, _FIXED_VIDEO, "")
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("memory_attention_rope_theta", 10000.0))
    if float(theta) != 10000.0:
        raise ValueError(f"config.json: rope_theta = {theta!r}; sam_jax implements only 10000")
    _same(
        "the memory attention width",
        d_model=d_model,
        memory_attention_hidden_size=t["memory_attention_hidden_size"],
    )
    tpos = bool(t["enable_temporal_pos_encoding_for_object_pointers"])
    return {
        "num_maskmem": t["num_maskmem"],
        "sigmoid_scale_for_mem_enc": float(t["sigmoid_scale_for_mem_enc"]),
        "sigmoid_bias_for_mem_enc": float(t["sigmoid_bias_for_mem_enc"]),
        "no_obj_embed_spatial": bool(t["enable_occlusion_spatial_embedding"]),
        # HF converts SAM 2.1 with the projected pointer encoding and SAM 2.0 without; the
        # signed encoding comes with 2.1 in Meta's configs.
        "proj_tpos_enc_in_obj_ptrs": tpos,
        "use_signed_tpos_enc_to_obj_ptrs": tpos,
        "multimask_output_for_tracking": bool(t["multimask_output_for_tracking"]),
        "max_obj_ptrs_in_encoder": t["max_object_pointers_in_encoder"],
        "memory_attention_layers": t["memory_attention_num_layers"],
        "memory_attention_mlp_dim": t["memory_attention_feed_forward_hidden_size"],
        "mem_dim": t["memory_encoder_output_channels"],
    }


def _sam2_from_hf(hf: Mapping, video: bool) -> Sam2Config:
    v = _section(hf, "vision_config", {**SAM2_VISION, "backbone_config": None})
    b = _section(v, "backbone_config", HIERA)
    p = _section(hf, "prompt_encoder_config", PROMPT)
    m = _section(hf, "mask_decoder_config", DECODER)
    _check_fixed(v, _FIXED_SAM2_VISION, "vision_config.")
    _check_fixed(p, {**_FIXED_PROMPT, "patch_size": 16}, "prompt_encoder_config.")
    _check_fixed(m, _FIXED_DECODER, "mask_decoder_config.")
    encoder = _hiera_from_hf(b)
    if _norm(v["backbone_channel_list"]) != list(encoder.channel_list):
        raise ValueError(
            f"config.json: vision_config.backbone_channel_list = {v['backbone_channel_list']!r}"
            f" does not match the backbone's widths {list(encoder.channel_list)}"
        )
    sizes = {
        "vision_config.backbone_config.image_size": _square(b["image_size"], "image_size"),
        "prompt_encoder_config.image_size": _square(p["image_size"], "image_size"),
    }
    if video:
        sizes["image_size"] = _square(hf.get("image_size", VIDEO["image_size"]), "image_size")
    d_model = _same(
        "the SAM 2 widths",
        **{
            "vision_config.fpn_hidden_size": v["fpn_hidden_size"],
            "prompt_encoder_config.hidden_size": p["hidden_size"],
            "mask_decoder_config.hidden_size": m["hidden_size"],
        },
    )
    return Sam2Config(
        encoder=encoder,
        image_size=_same("the image sizes", **sizes),
        d_model=d_model,
        fpn_top_down_levels=tuple(v["fpn_top_down_levels"]),
        scalp=len(encoder.stages) - v["num_feature_levels"],
        mask_in_chans=p["mask_input_channels"],
        dynamic_multimask_stability_delta=float(m["dynamic_multimask_stability_delta"]),
        dynamic_multimask_stability_thresh=float(m["dynamic_multimask_stability_thresh"]),
        **_decoder_fields(m),
        **(_memory_fields(hf, d_model) if video else {}),
    )


def config_from_hf(hf: Mapping) -> ModelConfig:
    """The sam_jax config of an HF `config.json` (parsed), named after the variant it equals.

    A "sam2" config (`Sam2Model`, image model only) gives the SAM 2.0 memory settings: its
    file holds no memory weights to tell otherwise.
    """
    kind = hf.get("model_type")
    if kind == "sam":
        return named(_sam_from_hf(hf))
    if kind in ("sam2", "sam2_video"):
        return named(_sam2_from_hf(hf, video=kind == "sam2_video"))
    raise ValueError(
        f"config.json: model_type {kind!r} is not one sam_jax reads ({', '.join(MODEL_TYPES)})"
    )
