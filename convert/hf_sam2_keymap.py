"""Key map of Hugging Face transformers' `Sam2VideoModel` and `Sam2Model` (SAM 2 / 2.1).

Meta key (what `keymap.torch_key` gives for a sam_jax SAM 2 variable) -> HF key. Tensors keep
their torch layout, except SAM 2's four point embeddings, which HF stacks into one (4, D)
table. `Sam2Model` is the image model alone: it has no memory modules (MEMORY_PREFIXES).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sam_jax.convert.hf_rules import HFName, Rule, compile_rules, hf_names

_POINT_EMBED = re.compile(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight")
POINT_EMBED_KEY = "prompt_encoder.point_embed.weight"

# Applied after the MLP layers are renamed (proj_in / layers.<j-1> / proj_out); first match
# wins, so specific prefixes come before the module-wide ones.
_HEAD_RULES: tuple[Rule, ...] = (
    (r"image_encoder\.trunk\.patch_embed\.proj", "vision_encoder.backbone.patch_embed.projection"),
    (
        r"image_encoder\.trunk\.blocks\.(\d+)\.norm(\d)",
        r"vision_encoder.backbone.blocks.\1.layer_norm\2",
    ),
    (r"image_encoder\.trunk", "vision_encoder.backbone"),
    (r"image_encoder\.neck\.convs\.(\d+)\.conv", r"vision_encoder.neck.convs.\1"),
    (
        r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding",
    ),
    (r"sam_prompt_encoder\.mask_downscaling\.0", "prompt_encoder.mask_embed.conv1"),
    (r"sam_prompt_encoder\.mask_downscaling\.1", "prompt_encoder.mask_embed.layer_norm1"),
    (r"sam_prompt_encoder\.mask_downscaling\.3", "prompt_encoder.mask_embed.conv2"),
    (r"sam_prompt_encoder\.mask_downscaling\.4", "prompt_encoder.mask_embed.layer_norm2"),
    (r"sam_prompt_encoder\.mask_downscaling\.6", "prompt_encoder.mask_embed.conv3"),
    (r"sam_prompt_encoder\.(no_mask_embed|not_a_point_embed)", r"prompt_encoder.\1"),
    (
        r"sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)",
        r"mask_decoder.transformer.layers.\1.layer_norm\2",
    ),
    (
        r"sam_mask_decoder\.transformer\.norm_final_attn",
        "mask_decoder.transformer.layer_norm_final_attn",
    ),
    (r"sam_mask_decoder\.transformer\.(.+)\.out_proj", r"mask_decoder.transformer.\1.o_proj"),
    (r"sam_mask_decoder\.output_upscaling\.0", "mask_decoder.upscale_conv1"),
    (r"sam_mask_decoder\.output_upscaling\.1", "mask_decoder.upscale_layer_norm"),
    (r"sam_mask_decoder\.output_upscaling\.3", "mask_decoder.upscale_conv2"),
    (r"sam_mask_decoder", "mask_decoder"),
    (r"no_mem_embed", "no_memory_embedding"),
)
_MEMORY_RULES: tuple[Rule, ...] = (
    (r"no_mem_pos_enc", "no_memory_positional_encoding"),
    (r"maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    (r"no_obj_ptr", "no_object_pointer"),
    (r"no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    (r"obj_ptr_proj", "object_pointer_proj"),
    (r"obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
    (r"mask_downsample", "mask_downsample"),
    (r"memory_attention\.layers\.(\d+)\.norm(\d)", r"memory_attention.layers.\1.layer_norm\2"),
    (r"memory_attention\.layers\.(\d+)\.(\w+)\.out_proj", r"memory_attention.layers.\1.\2.o_proj"),
    (r"memory_attention\.norm", "memory_attention.layer_norm"),
    (r"memory_attention", "memory_attention"),
    (r"memory_encoder\.pix_feat_proj", "memory_encoder.feature_projection"),
    (r"memory_encoder\.out_proj", "memory_encoder.projection"),
    (
        r"memory_encoder\.fuser\.layers\.(\d+)\.dwconv",
        r"memory_encoder.memory_fuser.layers.\1.depthwise_conv",
    ),
    (
        r"memory_encoder\.fuser\.layers\.(\d+)\.pwconv(\d)",
        r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2",
    ),
    (
        r"memory_encoder\.fuser\.layers\.(\d+)\.norm",
        r"memory_encoder.memory_fuser.layers.\1.layer_norm",
    ),
    (
        r"memory_encoder\.fuser\.layers\.(\d+)\.gamma",
        r"memory_encoder.memory_fuser.layers.\1.scale",
    ),
)

# Meta keys of the memory path: what `Sam2Model` (HF's image-only model) does not hold.
MEMORY_PREFIXES: tuple[str, ...] = (
    "mask_downsample",
    "maskmem_tpos_enc",
    "memory_attention",
    "memory_encoder",
    "no_mem_pos_enc",
    "no_obj_embed_spatial",
    "no_obj_ptr",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
)

# Both copies of the prompt encoder's random projection are saved by HF's SAM 2 models.
ALIASES: dict[str, str] = {
    "prompt_encoder.shared_embedding.positional_embedding": (
        "shared_image_embedding.positional_embedding"
    ),
}


def _mask_downsampler_rule(last: int) -> Rule:
    """Meta's `mask_downsampler.encoder.<n>` Sequential (conv, norm, act) x L then a 1x1 conv
    at index `last` -> HF's `layers.<k>.conv` / `layers.<k>.layer_norm` / `final_conv`."""

    def rename(m: re.Match[str]) -> str:
        n = int(m[1])
        name = "final_conv" if n == last else f"layers.{n // 3}." + ("conv", "layer_norm")[n % 3]
        return f"memory_encoder.mask_downsampler.{name}"

    return (r"memory_encoder\.mask_downsampler\.encoder\.(\d+)", rename)


def _point_embed(key: str) -> HFName | None:
    m = _POINT_EMBED.fullmatch(key)
    return None if m is None else HFName(POINT_EMBED_KEY, int(m[1]))


def sam2_hf_names(meta_keys: Iterable[str]) -> dict[str, HFName]:
    """Meta key -> HF `Sam2VideoModel` key for every key of a SAM 2 model (the keys under
    MEMORY_PREFIXES are absent from `Sam2Model` files)."""
    keys = list(meta_keys)
    down = [int(k.split(".")[3]) for k in keys if k.startswith("memory_encoder.mask_downsampler.")]
    rules = (*_HEAD_RULES, *_MEMORY_RULES, _mask_downsampler_rule(max(down, default=-1)))
    return hf_names(keys, compile_rules(rules), _point_embed)


def is_memory_key(meta_key: str) -> bool:
    """Whether a Meta key belongs to the memory path (absent from HF `Sam2Model` files)."""
    return any(meta_key == p or meta_key.startswith(p + ".") for p in MEMORY_PREFIXES)
