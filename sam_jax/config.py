"""Model configurations: frozen keyword-only dataclasses, and the table of named variants.

Variants are data: a name maps to a config, and one set of modules reads every config.
The numbers of the reference variants are the architectures of the official SAM, MobileSAM,
SAM 2 and SAM 2.1 checkpoints (docs/reference.md lists the sources).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeAlias

from sam_jax.models.sam3_config import Sam3DetectorConfig, Sam3TextConfig, Sam3VisionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """SAM's plain ViT image encoder (sam_b / sam_l / sam_h)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256
    # The image size the stored position tables were trained at; other sizes resize them.
    pretrain_image_size: int = 1024

    @property
    def stride(self) -> int:
        """Pixels per side of one embedding cell: one patch."""
        return self.patch_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyViTConfig:
    """MobileSAM's TinyViT image encoder: a conv stage, then windowed-attention stages.

    Stage 0 is convolutional, so num_heads[0] and window_sizes[0] are unused (kept to mirror
    the reference's arguments). Nothing learned depends on the image size: any S that is a
    multiple of 16 runs with the same weights.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    # The reference's img_size argument; informational, as no weight depends on it.
    pretrain_image_size: int = 1024
    # Size of the (unused by SAM) ImageNet head stored in the checkpoints; 0 = no head.
    num_classes: int = 1000
    stride = 16  # pixels per side of one embedding cell


class _Grid:
    """Grid sizes every model config derives from its `image_size`."""

    image_size: int
    encoder: Any

    @property
    def embed_size(self) -> int:
        """Side of the image-embedding grid: S / the encoder's stride (16 in every
        reference variant; a ViT's patch size)."""
        return self.image_size // self.encoder.stride

    @property
    def mask_input_size(self) -> int:
        """Side of the low-res mask logits and of mask prompts: 4x the embedding grid."""
        return 4 * self.embed_size


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamConfig(_Grid):
    """A SAM model: image encoder + prompt encoder + two-way-transformer mask decoder."""

    encoder: ViTConfig | TinyViTConfig = dataclasses.field(default_factory=ViTConfig)
    name: str = "custom"  # variant name, written into saved files
    image_size: int = 1024
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HieraConfig:
    """SAM 2's Hiera trunk (sam2_* / sam2.1_*)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    # Grid of the learned background position table, resized bicubically to S/4.
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3  # number of stage transitions that pool the queries
    q_stride: int = 2
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    stride = 16  # of the features the heads read (the FPN drops the coarsest level)

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Width of each stage's output, coarsest first (the FPN neck's order)."""
        return tuple(int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages)))[::-1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sam2Config(_Grid):
    """A SAM 2 / 2.1 model: Hiera + FPN image encoder, SAM 2 heads and the memory modules.
    With a Sam3VisionConfig encoder it is SAM 3's interactive tracker (`sam3`): the same
    heads and memory on SAM 3's ViT and its tracker neck (stride 14)."""

    encoder: HieraConfig | Sam3VisionConfig = dataclasses.field(default_factory=HieraConfig)
    name: str = "custom"
    image_size: int = 1024  # any multiple of 32
    # The three behaviours SAM 2.1 adds to SAM 2 (Meta's names; `SAM2_1` sets all three).
    # A learned (mem_dim,) embedding added to the spatial memory of frames where the object
    # is absent (object score <= 0); adds the parameter `no_obj_embed_spatial`.
    no_obj_embed_spatial: bool = False
    # The object pointers' temporal encoding is a d_model-wide 1-D sine projected to mem_dim
    # by a learned linear layer (`obj_ptr_tpos_proj`); False: a mem_dim-wide sine, unprojected.
    proj_tpos_enc_in_obj_ptrs: bool = False
    # Conditioning frames' pointers are encoded by their frame distance times the tracking
    # direction (+1 forward, -1 reverse); False: by its absolute value. No parameter. The two
    # agree for every pointer a frame attends to here, all from frames already tracked (as in
    # the reference at inference); the flag follows the reference's config.
    use_signed_tpos_enc_to_obj_ptrs: bool = False
    d_model: int = 256  # FPN width = prompt embedding width = memory attention width
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1  # coarsest FPN levels dropped
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    # The reference's multimask_output_for_tracking: tracked frames (and single clicks on
    # frames after the first prompted one) give 3 masks and keep the best by predicted IoU.
    # False: they give the single-mask output.
    multimask_output_for_tracking: bool = True
    mem_dim: int = 64
    num_maskmem: int = 7
    # Which frames attend to a conditioning (prompted) frame's spatial memory; one of
    # CONDITIONING_MEMORY. "always" (the reference's behaviour): every frame does.
    # "in_window": only frames within num_maskmem - 1 of it, as for a recent frame's memory,
    # or frames that hold no recent memory. Its object pointer is attended to either way.
    # Use "in_window" for a model that finds the object in its memory by position rather than
    # by appearance: it is otherwise pulled back to where the object was when prompted.
    conditioning_memory: str = "always"
    memory_attention_layers: int = 4
    memory_attention_mlp_dim: int = 2048
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # The official files hold {"model": state_dict}; convert/export.py writes them alike.
    wraps_state_dict: bool = True

    def __post_init__(self) -> None:
        check_conditioning_memory(self.conditioning_memory)


# The values of Sam2Config.conditioning_memory.
CONDITIONING_MEMORY: tuple[str, ...] = ("always", "in_window")


def check_conditioning_memory(value: str) -> None:
    """ValueError unless `value` is one of CONDITIONING_MEMORY."""
    if value not in CONDITIONING_MEMORY:
        allowed = ", ".join(map(repr, CONDITIONING_MEMORY))
        raise ValueError(f"conditioning_memory must be one of {allowed}; got {value!r}")


# The Sam2Config fields of a SAM 2.1 model: all three behaviours 2.1 adds to SAM 2.
SAM2_1: dict[str, bool] = {
    "no_obj_embed_spatial": True,
    "proj_tpos_enc_in_obj_ptrs": True,
    "use_signed_tpos_enc_to_obj_ptrs": True,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sam3SemanticConfig(_Grid):
    """SAM 3's concept model (ultralytics' SAM3SemanticModel): the vision backbone with the
    detector's neck, the text encoder, and the detector. Images are stretched to S x S (no
    letterbox) and scaled to [-1, 1]; masks come out at 4x the grid (288 at 1008 px)."""

    encoder: Sam3VisionConfig = dataclasses.field(
        default_factory=lambda: Sam3VisionConfig(add_sam2_neck=False)
    )
    text: Sam3TextConfig = dataclasses.field(default_factory=Sam3TextConfig)
    detector: Sam3DetectorConfig = dataclasses.field(default_factory=Sam3DetectorConfig)
    name: str = "custom"
    image_size: int = 1008
    scalp: int = 1  # coarsest neck levels dropped
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pixel_std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    wraps_state_dict: bool = True

    def __post_init__(self) -> None:
        d = self.detector.d_model
        if self.encoder.d_model != d or self.text.d_model != d:
            raise ValueError(
                f"the neck ({self.encoder.d_model}), text ({self.text.d_model}) and detector "
                f"({d}) widths must agree"
            )


# Any model config: what VARIANTS holds and `sam_jax.build` accepts.
ModelConfig: TypeAlias = SamConfig | Sam2Config | Sam3SemanticConfig


VARIANTS: dict[str, ModelConfig] = {
    "sam_b": SamConfig(
        name="sam_b",
        encoder=ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    ),
    "sam_l": SamConfig(
        name="sam_l",
        encoder=ViTConfig(
            embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)
        ),
    ),
    "sam_h": SamConfig(
        name="sam_h",
        encoder=ViTConfig(
            embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)
        ),
    ),
    # A small SAM trained on synthetic shapes (sam_jax/projects/shapes), bundled.
    "sam_tiny_shapes": SamConfig(
        name="sam_tiny_shapes",
        encoder=ViTConfig(
            embed_dim=128,
            depth=4,
            num_heads=4,
            global_attn_indexes=(1, 3),
            patch_size=8,
            window_size=16,
            out_chans=128,
            pretrain_image_size=256,
        ),
        image_size=256,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
    ),
    "mobile_sam": SamConfig(name="mobile_sam", encoder=TinyViTConfig()),
}


