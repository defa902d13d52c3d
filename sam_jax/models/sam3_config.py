"""SAM 3's shared vision backbone configuration: ViT trunk sizes and the dual neck.

The defaults are the architecture of the official SAM 3 checkpoint (docs/reference.md);
every size is a field, so reduced backbones for tests are data.
"""

from __future__ import annotations

import dataclasses

# The neck levels the reference knows, as upsampling factors of the trunk's grid.
NECK_SCALES: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sam3VisionConfig:
    """SAM 3's ViT trunk (windowed + global blocks, 2-D RoPE, tiled absolute positions,
    pre-LN, no patch-embedding bias) and its two ViTDet-style necks."""

    image_size: int = 1008  # the size the model runs at; the modules take any size
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.625
    window_size: int = 24
    # The output is the last global block's; it must be the last block.
    global_att_blocks: tuple[int, ...] = (7, 15, 23, 31)
    # The absolute position table covers this image size's grid (336 / 14 = 24), plus a
    # class-token row that is dropped; larger grids tile it.
    pretrain_image_size: int = 336
    rope_theta: float = 10000.0
    # RoPE grid of pretraining (None: the window size). With `rope_interp` a block whose
    # grid side is g scales its positions by rope_pt_size / g (global blocks: 24 / 72).
    rope_pt_size: int | None = None
    rope_interp: bool = True
    d_model: int = 256  # neck width and position-encoding width
    scale_factors: tuple[float, ...] = NECK_SCALES
    add_sam2_neck: bool = True  # the tracker's neck (`sam2_convs`), same shape as `convs`

    def __post_init__(self) -> None:
        _check(self)

    @property
    def grid_size(self) -> int:
        """Side of the trunk's token grid at `image_size`: S / patch (72 at 1008 px)."""
        return self.image_size // self.patch_size

    @property
    def stride(self) -> int:
        """Pixels per side of one cell of the trunk's grid: one patch (14)."""
        return self.patch_size

    @property
    def pretrain_grid(self) -> int:
        """Side of the stored absolute position table (24)."""
        return self.pretrain_image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _check(cfg: Sam3VisionConfig) -> None:
    """ValueError naming the first inconsistent field of `cfg`."""
    if cfg.embed_dim % cfg.num_heads or cfg.head_dim % 4:
        raise ValueError(
            f"embed_dim {cfg.embed_dim} / num_heads {cfg.num_heads} must be a whole head "
            "width divisible by 4 (2-D RoPE rotates channel pairs on two axes)"
        )
    blocks = cfg.global_att_blocks
    if not blocks or list(blocks) != sorted(set(blocks)) or blocks[-1] != cfg.depth - 1:
        raise ValueError(
            f"global_att_blocks {blocks} must be increasing and end with the last block "
            f"({cfg.depth - 1}): the trunk's output is the last global block's"
        )
    if cfg.window_size < 1 or cfg.pretrain_grid < 1 or cfg.grid_size < 1:
        raise ValueError(
            "window_size, pretrain_image_size // patch_size and image_size // patch_size "
            f"must be positive; got {cfg.window_size}, {cfg.pretrain_grid}, {cfg.grid_size}"
        )
    unknown = [s for s in cfg.scale_factors if s not in NECK_SCALES]
    if unknown or not cfg.scale_factors:
        raise ValueError(f"scale_factors must be taken from {NECK_SCALES}; got {cfg.scale_factors}")
    if 4.0 in cfg.scale_factors and cfg.embed_dim % 4:
        raise ValueError(f"the 4x neck level needs embed_dim divisible by 4; got {cfg.embed_dim}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sam3DetectorConfig:
    """SAM 3's concept detector on top of the vision and text backbones: the geometry
    (exemplar) encoder, the image-prompt fusion encoder, the DETR-style decoder, the
    dot-product scorer and the segmentation head. Defaults are the released model's."""

    d_model: int = 256
    num_heads: int = 8  # every attention of the detector
    dim_feedforward: int = 2048  # every transformer layer's feed-forward width
    geometry_layers: int = 3
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    presence_token: bool = True
    scoring_mlp_dim: int = 2048  # DotProductScoring's 2-layer residual prompt MLP
    mask_upsampling_stages: int = 3  # pixel decoder stages (nearest upsampling)

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of {self.num_heads} heads")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sam3TextConfig:
    """SAM 3's text encoder; the defaults are the released model's."""

    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    context_length: int = 32
    vocab_size: int = 49408
    d_model: int = 256  # the resizer's output: the detector's width
    projection_dim: int = 512  # CLIP's text projection, stored but unused
    use_ln_post: bool = True  # final LayerNorm

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of {self.num_heads} heads")
