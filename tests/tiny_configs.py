"""Small SAM 2 config shared by the training tests (fast to build and compile), and cheap
random variables for test models."""

from __future__ import annotations

import dataclasses

import flax
import numpy as np

from sam_jax.checkpoint import variable_shapes
from sam_jax.config import (
    SAM2_1,
    VARIANTS,
    HieraConfig,
    Sam2Config,
    Sam3SemanticConfig,
    SamConfig,
    TinyViTConfig,
    ViTConfig,
)
from sam_jax.models.sam3_config import Sam3DetectorConfig, Sam3TextConfig, Sam3VisionConfig

# A two-block ViT SAM at 64 px (one windowed block, one global), quick to compile.
TINY_SAM = SamConfig(
    encoder=ViTConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=4,
        out_chans=32,
        pretrain_image_size=64,
    ),
    image_size=64,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)

# A reduced Hiera with every structural case of the full ones (a pooled stage starting with
# the previous window, padded windows, global blocks, 2-block and 1-block stages).
SMALL_HIERA = HieraConfig(
    embed_dim=32,
    num_heads=1,
    stages=(1, 2, 3, 2),
    global_att_blocks=(4, 7),
    window_spec=(8, 4, 6, 3),
    window_pos_embed_bkg_spatial_size=(7, 7),
)

# A reduced TinyViT whose windows cover the reference's three code paths: several windows
# without padding (8 on 32 / 64), padded windows (14 on 16 / 32), and one window equal to the
# whole grid (16 on 16). The last width stays 320 because the reference picks the stride of
# its last patch merging from that width.
SMALL_TINY_VIT = TinyViTConfig(
    embed_dims=(32, 48, 64, 320),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 4),
    window_sizes=(7, 8, 14, 16),
    num_classes=10,
)

TINY2 = Sam2Config(
    encoder=HieraConfig(
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 6, 3),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    image_size=64,
    **SAM2_1,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
    memory_attention_layers=1,
    memory_attention_mlp_dim=64,
)

# TINY2 with a one-layer mask decoder, for the training tests whose gradient programs go
# through the tracking scan (the largest the suite compiles): a third of their compile time
# is the decoder's second two-way layer, and one layer keeps every prompt and memory path
# (the parity tests cover two).
TINY2_1 = dataclasses.replace(TINY2, decoder_depth=1)


def random_variables(model, seed: int = 0) -> dict:
    """Seeded random variables for `model`, drawn in numpy: what `sam_jax.init_params` gives
    costs a 20-40 s compile of every initializer, too slow for test fixtures. Kernels
    (..., in, out) ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.2^2), the rest ~ N(0, 0.2^2)."""
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(variable_shapes(model))

    def draw(path, s):
        if path[-1] == "kernel":
            return rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        return (path[-1] == "scale") + 0.2 * rng.standard_normal(s.shape)

    out = {k: draw(k, s).astype(s.dtype) for k, s in sorted(flat.items())}
    return flax.traverse_util.unflatten_dict(out)


# SAM 3's reduced models: a 2-block ViT at 112 px (an 8 x 8 grid of 14-px patches), the
# tracker's and the concept model's, sharing the trunk's sizes.
SAM3_SMALL_VIT = Sam3VisionConfig(
    embed_dim=64,
    depth=2,
    num_heads=2,
    window_size=4,
    global_att_blocks=(1,),
    pretrain_image_size=56,
)
SAM3_TRACKER_SMALL = dataclasses.replace(
    VARIANTS["sam3"],
    name="sam3_small",
    image_size=112,
    encoder=SAM3_SMALL_VIT,
    memory_attention_layers=2,
    memory_attention_mlp_dim=256,
)
SAM3_SEMANTIC_SMALL = Sam3SemanticConfig(
    name="sam3_semantic_small",
    image_size=112,
    encoder=dataclasses.replace(SAM3_SMALL_VIT, add_sam2_neck=False),
    text=Sam3TextConfig(width=64, depth=2, num_heads=4),
    detector=Sam3DetectorConfig(
        geometry_layers=1, encoder_layers=2, decoder_layers=2, num_queries=12
    ),
)
