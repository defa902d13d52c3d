"""Build ultralytics' SAM2Model (8.4.190) for a sam_jax Sam2Config, for parity tests.

The flags are those ultralytics' SAM 2 builder sets (docs/reference.md); the three SAM 2.1
ones follow the config's fields of the same names instead of the checkpoint's file name, so
any config can be built without a file. Other image sizes go through the reference's own `set_imgsz`.
"""

from __future__ import annotations

import torch

from sam_jax.config import Sam2Config


def build_reference_sam2(cfg: Sam2Config) -> torch.nn.Module:
    """An ultralytics SAM2Model (eval mode, default init) with `cfg`'s architecture."""
    from ultralytics.models.sam.modules.encoders import (
        FpnNeck,
        Hiera,
        ImageEncoder,
        MemoryEncoder,
    )
    from ultralytics.models.sam.modules.memory_attention import (
        MemoryAttention,
        MemoryAttentionLayer,
    )
    from ultralytics.models.sam.modules.sam import SAM2Model

    h = cfg.encoder
    trunk = Hiera(
        embed_dim=h.embed_dim,
        num_heads=h.num_heads,
        stages=tuple(h.stages),
        global_att_blocks=tuple(h.global_att_blocks),
        window_pos_embed_bkg_spatial_size=tuple(h.window_pos_embed_bkg_spatial_size),
        window_spec=tuple(h.window_spec),
    )
    neck = FpnNeck(
        d_model=cfg.d_model,
        backbone_channel_list=list(h.channel_list),
        fpn_top_down_levels=list(cfg.fpn_top_down_levels),
        fpn_interp_model="nearest",
    )
    memory_attention = MemoryAttention(
        d_model=cfg.d_model,
        pos_enc_at_input=True,
        num_layers=cfg.memory_attention_layers,
        layer=MemoryAttentionLayer(dim_feedforward=cfg.memory_attention_mlp_dim),
    )
    model = SAM2Model(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=cfg.scalp),
        memory_attention=memory_attention,
        memory_encoder=MemoryEncoder(out_dim=cfg.mem_dim),
        image_size=1024,
        **sam2_model_flags(cfg),
    )
    if cfg.image_size != 1024:
        model.set_imgsz((cfg.image_size, cfg.image_size))
    return model.eval()


def sam2_model_flags(cfg: Sam2Config) -> dict:
    """SAM2Model's (and SAM3Model's) constructor flags for `cfg`: the builders' fixed
    choices, the rest from the config's fields of the same names."""
    return dict(
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
        compile_image_encoder=False,
        no_obj_embed_spatial=cfg.no_obj_embed_spatial,
        proj_tpos_enc_in_obj_ptrs=cfg.proj_tpos_enc_in_obj_ptrs,
        use_signed_tpos_enc_to_obj_ptrs=cfg.use_signed_tpos_enc_to_obj_ptrs,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": cfg.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": cfg.dynamic_multimask_stability_thresh,
        },
    )
