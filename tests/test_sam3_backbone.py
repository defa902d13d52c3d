"""SAM 3's vision backbone (ViT trunk + dual ViTDet neck) against ultralytics' modules.

Every parameter and buffer of the reference is random. Two reduced backbones cover the
structural cases of the full one and a few it does not reach: windows padded at the grid's
edge, an absolute table tiled over a grid it does not divide, RoPE scaled in global blocks
(and in windowed ones with a pretraining grid unlike the window), a non-square image (the
reference's global RoPE then places tokens by the grid's height), an odd grid under the
0.5 level's max pool, a subset of the neck levels, batch 2. One full-size backbone,
built by the reference's own builder, runs at 1008 px.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict, unflatten_dict

from sam_jax.convert.keymap import state_dict_to_variables, torch_key
from sam_jax.models import attention
from sam_jax.models.attention import default_impl
from sam_jax.models.sam3_config import Sam3VisionConfig
from sam_jax.models.sam3_neck import Sam3DualViTDetNeck
from sam_jax.models.sam3_vit import ViT
from tests.reference import nchw, randomize_, rel_err, to_nchw

TOL = 1e-4

SMALL = {
    # 15x15 grid: windows of 4 padded to 16, the 6x6 table tiled 2.5 times, global RoPE
    # scaled by 4/15, the 0.5 level pooling 15 -> 7.
    "padded": (
        Sam3VisionConfig(
            image_size=120,
            patch_size=8,
            embed_dim=64,
            depth=4,
            num_heads=4,
            window_size=4,
            global_att_blocks=(1, 3),
            pretrain_image_size=48,
            d_model=32,
        ),
        (2, 120, 120),
    ),
    # 8x12 grid from a 112x168 image (the reference's set_imgsz); windows of 5 padded to
    # 10x15; RoPE pretraining grid 6 (windowed blocks scale by 6/5, the global one by 6/8).
    "non_square": (
        Sam3VisionConfig(
            image_size=112,
            patch_size=14,
            embed_dim=96,
            depth=3,
            num_heads=3,
            window_size=5,
            global_att_blocks=(2,),
            pretrain_image_size=70,
            rope_pt_size=6,
            d_model=48,
            scale_factors=(2.0, 0.5),
            add_sam2_neck=False,
        ),
        (1, 112, 168),
    ),
}


def build_reference(cfg: Sam3VisionConfig, hw: tuple[int, int]) -> torch.nn.Module:
    """ultralytics' Sam3DualViTDetNeck around its ViT with SAM 3's fixed choices and the
    sizes of `cfg`, set to images of size `hw`."""
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine
    from ultralytics.models.sam.sam3.necks import Sam3DualViTDetNeck as RefNeck
    from ultralytics.models.sam.sam3.vitdet import ViT as RefViT

    trunk = RefViT(
        img_size=cfg.image_size,
        pretrain_img_size=cfg.pretrain_image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        norm_layer="LayerNorm",
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=cfg.global_att_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        rope_pt_size=cfg.rope_pt_size,
        use_interp_rope=cfg.rope_interp,
        window_size=cfg.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    pe = PositionEmbeddingSine(num_pos_feats=cfg.d_model, normalize=True, temperature=10000)
    neck = RefNeck(
        trunk=trunk,
        position_encoding=pe,
        d_model=cfg.d_model,
        scale_factors=list(cfg.scale_factors),
        add_sam2_neck=cfg.add_sam2_neck,
    )
    if tuple(hw) != (cfg.image_size, cfg.image_size):
        neck.set_imgsz(list(hw))
    return neck


def _state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _variables(model: Sam3DualViTDetNeck, sd: dict, hw: tuple[int, int]) -> dict:
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hw, 3))))
    return state_dict_to_variables(sd, target)


def _compare(ours, ref_out, ours_trunk, ref_trunk, label: str) -> dict[str, float]:
    """rel_err of the trunk and of every neck level and position encoding; asserts shapes."""
    errs = {"trunk": rel_err(ours_trunk, nchw(ref_trunk))}
    names = ("sam3", "sam3_pos", "sam2", "sam2_pos")
    for name, a_list, b_list in zip(names, ours, ref_out, strict=True):
        assert (a_list is None) == (b_list is None), name
        for i, (a, b) in enumerate(zip(a_list or [], b_list or [], strict=True)):
            b = nchw(b)[:1] if name.endswith("pos") else nchw(b)
            errs[f"{name}[{i}]"] = rel_err(a, b)
    print(f"\n{label}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    return errs


@pytest.mark.torch
@pytest.mark.parametrize("case", list(SMALL))
def test_small_backbone_parity(case: str):
    cfg, (b, h, w) = SMALL[case]
    ref = randomize_(build_reference(cfg, (h, w)), seed=7)
    images = np.random.default_rng(1).standard_normal((b, h, w, 3)).astype(np.float32)
    with torch.no_grad():
        ref_out = ref(to_nchw(images))
        ref_trunk = ref.trunk(to_nchw(images))[-1]
    model = Sam3DualViTDetNeck(cfg)
    variables = _variables(model, _state_dict(ref), (h, w))
    ours = jax.jit(model.apply)(variables, images)
    trunk = jax.jit(ViT(cfg).apply)({"params": variables["params"]["trunk"]}, images)
    assert trunk.shape == (b, h // cfg.patch_size, w // cfg.patch_size, cfg.embed_dim)
    errs = _compare(ours, ref_out, trunk, ref_trunk, case)
    assert max(errs.values()) <= TOL, errs


def test_keys_follow_torch_names():
    """The Flax paths name the reference's keys, transposed convolutions included."""
    cfg = SMALL["padded"][0]
    params = jax.eval_shape(
        lambda: Sam3DualViTDetNeck(cfg).init(jax.random.key(0), jnp.zeros((1, 120, 120, 3)))
    )["params"]
    keys = {torch_key(path) for path in flatten_dict(params)}
    assert "trunk.pos_embed" in keys and "trunk.ln_pre.weight" in keys
    assert "trunk.blocks.3.mlp.fc2.weight" in keys and "trunk.patch_embed.proj.bias" not in keys
    assert "convs.0.dconv_2x2_0.weight" in keys and "sam2_convs.3.conv_3x3.bias" in keys


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_heads", 5, "head width"),
        ("global_att_blocks", (1, 2), "last block"),
        ("scale_factors", (3.0,), "scale_factors"),
        ("window_size", 0, "positive"),
    ],
)
def test_config_rejects_inconsistent_sizes(field: str, value, match: str):
    base = {"embed_dim": 64, "num_heads": 4, "depth": 4, "global_att_blocks": (3,)}
    with pytest.raises(ValueError, match=match):
        Sam3VisionConfig(**{**base, field: value})


