"""Model configurations: frozen dataclasses, and the table of named variants.

Variants are data: a name maps to a config, and one set of modules reads every config.
The numbers are those of the reference checkpoints (see REFERENCE.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class SamConfig(_Grid):
    """A SAM model: image encoder + prompt encoder + two-way-transformer mask decoder."""

    encoder: Any = dataclasses.field(default_factory=ViTConfig)
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


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class Sam2Config(_Grid):
    """A SAM 2 / 2.1 model: Hiera + FPN image encoder, SAM 2 heads and the memory modules."""

    encoder: Any = dataclasses.field(default_factory=HieraConfig)
    name: str = "custom"
    image_size: int = 1024  # any multiple of 32
    # SAM 2.1 adds no_obj_embed_spatial and a projection of the pointers' temporal encoding,
    # and signs the pointers' temporal distance.
    sam2_1: bool = False
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
    # False (the reference): every frame attends to the conditioning frames' spatial memory.
    # True: a conditioning frame's spatial memory is attended to, like a recent frame's, only
    # from frames within num_maskmem - 1 of it (or while no recent memory is held). A model
    # whose memory reads by position alone is otherwise pulled back to where it was clicked.
    cond_memory_in_window_only: bool = False
    memory_attention_layers: int = 4
    memory_attention_mlp_dim: int = 2048
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # The official files hold {"model": state_dict}; convert/export.py writes them alike.
    wraps_state_dict: bool = True


ENCODER_TYPES: dict[str, type] = {"vit": ViTConfig, "tiny_vit": TinyViTConfig, "hiera": HieraConfig}
MODEL_TYPES: dict[str, type] = {"sam": SamConfig, "sam2": Sam2Config}

VARIANTS: dict[str, SamConfig] = {
    "sam_b": SamConfig(ViTConfig(768, 12, 12, (2, 5, 8, 11)), "sam_b"),
    "sam_l": SamConfig(ViTConfig(1024, 24, 16, (5, 11, 17, 23)), "sam_l"),
    "sam_h": SamConfig(ViTConfig(1280, 32, 16, (7, 15, 23, 31)), "sam_h"),
    # Small models trained here on synthetic shapes (sam_jax/train/recipes.py): trained
    # from scratch with 16-px patches, then given 8-px patches (train/repatch.py), bundled.
    **{
        name: SamConfig(
            ViTConfig(128, 4, 4, (1, 3), patch, window, out_chans=128, pretrain_image_size=256),
            name,
            image_size=256,
            prompt_embed_dim=128,
            decoder_mlp_dim=512,
            decoder_num_heads=4,
            iou_head_hidden_dim=128,
        )
        for name, patch, window in (("sam_tiny_shapes_p16", 16, 8), ("sam_tiny_shapes", 8, 16))
    },
    "mobile_sam": SamConfig(TinyViTConfig(), "mobile_sam"),
}


# SAM 2 and 2.1 share architectures; 2.1 only adds a few memory-side parameters.
_HIERA = {
    "t": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "s": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "b": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "l": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}
for _size, _hiera in _HIERA.items():
    for _prefix, _is_2_1 in (("sam2", False), ("sam2.1", True)):
        _name = f"{_prefix}_{_size}"
        VARIANTS[_name] = Sam2Config(_hiera, _name, sam2_1=_is_2_1)
del _size, _hiera, _prefix, _is_2_1, _name
# Small SAM 2.1 trained here on synthetic videos (sam_jax/train/recipes.py), bundled;
# its first stages ran at 128 px (an 8x8 grid for the heads), the later ones at 256.
VARIANTS["sam2_tiny_shapes"] = Sam2Config(
    HieraConfig(32, 1, (1, 1, 2, 1), (3,), (8, 4, 6, 3), (7, 7)),
    "sam2_tiny_shapes",
    image_size=256,
    sam2_1=True,
    decoder_mlp_dim=512,
    iou_head_hidden_dim=128,
    memory_attention_layers=2,
    memory_attention_mlp_dim=512,
    # Trained with 7 remembered frames, the conditioning frame always among them, and
    # multimask tracking; it tracks better with 3, the conditioning frame only within
    # them, and the single-mask output (tracking/memory_window.py, README).
    num_maskmem=3,
    cond_memory_in_window_only=True,
    multimask_output_for_tracking=False,
)


def variant_config(name: str, image_size: int | None = None) -> SamConfig:
    """The config of a named variant, optionally at another square image size."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    cfg = VARIANTS[name]
    return cfg if image_size is None else dataclasses.replace(cfg, image_size=image_size)


def _type_name(table: dict[str, type], obj: Any) -> str:
    return next(k for k, v in table.items() if type(obj) is v)


def config_to_json(cfg: Any) -> str:
    """Serialise a model config (for safetensors metadata)."""
    d = dataclasses.asdict(cfg)
    d["encoder"]["type"] = _type_name(ENCODER_TYPES, cfg.encoder)
    d["type"] = _type_name(MODEL_TYPES, cfg)
    return json.dumps(d, sort_keys=True)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def config_from_json(text: str) -> Any:
    """Inverse of `config_to_json`."""
    d = json.loads(text)
    enc = dict(d.pop("encoder"))
    enc_cls = ENCODER_TYPES[enc.pop("type")]
    cls = MODEL_TYPES[d.pop("type")]
    return cls(encoder=enc_cls(**_tuples(enc)), **_tuples(d))
