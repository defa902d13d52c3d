"""Key map of Hugging Face transformers' `SamModel` (facebook/sam-vit-base/large/huge).

Meta key (what `keymap.torch_key` gives for a sam_jax SAM variable) -> HF key. Tensors keep
their torch layout, so `keymap.torch_to_flax` applies to them as to Meta's files.
"""

from __future__ import annotations

from collections.abc import Iterable

from sam_jax.convert.hf_rules import HFName, Rule, compile_rules, hf_names

# Applied after the MLP layers are renamed (proj_in / layers.<j-1> / proj_out); first match
# wins, so specific prefixes come before the module-wide ones.
_RULES: tuple[Rule, ...] = (
    (r"image_encoder\.patch_embed\.proj", "vision_encoder.patch_embed.projection"),
    (r"image_encoder\.blocks\.(\d+)\.norm(\d)", r"vision_encoder.layers.\1.layer_norm\2"),
    (r"image_encoder\.blocks\.(\d+)", r"vision_encoder.layers.\1"),
    (r"image_encoder\.neck\.0", "vision_encoder.neck.conv1"),
    (r"image_encoder\.neck\.1", "vision_encoder.neck.layer_norm1"),
    (r"image_encoder\.neck\.2", "vision_encoder.neck.conv2"),
    (r"image_encoder\.neck\.3", "vision_encoder.neck.layer_norm2"),
    (r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
    (
        r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding",
    ),
    (r"prompt_encoder\.point_embeddings", "prompt_encoder.point_embed"),
    (r"prompt_encoder\.mask_downscaling\.0", "prompt_encoder.mask_embed.conv1"),
    (r"prompt_encoder\.mask_downscaling\.1", "prompt_encoder.mask_embed.layer_norm1"),
    (r"prompt_encoder\.mask_downscaling\.3", "prompt_encoder.mask_embed.conv2"),
    (r"prompt_encoder\.mask_downscaling\.4", "prompt_encoder.mask_embed.layer_norm2"),
    (r"prompt_encoder\.mask_downscaling\.6", "prompt_encoder.mask_embed.conv3"),
    (r"prompt_encoder\.(no_mask_embed|not_a_point_embed)", r"prompt_encoder.\1"),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)",
        r"mask_decoder.transformer.layers.\1.layer_norm\2",
    ),
    (
        r"mask_decoder\.transformer\.norm_final_attn",
        "mask_decoder.transformer.layer_norm_final_attn",
    ),
    (r"mask_decoder\.output_upscaling\.0", "mask_decoder.upscale_conv1"),
    (r"mask_decoder\.output_upscaling\.1", "mask_decoder.upscale_layer_norm"),
    (r"mask_decoder\.output_upscaling\.3", "mask_decoder.upscale_conv2"),
    (
        r"mask_decoder\.(transformer|iou_token|mask_tokens|output_hypernetworks_mlps|"
        r"iou_prediction_head)",
        r"mask_decoder.\1",
    ),
)
_COMPILED = compile_rules(_RULES)

# HF ties the prompt encoder's copy of the random projection to the model-level one and saves
# only the latter; files written by older versions may hold both (equal).
ALIASES: dict[str, str] = {
    "prompt_encoder.shared_embedding.positional_embedding": (
        "shared_image_embedding.positional_embedding"
    ),
}


def sam_hf_names(meta_keys: Iterable[str]) -> dict[str, HFName]:
    """Meta key -> HF `SamModel` key for every key of a ViT SAM; ValueError for keys HF has
    no place for (MobileSAM's TinyViT has no transformers layout)."""
    return hf_names(meta_keys, _COMPILED)
