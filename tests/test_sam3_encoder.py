"""SAM 3's detector encoder side against ultralytics 8.4.190, every parameter random.

Covers the pre-norm TransformerEncoderLayer (both flag sets SAM 3 builds), the image-prompt
TransformerEncoderFusion, the SequenceGeometryEncoder (boxes) and roi_align against
torchvision's. Sizes are the released detector's (d_model 256, 8 heads, FFN 2048, 6 fusion
and 3 geometry layers) on small grids; batch 2 with a different prompt mask per item.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_encoder_layer import Sam3EncoderLayer
from sam_jax.models.sam3_fusion_encoder import Sam3FusionEncoder
from sam_jax.models.sam3_geometry import Sam3GeometryEncoder, box_sine_encoding, roi_align
from sam_jax.models.sam3_neck import sine_positions

TOL = 1e-4
CFG = Sam3DetectorConfig()
D = CFG.d_model
FUSION_FLAGS = dict(pos_enc_at_attn=True)
GEOMETRY_FLAGS = dict(pos_enc_at_cross_attn_keys=True)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _variables(model, ref, *args, **kwargs) -> dict:
    state_dict = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    return state_dict_to_variables(state_dict, target)


def _t(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def _seq_first(x):
    """numpy (B, N, D) -> torch (N, B, D)."""
    return _t(np.asarray(x).transpose(1, 0, 2))


def _flat_seq_first(x, b: int):
    """numpy (1 or B, H, W, D) -> torch (HW, B, D), the reference's flattened image layout."""
    x = np.broadcast_to(x, (b, *np.shape(x)[1:]))
    return _seq_first(x.reshape(b, -1, x.shape[-1]))


def _image(rng, b: int, h: int, w: int):
    """Random features (B, H, W, D) and their sine encoding (1, H, W, D)."""
    image = rng.standard_normal((b, h, w, D)).astype(np.float32)
    return image, np.asarray(sine_positions([image], D)[0])