def test_bfloat16_computation_follows_float32():
    """dtype=bfloat16 computes in bfloat16 and still returns float32 features near the
    float32 ones (parameters random, so a layout bug would not stay within 5%)."""
    cfg = SMALL["padded"][0]
    images = np.random.default_rng(3).standard_normal((1, 120, 120, 3)).astype(np.float32)
    variables = Sam3DualViTDetNeck(cfg).init(jax.random.key(1), images)
    full = jax.jit(Sam3DualViTDetNeck(cfg).apply)(variables, images)
    half = jax.jit(Sam3DualViTDetNeck(cfg, dtype=jnp.bfloat16).apply)(variables, images)
    for a, b in zip(
        half.sam3_features + half.sam2_features,
        full.sam3_features + full.sam2_features,
        strict=True,
    ):
        assert a.dtype == jnp.float32
        assert 0 < rel_err(a, b) < 5e-2


def test_rejects_bad_images():
    cfg = SMALL["padded"][0]
    with pytest.raises(ValueError, match="images must be"):
        jax.eval_shape(
            lambda: Sam3DualViTDetNeck(cfg).init(jax.random.key(0), jnp.zeros((1, 120, 120)))
        )


# XLA's optimisations for the full-size forward, whatever XLA_FLAGS the suite runs under: at
# level 0 the softmax exponentials run unvectorised and the forward takes about 3x longer.
OPTIMISED = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


