"""Build ultralytics' SAM3Model (8.4.190), the interactive tracker, for a sam_jax `sam3`
config, for parity tests: `build_interactive_sam3`'s flags with the config's sizes.

The reference's vision backbone also holds the detector's neck (`convs`), which the tracker
never reads; `tracker_state_dict` leaves it out, as `sam_jax.load` does for a tracker.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from sam_jax.config import VARIANTS, Sam2Config


def build_reference_sam3_tracker(cfg: Sam2Config) -> torch.nn.Module:
    """An ultralytics SAM3Model (eval mode, default init) with `cfg`'s architecture."""
    from ultralytics.models.sam.modules.blocks import RoPEAttention
    from ultralytics.models.sam.modules.encoders import MemoryEncoder
    from ultralytics.models.sam.modules.memory_attention import (
        MemoryAttention,
        MemoryAttentionLayer,
    )
    from ultralytics.models.sam.modules.sam import SAM3Model
    from ultralytics.models.sam.sam3.vl_combiner import SAM3VLBackbone

    from tests.reference_sam2 import sam2_model_flags
    from tests.test_sam3_backbone import build_reference

    v, s = cfg.encoder, cfg.image_size
    g = s // v.patch_size
    neck = build_reference(dataclasses.replace(v, add_sam2_neck=True), (s, s))
    d, mem = cfg.d_model, cfg.mem_dim
    layer = MemoryAttentionLayer(
        dim_feedforward=cfg.memory_attention_mlp_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attn=RoPEAttention(embedding_dim=d, num_heads=1, downsample_rate=1, feat_sizes=[g, g]),
        d_model=d,
        cross_attn=RoPEAttention(
            embedding_dim=d,
            num_heads=1,
            downsample_rate=1,
            kv_in_dim=mem,
            feat_sizes=[g, g],
            rope_k_repeat=True,
        ),
    )
    model = SAM3Model(
        image_encoder=SAM3VLBackbone(visual=neck, text=None, scalp=cfg.scalp),
        memory_attention=MemoryAttention(
            d_model=d, pos_enc_at_input=True, layer=layer, num_layers=cfg.memory_attention_layers
        ),
        memory_encoder=MemoryEncoder(out_dim=mem, interpol_size=[g * 16, g * 16]),
        image_size=s,
        backbone_stride=v.patch_size,
        **sam2_model_flags(cfg),
    )
    return model.eval()


def tracker_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The tracker's state_dict as numpy, without the detector neck it never reads."""
    return {
        k: v.detach().numpy()
        for k, v in module.state_dict().items()
        if not k.startswith("image_encoder.vision_backbone.convs.")
    }


def build_reference_sam3_semantic(cfg, tokenizer) -> torch.nn.Module:
    """An ultralytics SAM3SemanticModel (eval mode, default init) built as
    `build_sam3_image_model` builds it, with the sizes of `cfg` (a Sam3SemanticConfig)."""
    from torch import nn
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine
    from ultralytics.models.sam.sam3.decoder import TransformerDecoder, TransformerDecoderLayer
    from ultralytics.models.sam.sam3.encoder import (
        TransformerEncoderFusion,
        TransformerEncoderLayer,
    )
    from ultralytics.models.sam.sam3.geometry_encoders import SequenceGeometryEncoder
    from ultralytics.models.sam.sam3.maskformer_segmentation import (
        PixelDecoder,
        UniversalSegmentationHead,
    )
    from ultralytics.models.sam.sam3.model_misc import DotProductScoring, TransformerWrapper
    from ultralytics.models.sam.sam3.sam3_image import SAM3SemanticModel
    from ultralytics.models.sam.sam3.text_encoder_ve import VETextEncoder
    from ultralytics.models.sam.sam3.vl_combiner import SAM3VLBackbone
    from ultralytics.nn.modules.transformer import MLP

    det, txt = cfg.detector, cfg.text
    d, heads, ffn = det.d_model, det.num_heads, det.dim_feedforward

    def sine():
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, temperature=10000)

    def mha(batch_first: bool):
        return nn.MultiheadAttention(d, heads, dropout=0.1, batch_first=batch_first)

    tracker = dataclasses.replace(VARIANTS["sam3"], encoder=cfg.encoder, image_size=cfg.image_size)
    neck = build_reference_sam3_tracker(tracker).image_encoder.vision_backbone
    if not cfg.encoder.add_sam2_neck:
        neck.sam2_convs = None
    text = VETextEncoder(
        d_model=d,
        tokenizer=tokenizer,
        width=txt.width,
        heads=txt.num_heads,
        layers=txt.depth,
        context_length=txt.context_length,
        vocab_size=txt.vocab_size,
    )
    encoder = TransformerEncoderFusion(
        layer=TransformerEncoderLayer(
            d_model=d, dim_feedforward=ffn, dropout=0.1, pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False,
            pre_norm=True, self_attention=mha(True), cross_attention=mha(True),
        ),
        num_layers=det.encoder_layers, d_model=d, num_feature_levels=1, frozen=False,
        use_act_checkpoint=False, add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )  # fmt: skip
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            d_model=d, dim_feedforward=ffn, dropout=0.1, cross_attention=mha(False),
            n_heads=heads, use_text_cross_attention=True,
        ),
        num_layers=det.decoder_layers, num_queries=det.num_queries, return_intermediate=True,
        box_refine=True, num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False,
        interaction_layer=None, dac_use_selfatt_ln=True, use_act_checkpoint=False,
        presence_token=det.presence_token,
    )  # fmt: skip
    scoring = DotProductScoring(
        d_model=d,
        d_proj=d,
        prompt_mlp=MLP(
            input_dim=d,
            hidden_dim=det.scoring_mlp_dim,
            output_dim=d,
            num_layers=2,
            residual=True,
            out_norm=nn.LayerNorm(d),
        ),  # fmt: skip
    )
    seg = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=det.mask_upsampling_stages, aux_masks=False,
        presence_head=False, dot_product_scorer=None, act_ckpt=False,
        cross_attend_prompt=nn.MultiheadAttention(num_heads=heads, dropout=0, embed_dim=d),
        pixel_decoder=PixelDecoder(
            num_upsampling_stages=det.mask_upsampling_stages, interpolation_mode="nearest",
            hidden_dim=d,
        ),
    )  # fmt: skip
    geometry = SequenceGeometryEncoder(
        pos_enc=sine(), boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True,
        d_model=d, num_layers=det.geometry_layers,
        layer=TransformerEncoderLayer(
            d_model=d, dim_feedforward=ffn, dropout=0.1, pos_enc_at_attn=False, pre_norm=True,
            pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        ),
        use_act_ckpt=False, add_cls=True, add_post_encode_proj=True,
    )  # fmt: skip
    model = SAM3SemanticModel(
        backbone=SAM3VLBackbone(visual=neck, text=text, scalp=cfg.scalp),
        transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d),
        input_geometry_encoder=geometry,
        segmentation_head=seg,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring,
        use_instance_query=False,
        multimask_output=True,
    )
    return model.eval()