def _randomize(module, seed: int):
    """tests.reference.randomize_, then every packed q/k/v weight redrawn at fan-in scale:
    randomize_ scales only tensors named "weight", and `in_proj_weight` left at 0.2 std gives
    logits so large that six layers amplify float32 rounding to ~1.5e-4 of the output (torch's
    own float32 against float64)."""
    import torch

    from tests.reference import randomize_

    randomize_(module, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, w in module.named_parameters():
            if name.endswith("in_proj_weight"):
                w.copy_(torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5)
    return module


def _reference_layer(flags: dict, batch_first: bool):
    from torch import nn
    from ultralytics.models.sam.sam3.encoder import TransformerEncoderLayer

    def mha():
        return nn.MultiheadAttention(D, CFG.num_heads, dropout=0.1, batch_first=batch_first)

    return TransformerEncoderLayer(
        d_model=D,
        dim_feedforward=CFG.dim_feedforward,
        dropout=0.1,
        pos_enc_at_attn=flags.get("pos_enc_at_attn", False),
        pos_enc_at_cross_attn_keys=flags.get("pos_enc_at_cross_attn_keys", False),
        pos_enc_at_cross_attn_queries=flags.get("pos_enc_at_cross_attn_queries", False),
        pre_norm=True,
        self_attention=mha(),
        cross_attention=mha(),
    )


# ----------------------------------------------------------------------------- roi_align

_roi_align_jit = jax.jit(
    roi_align, static_argnums=2, static_argnames=("spatial_scale", "sampling_ratio", "aligned")
)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("spatial_scale", "sampling_ratio", "aligned"),
    [(1.0, -1, False), (0.5, -1, True), (1.0, 2, False), (0.7, 3, True)],
)
def test_roi_align_matches_torchvision(spatial_scale, sampling_ratio, aligned):
    from torchvision.ops import roi_align as tv_roi_align

    from tests.reference import rel_err

    rng = _rng(0)
    b, h, w, c, n = 2, 13, 11, 5, 9
    feats = rng.standard_normal((b, h, w, c)).astype(np.float32)
    side = np.array([w, h, w, h], np.float32) / spatial_scale
    x1y1 = rng.uniform(-0.3, 1.0, (b, n, 2)).astype(np.float32)
    wh = rng.uniform(0.0, 1.2, (b, n, 2)).astype(np.float32)
    boxes = np.concatenate([x1y1, x1y1 + wh], -1) * side
    boxes[0, 0] = [2.0, 3.0, 2.5, 3.2]  # smaller than a pixel
    boxes[0, 1] = [-5.0, -5.0, -2.0, -3.0]  # outside the map
    boxes[1, 0] = [3.0, 2.0, 1.0, 1.0]  # x2 < x1
    boxes[1, 1] = -side / 2 + np.array([0, 0, 2, 2], np.float32) * side  # twice the map
    kw = dict(spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    ours = _roi_align_jit(jnp.asarray(feats), jnp.asarray(boxes), 7, **kw)
    ref = tv_roi_align(_t(feats.transpose(0, 3, 1, 2)), list(_t(boxes)), 7, **kw)
    ref = ref.numpy().reshape(b, n, c, 7, 7).transpose(0, 1, 3, 4, 2)
    err = rel_err(ours, ref)
    print(f"\nroi_align scale={spatial_scale} ratio={sampling_ratio} aligned={aligned}: {err:.1e}")
    assert ours.shape == (b, n, 7, 7, c)
    assert err < 1e-5
    assert np.isfinite(np.asarray(ours)).all()


@pytest.mark.torch
def test_roi_align_on_round_boxes_matches_torchvision():
    """SAM 3's use: normalised (cx, cy, w, h) on a 1/100 grid scaled to a 72 x 72 map. Such
    boxes put samples exactly on the map's edge and RoI sides on multiples of 7 (the sample
    count's ceil), where one rounding step different from torchvision's changes a bin."""
    from torchvision.ops import roi_align as tv_roi_align

    from tests.reference import rel_err

    rng = _rng(8)
    n, side = 600, 72
    feats = rng.standard_normal((1, side, side, 2)).astype(np.float32)
    centre = rng.integers(0, 101, (n, 2)) / 100
    size = rng.integers(1, 101, (n, 2)) / 100
    cxcywh = np.concatenate([centre, size], -1).astype(np.float32)
    xyxy = np.concatenate(
        [cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], -1
    )
    xyxy = (xyxy * np.float32(side)).astype(np.float32)
    ours = np.asarray(_roi_align_jit(jnp.asarray(feats), jnp.asarray(xyxy[None]), 7))[0]
    ref = tv_roi_align(_t(feats.transpose(0, 3, 1, 2)), [_t(xyxy)], 7).numpy()
    per_box = [rel_err(o, r) for o, r in zip(ours, ref.transpose(0, 2, 3, 1), strict=True)]
    print(f"\nroi_align, {n} round boxes on 72x72: worst rel err {max(per_box):.1e}")
    assert max(per_box) < 1e-5


def test_roi_align_is_an_average_of_the_map():
    """A constant map gives the constant wherever a bin has a sample inside it."""
    feats = jnp.full((1, 6, 6, 2), 3.0)
    out = roi_align(feats, jnp.asarray([[[0.0, 0.0, 6.0, 6.0], [1.0, 2.0, 4.0, 5.5]]]), 4)
    np.testing.assert_allclose(out, 3.0, rtol=1e-6)


# ----------------------------------------------------------------------------- encoder layer


@pytest.mark.torch
@pytest.mark.parametrize(("flags", "batch_first"), [(FUSION_FLAGS, True), (GEOMETRY_FLAGS, False)])
def test_encoder_layer_matches_reference(flags, batch_first):
    import torch

    from tests.reference import rel_err

    ref = _randomize(_reference_layer(flags, batch_first), seed=1)
    rng = _rng(1)
    tgt = rng.standard_normal((2, 10, D)).astype(np.float32)
    memory = rng.standard_normal((2, 7, D)).astype(np.float32)
    pos = rng.standard_normal((2, 7, D)).astype(np.float32)
    query_pos = rng.standard_normal((1, 10, D)).astype(np.float32)
    tgt_valid = np.arange(10)[None] < np.array([[10], [6]])
    memory_valid = np.arange(7)[None] < np.array([[4], [7]])
    prep = (lambda x: _t(x)) if batch_first else _seq_first
    with torch.no_grad():
        expected = ref(
            prep(tgt),
            prep(memory),
            tgt_key_padding_mask=_t(~tgt_valid),
            memory_key_padding_mask=_t(~memory_valid),
            pos=prep(pos),
            query_pos=prep(np.broadcast_to(query_pos, tgt.shape)),
        ).numpy()
    expected = expected if batch_first else expected.transpose(1, 0, 2)
    model = Sam3EncoderLayer(CFG.num_heads, CFG.dim_feedforward, **flags)
    args = (jnp.asarray(tgt), jnp.asarray(memory))
    kwargs = dict(
        tgt_valid=jnp.asarray(tgt_valid),
        memory_valid=jnp.asarray(memory_valid),
        pos=jnp.asarray(pos),
        query_pos=jnp.asarray(query_pos),
    )
    out = model.apply(_variables(model, ref, *args, **kwargs), *args, **kwargs)
    err = rel_err(out, expected)
    print(f"\nencoder layer {flags}: rel err {err:.1e}")
    assert err < TOL


# ----------------------------------------------------------------------------- fusion encoder


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, *args):
    return model.apply(variables, *args)