# torch.nn.init's fills, which the reference's builder and torch's layers call on every
# parameter they create.
INIT_FILLS = (
    "trunc_normal_",
    "normal_",
    "uniform_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "constant_",
    "zeros_",
    "ones_",
)


@pytest.mark.slow
@pytest.mark.torch
def test_full_size_backbone_parity(monkeypatch):
    """The reference's own builder (1008 px, 32 blocks, both necks) against the defaults.

    Slow: a 462M-parameter forward in torch and in JAX, with both copies of the weights
    held in turn. The global blocks take the blocked attention: (16, 5184, 5184) float32
    logits would hold 1.7 GB at once. Its key blocks are one window's tokens (576), which
    divide both the windows and the 72x72 grid: no padded key is computed.
    """
    from ultralytics.models.sam.build_sam3 import _create_vision_backbone

    cfg = Sam3VisionConfig()
    s = cfg.image_size
    # The builder's initial values are all overwritten by randomize_, so they are not drawn
    # (462M of them, truncated normals mostly).
    with monkeypatch.context() as m:
        for name in INIT_FILLS:
            m.setattr(torch.nn.init, name, lambda t, *args, **kwargs: t)
        ref = _create_vision_backbone(enable_inst_interactivity=True)
    ref = randomize_(ref, seed=11)
    images = np.random.default_rng(2).standard_normal((1, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        ref_trunk = ref.trunk(to_nchw(images))[-1]
        ref_out = ref.sam_forward_feature_levels(ref_trunk, ref.convs)
        ref_out += ref.sam_forward_feature_levels(ref_trunk, ref.sam2_convs)
    model = Sam3DualViTDetNeck(cfg)
    sd = _state_dict(ref)
    del ref  # its storage now lives on in `sd` only
    variables = _variables(model, sd, (s, s))
    del sd
    variables = _to_device(variables)
    monkeypatch.setattr(attention, "BLOCK_SIZE", cfg.window_size**2)  # read at trace time
    with default_impl("blocked"):
        lowered = jax.jit(_trunk_and_necks, static_argnums=0).lower(model, variables, images)
        compiled = lowered.compile(OPTIMISED)
    _release_freed_memory()
    ours = compiled(variables, images)
    trunk, rest = ours[0], ours[1:]
    errs = _compare(rest, ref_out, trunk, ref_trunk, "full size")
    assert trunk.shape == (1, 72, 72, 1024)
    assert [f.shape[1] for f in rest[0]] == [288, 144, 72, 36]
    assert max(errs.values()) <= TOL, errs


def _release_freed_memory() -> None:
    """Hand the heap pages freed by torch and numpy back to the system: glibc keeps them,
    and XLA's buffers need not reuse them, which would add a copy of the weights to the
    process's peak."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _to_device(variables: dict) -> dict:
    """The numpy tree as jax arrays, each numpy leaf released once copied (peak memory)."""
    flat = flatten_dict(variables)
    del variables
    return unflatten_dict({k: jnp.asarray(flat.pop(k)) for k in list(flat)})


def _trunk_and_necks(model: Sam3DualViTDetNeck, variables: dict, images: jnp.ndarray):
    """(trunk tokens, *BackboneOutput) from one forward pass."""
    out, inter = model.apply(
        variables, images, capture_intermediates=_is_trunk, mutable=["intermediates"]
    )
    return (inter["intermediates"]["trunk"]["__call__"][0], *out)


def _is_trunk(module, method_name: str) -> bool:
    return method_name == "__call__" and module.name == "trunk"
