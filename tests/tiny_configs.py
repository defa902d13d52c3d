"""Small SAM 2 config shared by the training tests (fast to build and compile)."""

from __future__ import annotations

from sam_jax.config import HieraConfig, Sam2Config

TINY2 = Sam2Config(
    HieraConfig(16, 1, (1, 1, 2, 1), (3,), (8, 4, 6, 3), (7, 7)),
    image_size=64,
    sam2_1=True,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
    memory_attention_layers=1,
    memory_attention_mlp_dim=64,
)