@pytest.mark.torch
def test_fusion_encoder_matches_reference():
    import torch
    from ultralytics.models.sam.sam3.encoder import TransformerEncoderFusion

    from tests.reference import rel_err

    ref = TransformerEncoderFusion(
        layer=_reference_layer(FUSION_FLAGS, batch_first=True),
        num_layers=CFG.encoder_layers,
        d_model=D,
        num_feature_levels=1,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    _randomize(ref, seed=2)
    rng = _rng(2)
    b, h, w, length = 2, 8, 6, 12
    image, image_pos = _image(rng, b, h, w)
    prompt = rng.standard_normal((b, length, D)).astype(np.float32)
    # Text tokens then geometry tokens, each right-padded: gaps in the middle, as the model has.
    prompt_valid = np.ones((b, length), bool)
    prompt_valid[0, 5:8] = False
    prompt_valid[1, 3:8] = False
    prompt_valid[1, 10:] = False
    with torch.no_grad():
        out = ref(
            src=[_flat_seq_first(image, b)],
            prompt=_seq_first(prompt),
            src_pos=[_flat_seq_first(image_pos, b)],
            prompt_key_padding_mask=_t(~prompt_valid),
            feat_sizes=[(h, w)],
        )
    model = Sam3FusionEncoder(CFG)
    args = tuple(jnp.asarray(x) for x in (image, image_pos, prompt, prompt_valid))
    ours = _apply(model, _variables(model, ref, *args), *args)
    err = rel_err(ours.memory, out["memory"].numpy().transpose(1, 0, 2))
    print(f"\nfusion encoder 6 layers, 8x6 grid: rel err {err:.1e}")
    assert err < TOL
    np.testing.assert_array_equal(ours.pos, out["pos_embed"].numpy().transpose(1, 0, 2))
    np.testing.assert_array_equal(ours.valid_ratios, out["valid_ratios"].numpy())
    assert out["padding_mask"] is None and tuple(int(s) for s in ours.spatial_shape) == (h, w)
    # The reference hands its input prompt back unchanged as "memory_text".
    np.testing.assert_array_equal(out["memory_text"].numpy(), prompt.transpose(1, 0, 2))


# ----------------------------------------------------------------------------- geometry


def _reference_geometry():
    """build_sam3_image_model's geometry encoder; its layers keep torch's default
    (sequence-first) attention."""
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine
    from ultralytics.models.sam.sam3.encoder import TransformerEncoderLayer
    from ultralytics.models.sam.sam3.geometry_encoders import SequenceGeometryEncoder

    layer = TransformerEncoderLayer(
        D, CFG.dim_feedforward, 0.1, False, True, False, pre_norm=True
    )  # pos_enc_at_attn, pos_enc_at_cross_attn_keys, pos_enc_at_cross_attn_queries
    return SequenceGeometryEncoder(
        pos_enc=PositionEmbeddingSine(num_pos_feats=D, normalize=True, temperature=10000),
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=D,
        num_layers=CFG.geometry_layers,
        layer=layer,
        add_cls=True,
        add_post_encode_proj=True,
    )


def _random_boxes(rng, b: int, n: int) -> np.ndarray:
    """Normalised (cx, cy, w, h); some reach past the image edges."""
    centre = rng.uniform(0.0, 1.0, (b, n, 2))
    size = rng.uniform(0.02, 0.9, (b, n, 2))
    return np.concatenate([centre, size], -1).astype(np.float32)


def _geometry_case(ref, model, seed: int, n: int, counts: list[int]):
    import torch
    from ultralytics.models.sam.sam3.geometry_encoders import Prompt

    from tests.reference import rel_err

    rng = _rng(seed)
    b, h, w = len(counts), 12, 10
    image, image_pos = _image(rng, b, h, w)
    boxes = _random_boxes(rng, b, n)
    labels = rng.integers(0, 2, (b, n)).astype(np.int32)
    valid = np.arange(n)[None] < np.asarray(counts)[:, None]
    prompt = Prompt(
        box_embeddings=_seq_first(boxes), box_mask=_t(~valid), box_labels=_t(labels.T).long()
    )
    with torch.no_grad():
        feats, pos = _flat_seq_first(image, b), _flat_seq_first(image_pos, b)
        tokens, mask = ref(prompt, [feats], [(h, w)], [pos])
    args = tuple(jnp.asarray(x) for x in (boxes, labels, valid, image, image_pos))
    ours = _apply(model, _variables(model, ref, *args), *args)
    np.testing.assert_array_equal(ours.valid, ~mask.numpy())
    assert ours.tokens.shape == (b, n + 1, D)
    return rel_err(ours.tokens, tokens.numpy().transpose(1, 0, 2))


@pytest.mark.torch
def test_geometry_encoder_matches_reference():
    ref = _randomize(_reference_geometry(), seed=3)
    model = Sam3GeometryEncoder(CFG)
    errs = {
        "3 boxes, 3 and 1 valid": _geometry_case(ref, model, 3, 3, [3, 1]),
        "4 boxes, 0 and 2 valid": _geometry_case(ref, model, 4, 4, [0, 2]),
        "no boxes (CLS only)": _geometry_case(ref, model, 5, 0, [0, 0]),
    }
    print(f"\ngeometry encoder: rel err {errs}")
    assert max(errs.values()) < TOL


@pytest.mark.torch
def test_box_sine_encoding_matches_reference():
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine

    boxes = _random_boxes(_rng(6), 1, 16)[0]
    expected = PositionEmbeddingSine(D).encode_boxes(*(_t(boxes[:, i]) for i in range(4)))
    ours = box_sine_encoding(jnp.asarray(boxes), D)
    assert ours.shape == (16, D + 2)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- no torch


def test_remat_and_bfloat16():
    small = Sam3DetectorConfig(d_model=32, num_heads=4, dim_feedforward=64, geometry_layers=2)
    rng = _rng(7)
    image = jnp.asarray(rng.standard_normal((2, 6, 6, 32)), jnp.float32)
    pos = sine_positions([image], 32)[0]
    boxes = jnp.asarray(_random_boxes(rng, 2, 3))
    labels = jnp.asarray([[1, 0, 1], [1, 1, 0]])
    valid = jnp.asarray([[True, True, False], [True, False, False]])
    args = (boxes, labels, valid, image, pos)
    model = Sam3GeometryEncoder(small)
    variables = model.init(jax.random.key(0), *args)
    full = _apply(model, variables, *args).tokens
    remat = _apply(Sam3GeometryEncoder(small, remat=True), variables, *args).tokens
    np.testing.assert_allclose(remat, full, rtol=1e-6, atol=1e-6)
    half = _apply(Sam3GeometryEncoder(small, dtype=jnp.bfloat16), variables, *args).tokens
    assert half.dtype == jnp.float32
    assert 0 < float(jnp.abs(half - full).max() / jnp.abs(full).max()) < 5e-2
    prompt, prompt_valid = full, jnp.asarray([[True, True, True, False]] * 2)
    fusion = Sam3FusionEncoder(small, dtype=jnp.bfloat16, remat=True)
    fvars = fusion.init(jax.random.key(1), image, pos, prompt, prompt_valid)
    out = _apply(fusion, fvars, image, pos, prompt, prompt_valid)
    assert out.memory.shape == (2, 36, 32) and out.memory.dtype == jnp.float32
    assert out.pos.shape == (2, 36, 32) and out.valid_ratios.shape == (2, 1, 2)


def test_bad_inputs():
    small = Sam3DetectorConfig(d_model=32, num_heads=4, dim_feedforward=64, geometry_layers=1)
    image = jnp.zeros((2, 4, 4, 32))
    pos = jnp.zeros((1, 4, 4, 32))
    boxes = jnp.full((2, 3, 4), 0.5)
    labels = jnp.ones((2, 3), jnp.int32)
    valid = jnp.ones((2, 3), bool)
    geo = Sam3GeometryEncoder(small)
    v = jax.eval_shape(geo.init, jax.random.key(0), boxes, labels, valid, image, pos)

    def geo_raises(match, *args):
        with pytest.raises(ValueError, match=match):
            geo.apply(v, *args)

    geo_raises("right-padded", boxes, labels, jnp.asarray([[True, False, True]] * 2), image, pos)
    geo_raises("boxes must be", boxes[..., :2], labels, valid, image, pos)
    geo_raises("labels must be", boxes, labels.astype(jnp.float32), valid, image, pos)
    geo_raises("valid must be a bool", boxes, labels, valid.astype(jnp.int32), image, pos)
    geo_raises("image must be", boxes, labels, valid, image[..., :16], pos)
    geo_raises("image_pos must be", boxes, labels, valid, image, pos[:, :2])

    fusion = Sam3FusionEncoder(small)
    prompt, prompt_valid = jnp.zeros((2, 5, 32)), jnp.ones((2, 5), bool)
    fv = jax.eval_shape(fusion.init, jax.random.key(0), image, pos, prompt, prompt_valid)
    for match, args in [
        ("prompt must be", (image, pos, prompt[:1], prompt_valid)),
        ("prompt_valid must be", (image, pos, prompt, prompt_valid[:, :3])),
        ("image_pos must be", (image, jnp.zeros((3, 4, 4, 32)), prompt, prompt_valid)),
        ("image must be", (image[0], pos, prompt, prompt_valid)),
    ]:
        with pytest.raises(ValueError, match=match):
            fusion.apply(fv, *args)

    layer = Sam3EncoderLayer(4, 64, pos_enc_at_cross_attn_keys=True)
    with pytest.raises(ValueError, match="pos is None"):
        layer.init(jax.random.key(0), jnp.zeros((2, 3, 32)), jnp.zeros((2, 5, 32)))
    with pytest.raises(ValueError, match="roi_align needs"):
        roi_align(image, boxes[0], 7)
    with pytest.raises(ValueError, match="divisible by 4"):
        box_sine_encoding(boxes, 30)