# SAM 2 and 2.1 share architectures; 2.1 only adds the behaviours of SAM2_1.
_HIERA = {
    "t": HieraConfig(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "s": HieraConfig(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "b": HieraConfig(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_spec=(8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "l": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}
for _size, _hiera in _HIERA.items():
    VARIANTS[f"sam2_{_size}"] = Sam2Config(name=f"sam2_{_size}", encoder=_hiera)
    VARIANTS[f"sam2.1_{_size}"] = Sam2Config(name=f"sam2.1_{_size}", encoder=_hiera, **SAM2_1)
del _size, _hiera
# A small SAM 2.1 trained on synthetic videos (sam_jax/projects/shapes), bundled. Trained
# with 7 remembered frames, the conditioning frame always among them, and multimask
# tracking; it tracks better with 3, the conditioning frame only within them, and the
# single-mask output.
VARIANTS["sam2_tiny_shapes"] = Sam2Config(
    name="sam2_tiny_shapes",
    encoder=HieraConfig(
        embed_dim=32,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 6, 3),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    image_size=256,
    **SAM2_1,
    decoder_mlp_dim=512,
    iou_head_hidden_dim=128,
    memory_attention_layers=2,
    memory_attention_mlp_dim=512,
    num_maskmem=3,
    conditioning_memory="in_window",
    multimask_output_for_tracking=False,
)


# SAM 3's interactive tracker (ultralytics' `build_interactive_sam3`): SAM 2.1's heads and
# memory on SAM 3's vision backbone at 1008 px (a 72 x 72 grid), images scaled to [-1, 1].
VARIANTS["sam3"] = Sam2Config(
    name="sam3",
    encoder=Sam3VisionConfig(),
    image_size=1008,
    **SAM2_1,
    pixel_mean=(127.5, 127.5, 127.5),
    pixel_std=(127.5, 127.5, 127.5),
)
# SAM 3's concept model (`build_sam3_image_model`): text / exemplar prompts -> every instance.
VARIANTS["sam3_semantic"] = Sam3SemanticConfig(name="sam3_semantic")


def variant_config(name: str, image_size: int | None = None) -> ModelConfig:
    """The config of a named variant, optionally at another square image size."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    cfg = VARIANTS[name]
    return cfg if image_size is None else dataclasses.replace(cfg, image_size=image_size)
