"""Helpers for comparing against the PyTorch reference (ultralytics 8.4.190).

Every parameter and buffer is filled with seeded random values, zero-initialised ones too,
so that transposition or indexing bugs cannot hide behind zeros or ones.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

torch.set_num_threads(2)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every floating parameter and buffer of `module` in place; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = dict(module.named_parameters())
        tensors.update(dict(module.named_buffers()))
        for name, t in sorted(tensors.items()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                new = 0.5 + torch.rand(t.shape, generator=g)
            elif t.ndim == 1 and leaf == "weight":  # norm scales
                new = 1.0 + 0.2 * torch.randn(t.shape, generator=g)
            elif t.ndim >= 2 and leaf == "weight":
                fan_in = max(1, int(np.prod(t.shape[1:])))
                new = torch.randn(t.shape, generator=g) / fan_in**0.5
            else:  # biases, embeddings, position tables, running means, ...
                new = 0.2 * torch.randn(t.shape, generator=g)
            t.copy_(new.to(t.dtype))
    return module.eval()


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def nchw(x) -> np.ndarray:
    """torch (B, C, H, W) -> numpy (B, H, W, C)."""
    return x.detach().permute(0, 2, 3, 1).numpy()


def to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@functools.cache
def _sam_modules():
    from ultralytics.models.sam.modules import decoders, encoders, sam, transformer

    return encoders, decoders, transformer, sam


def build_reference_sam(encoder: torch.nn.Module, image_size: int = 1024) -> torch.nn.Module:
    """An ultralytics SAMModel around `encoder` with SAM's prompt encoder and mask decoder."""
    encoders, decoders, transformer, sam = _sam_modules()
    g = 1024 // 16
    model = sam.SAMModel(
        image_encoder=encoder,
        prompt_encoder=encoders.PromptEncoder(256, (g, g), (1024, 1024), 16),
        mask_decoder=decoders.MaskDecoder(
            transformer_dim=256,
            transformer=transformer.TwoWayTransformer(
                depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    if image_size != 1024:
        model.set_imgsz((image_size, image_size))
    return model


def build_reference_vit(cfg) -> torch.nn.Module:
    """ultralytics ImageEncoderViT for a sam_jax ViTConfig."""
    encoders = _sam_modules()[0]
    return encoders.ImageEncoderViT(
        img_size=cfg.pretrain_image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        out_chans=cfg.out_chans,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=cfg.window_size,
        global_attn_indexes=tuple(cfg.global_attn_indexes),
    )
