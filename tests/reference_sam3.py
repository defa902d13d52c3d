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
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine, RoPEAttention
    from ultralytics.models.sam.modules.encoders import MemoryEncoder
    from ultralytics.models.sam.modules.memory_attention import (
        MemoryAttention,
        MemoryAttentionLayer,
    )
    from ultralytics.models.sam.modules.sam import SAM3Model
    from ultralytics.models.sam.sam3.necks import Sam3DualViTDetNeck
    from ultralytics.models.sam.sam3.vitdet import ViT
    from ultralytics.models.sam.sam3.vl_combiner import SAM3VLBackbone

    v, s = cfg.encoder, cfg.image_size
    g = s // v.patch_size
    trunk = ViT(
        img_size=s,
        pretrain_img_size=v.pretrain_image_size,
        patch_size=v.patch_size,
        embed_dim=v.embed_dim,
        depth=v.depth,
        num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio,
        norm_layer="LayerNorm",
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=v.global_att_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        rope_pt_size=v.rope_pt_size,
        use_interp_rope=v.rope_interp,
        window_size=v.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(
        trunk=trunk,
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=v.d_model, normalize=True, temperature=10000
        ),
        d_model=v.d_model,
        scale_factors=list(v.scale_factors),
        add_sam2_neck=True,
    )
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
        num_maskmem=cfg.num_maskmem,
        sigmoid_scale_for_mem_enc=cfg.sigmoid_scale_for_mem_enc,
        sigmoid_bias_for_mem_enc=cfg.sigmoid_bias_for_mem_enc,
        use_mask_input_as_output_without_sam=True,
        directly_add_no_mem_embed=True,
        use_high_res_features_in_sam=True,
        multimask_output_in_sam=True,
        iou_prediction_use_sigmoid=True,
        use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True,
        only_obj_ptrs_in_the_past_for_eval=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        fixed_no_obj_ptr=True,
        multimask_output_for_tracking=cfg.multimask_output_for_tracking,
        use_multimask_token_for_obj_ptr=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True,
        no_obj_embed_spatial=cfg.no_obj_embed_spatial,
        proj_tpos_enc_in_obj_ptrs=cfg.proj_tpos_enc_in_obj_ptrs,
        use_signed_tpos_enc_to_obj_ptrs=cfg.use_signed_tpos_enc_to_obj_ptrs,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": cfg.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": cfg.dynamic_multimask_stability_thresh,
        },
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
