"""SAM 2 / 2.1 image path against ultralytics' SAM2Model, every parameter and buffer random.

Small configs (tiny Hiera stages, 128/160 px) cover the math: FPN levels, position
encodings, the SAM heads for every prompt kind, multimask on and off, batch 2, both object-
score signs and both dynamic-multimask branches. One full-size sam2.1_t runs at 1024 px,
and all eight variants go through the converter from reference-built files.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax.traverse_util import flatten_dict

import sam_jax
from sam_jax.config import SAM2_1, VARIANTS, HieraConfig, Sam2Config
from sam_jax.config_json import config_from_json, config_to_json
from sam_jax.convert.export import export_torch
from sam_jax.convert.keymap import flax_to_torch, state_dict_to_variables, torch_key
from sam_jax.models.resize import resize_bicubic, resize_bilinear_antialias
from sam_jax.models.sam2 import NO_OBJ_SCORE, Sam2
from tests.reference import nchw, randomize_, rel_err, to_nchw
from tests.reference_sam2 import build_reference_sam2
from tests.tiny_configs import SMALL_HIERA

FEATURE_TOL = 1e-4
LOGIT_TOL = 1e-3
KEYS_DIR = Path(__file__).parent / "data" / "state_dict_keys"
HEADS = (
    "low_res_multimasks",
    "high_res_multimasks",
    "ious",
    "low_res_masks",
    "high_res_masks",
    "obj_ptr",
    "object_score_logits",
)

# Reduced configs: few blocks and narrow stages, but every structural case of the full ones
# (pooled stage starts with the previous window, padded windows, global blocks, a 2-block
# and a 1-block stage, heads > 1, a background table larger or smaller than needed).
SMALL = {
    "2.1": Sam2Config(
        encoder=SMALL_HIERA,
        image_size=128,
        **SAM2_1,
    ),
    "2.0": Sam2Config(
        encoder=HieraConfig(
            embed_dim=24,
            num_heads=2,
            stages=(2, 1, 3, 1),
            global_att_blocks=(4,),
            window_spec=(8, 4, 6, 3),
            window_pos_embed_bkg_spatial_size=(14, 14),
        ),
        image_size=160,
    ),
}


def _torch_sd(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _variables(model: Sam2, state_dict: dict) -> dict:
    s = model.config.image_size
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), method="init_everything")
    )
    return state_dict_to_variables(state_dict, target)


def _ref_heads(ref, rout, coords, labels, masks, multimask):
    """The reference's _forward_sam_heads in image mode (no_mem_embed added)."""
    with torch.no_grad():
        feats = rout["vision_features"] + ref.no_mem_embed.view(1, -1, 1, 1)
        points = None
        if coords is not None:
            points = {
                "point_coords": torch.from_numpy(coords),
                "point_labels": torch.from_numpy(labels),
            }
        mask = None if masks is None else to_nchw(masks)
        out = ref._forward_sam_heads(feats, points, mask, rout["backbone_fpn"][:2], multimask)
    return [o.numpy() for o in out]


@functools.partial(jax.jit, static_argnums=(0, 6))
def _our_heads(model, params, feats, coords, labels, masks, multimask):
    emb = feats["vision_features"] + params["params"]["no_mem_embed"].reshape(1, 1, 1, -1)
    return model.apply(
        params,
        emb,
        coords,
        labels,
        masks,
        feats["high_res_features"],
        multimask,
        method="forward_sam_heads",
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(model, params, images):
    return model.apply(params, images, method="encode_image")


@dataclasses.dataclass
class Setup:
    cfg: Sam2Config
    ref: torch.nn.Module
    model: Sam2
    params: dict
    images: np.ndarray
    rout: dict
    feats: dict
    rng: np.random.Generator


def _prompt_cases(rng: np.random.Generator, s: int, b: int = 2) -> dict:
    f32 = np.float32
    return {
        "points": (
            rng.uniform(0, s, (b, 3, 2)).astype(f32),
            np.array([[1, 0, 1], [0, 1, -1]], np.int32)[:b],
            None,
        ),
        "box_and_point": (
            rng.uniform(0, s, (b, 3, 2)).astype(f32),
            np.array([[2, 3, 1], [2, 3, 0]], np.int32)[:b],
            None,
        ),
        "no_prompt": (None, None, None),
        # A full-size mask takes the reference's antialiased resize to S/4.
        "point_and_big_mask": (
            rng.uniform(0, s, (b, 1, 2)).astype(f32),
            np.ones((b, 1), np.int32),
            5 * rng.standard_normal((b, s, s, 1)).astype(f32),
        ),
    }


@functools.cache
def _setup(version: str) -> Setup:
    cfg = SMALL[version]
    ref = randomize_(build_reference_sam2(cfg), seed=3)
    with torch.no_grad():  # random weights give scores near 0: make "object present" sure
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 10.0
    rng = np.random.default_rng(0)
    s = cfg.image_size
    images = rng.standard_normal((2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        rout = ref.forward_image(to_nchw(images))
    model = Sam2(cfg)
    params = _variables(model, _torch_sd(ref))
    feats = _encode(model, params, images)
    return Setup(cfg, ref, model, params, images, rout, feats, rng)


@pytest.fixture(scope="module", params=["2.1", "2.0"])
def small(request) -> Setup:
    return _setup(request.param)


@pytest.mark.torch
def test_interpolation_matches_torch():
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    for size in [(32, 32), (40, 24), (5, 3)]:
        ref = nchw(F.interpolate(x, size=size, mode="bicubic", align_corners=False))
        assert rel_err(resize_bicubic(jnp.asarray(nchw(x)), size), ref) < 1e-6
    m = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    for size in [(16, 16), (17, 23), (80, 96)]:
        ref = nchw(F.interpolate(m, size=size, mode="bilinear", antialias=True))
        assert rel_err(resize_bilinear_antialias(jnp.asarray(nchw(m)), size), ref) < 1e-5


@pytest.mark.torch
def test_encoder_parity(small: Setup):
    s, f, r = small.cfg.image_size, small.feats, small.rout
    for i, (side, chans) in enumerate([(s // 4, 32), (s // 8, 64), (s // 16, 256)]):
        assert f["backbone_fpn"][i].shape == (2, side, side, chans)
        assert rel_err(f["backbone_fpn"][i], nchw(r["backbone_fpn"][i])) < FEATURE_TOL
        assert rel_err(f["vision_pos_enc"][i], nchw(r["vision_pos_enc"][i])) < FEATURE_TOL
    assert rel_err(f["vision_features"], nchw(r["vision_features"])) < FEATURE_TOL
    for ours, theirs in zip(f["high_res_features"], r["backbone_fpn"][:2], strict=True):
        assert rel_err(ours, nchw(theirs)) < FEATURE_TOL


def _check_heads(small: Setup, case: str, multimasks=(True, False), params=None) -> list:
    coords, labels, masks = _prompt_cases(np.random.default_rng(1), small.cfg.image_size)[case]
    params = small.params if params is None else params
    for multimask in multimasks:
        theirs = _ref_heads(small.ref, small.rout, coords, labels, masks, multimask)
        ours = _our_heads(small.model, params, small.feats, coords, labels, masks, multimask)
        for name, a, b in zip(HEADS, ours, theirs, strict=True):
            tol = LOGIT_TOL if "masks" in name else FEATURE_TOL
            assert rel_err(a, b) < tol, (case, multimask, name, rel_err(a, b))
    return ours


# The heads are the same in 2.0 and 2.1, so 2.1 runs every prompt kind and 2.0 two of them.
# Each (case, multimask) pair is one XLA compilation, so the pairs are chosen with care: a
# mask prompt of the decoder's own size runs in test_predict_masks_image_mode instead.
@pytest.mark.torch
@pytest.mark.parametrize("case", list(_prompt_cases(np.random.default_rng(0), 32)))
def test_sam_heads_parity(case: str):
    multimasks = (True,) if case == "no_prompt" else (True, False)
    ours = _check_heads(_setup("2.1"), case, multimasks)
    assert np.all(np.asarray(ours[-1]) > 0)  # the object branch (see the next test for the other)


@pytest.mark.torch
def test_sam_heads_parity_sam2_0():
    small = _setup("2.0")
    _check_heads(small, "box_and_point", multimasks=(True,))
    _check_heads(small, "point_and_big_mask", multimasks=(False,))


@pytest.mark.torch
def test_no_object_gating():
    """A negative object score sets every mask logit to -1024 and the pointer to no_obj_ptr."""
    small = _setup("2.1")
    bias = small.ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias
    params = jax.tree_util.tree_map(lambda x: x, small.params)  # a copy of the tree
    head = params["params"]["sam_mask_decoder"]["pred_obj_score_head"]["layers_2"]
    head["bias"] = head["bias"] - 100.0
    with torch.no_grad():
        bias -= 100.0
    try:
        ours = _check_heads(small, "points", params=params)  # same shapes: no recompilation
    finally:
        with torch.no_grad():
            bias += 100.0
    assert np.all(np.asarray(ours[-1]) < 0)
    assert np.all(np.asarray(ours[0]) == NO_OBJ_SCORE)
    no_obj_ptr = np.asarray(params["params"]["no_obj_ptr"])
    np.testing.assert_allclose(ours[5], np.broadcast_to(no_obj_ptr, ours[5].shape), rtol=1e-6)


@pytest.mark.torch
def test_predict_masks_image_mode():
    """Boxes become corner points labelled 2, 3 ahead of the clicks; no_mem_embed is added."""
    small = _setup("2.1")
    s = small.cfg.image_size
    rng = np.random.default_rng(2)
    boxes = np.sort(rng.uniform(0, s, (2, 2, 2)), axis=1).reshape(2, 4).astype(np.float32)
    coords = rng.uniform(0, s, (2, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, 1]], np.int32)
    masks = 5 * rng.standard_normal((2, s // 4, s // 4, 1)).astype(np.float32)
    predict = jax.jit(
        lambda p, f, **kw: small.model.apply(p, f, method="predict_masks", **kw),
        static_argnames="multimask_output",
    )
    for kwargs, ref_coords, ref_labels, ref_masks in [
        (
            {"point_coords": coords, "point_labels": labels, "boxes": boxes, "mask_inputs": masks},
            np.concatenate([boxes.reshape(2, 2, 2), coords], axis=1),
            np.concatenate([np.tile([[2, 3]], (2, 1)), labels], axis=1).astype(np.int32),
            masks,
        ),
        (
            {"boxes": boxes},
            boxes.reshape(2, 2, 2),
            np.tile([[2, 3]], (2, 1)).astype(np.int32),
            None,
        ),
    ]:
        logits, iou, obj = predict(small.params, small.feats, multimask_output=True, **kwargs)
        theirs = _ref_heads(small.ref, small.rout, ref_coords, ref_labels, ref_masks, True)
        assert logits.shape == (2, 3, s // 4, s // 4) and iou.shape == (2, 3)
        assert rel_err(logits, theirs[0]) < LOGIT_TOL
        assert rel_err(iou, theirs[2]) < FEATURE_TOL
        assert rel_err(obj, theirs[6]) < FEATURE_TOL
    logits, iou, obj = predict(small.params, small.feats, multimask_output=False)
    theirs = _ref_heads(small.ref, small.rout, None, None, None, False)
    assert logits.shape == (2, 1, s // 4, s // 4) and obj.shape == (2, 1)
    assert rel_err(logits, theirs[0]) < LOGIT_TOL


@pytest.mark.torch
def test_dynamic_multimask_both_branches():
    """Single-mask output falls back to the best multimask output when unstable."""
    small = _setup("2.1")
    coords, labels, _ = _prompt_cases(np.random.default_rng(1), small.cfg.image_size)["points"]
    decoder = small.ref.sam_mask_decoder
    results = []
    for thresh in (-1.0, 1.01):  # always stable / never stable
        model = Sam2(dataclasses.replace(small.cfg, dynamic_multimask_stability_thresh=thresh))
        decoder.dynamic_multimask_stability_thresh = thresh
        try:
            theirs = _ref_heads(small.ref, small.rout, coords, labels, None, False)
        finally:
            decoder.dynamic_multimask_stability_thresh = (
                small.cfg.dynamic_multimask_stability_thresh
            )
        ours = _our_heads(model, small.params, small.feats, coords, labels, None, False)
        for name, a, b in zip(HEADS, ours, theirs, strict=True):
            assert rel_err(a, b) < LOGIT_TOL, (thresh, name)
        results.append(np.asarray(ours[2]))
    assert not np.allclose(results[0], results[1])


def test_image_size_validation_and_config_round_trip():
    with pytest.raises(ValueError, match="multiple of 32"):
        sam_jax.build("sam2_t", image_size=1000).init(
            jax.random.key(0), jnp.zeros((1, 1000, 1000, 3)), method="init_everything"
        )
    for name in [n for n in VARIANTS if n.startswith("sam2")]:
        assert config_from_json(config_to_json(VARIANTS[name])) == VARIANTS[name]
    assert config_from_json(config_to_json(SMALL["2.0"])) == SMALL["2.0"]


@pytest.mark.parametrize("old, new", [(True, "in_window"), (False, "always")])
def test_config_json_of_older_files(old: bool, new: str):
    """Files written before the named behaviours hold `sam2_1` and
    `cond_memory_in_window_only`; they read as the three SAM 2.1 flags and the policy."""
    d = json.loads(config_to_json(SMALL["2.1"]))
    for key in (*SAM2_1, "conditioning_memory"):
        del d[key]
    d.update(sam2_1=old, cond_memory_in_window_only=old)
    cfg = config_from_json(json.dumps(d))
    assert all(getattr(cfg, key) is old for key in SAM2_1)
    assert cfg.conditioning_memory == new
    assert cfg == dataclasses.replace(
        SMALL["2.1"], **dict.fromkeys(SAM2_1, old), conditioning_memory=new
    )


def test_config_rejects_unknown_conditioning_memory():
    with pytest.raises(
        ValueError, match="conditioning_memory must be one of 'always', 'in_window'"
    ):
        Sam2Config(conditioning_memory="never")
    with pytest.raises(ValueError, match="got 'window'"):
        dataclasses.replace(SMALL["2.1"], conditioning_memory="window")
    with pytest.raises(TypeError):
        Sam2Config(HieraConfig())  # configs are built by keyword only


def _reference_keys(name: str) -> tuple[int, int, dict[str, tuple[int, ...]]]:
    """(parameter count, key count, {key: shape}) recorded from the official files."""
    with open(f"{KEYS_DIR}/{name}.txt") as f:
        header = f.readline().split()
        shapes = {}
        for line in f:
            key, shape, _ = line.rstrip("\n").split("\t")
            shapes[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    counts = dict(item.split("=") for item in header[1:])
    return int(counts["params"]), int(counts["keys"]), shapes


@pytest.mark.torch
@pytest.mark.parametrize(
    "name", [n for n in VARIANTS if n.startswith("sam2") and not n.endswith("_shapes")]
)
def test_convert_variant(name: str, tmp_path):
    """A file the reference wrote loads strictly, detected from its keys alone."""
    n_params, n_keys, shapes = _reference_keys(name)
    ref = build_reference_sam2(VARIANTS[name])
    assert sum(p.numel() for p in ref.parameters()) == n_params
    sd = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes and len(sd) == n_keys
    path = tmp_path / "weights.pt"  # a neutral name: detection must not read it
    torch.save({"model": sd}, path)
    total = sum(v.numel() for v in sd.values())
    sd = {k: v.numpy() for k, v in sd.items()}
    del ref
    gc.collect()

    model, variables = sam_jax.load(path)
    assert model.config == VARIANTS[name]
    flat = flatten_dict(variables)
    assert len(flat) == n_keys
    assert sum(int(np.size(v)) for v in flat.values()) == total
    for path_, value in flat.items():
        key = torch_key(path_[1:])
        np.testing.assert_array_equal(flax_to_torch(path_[1:], np.asarray(value)), sd[key])
    del variables, flat, sd
    gc.collect()


@pytest.mark.torch
def test_full_size_sam2_1_t(tmp_path):
    """sam2.1_t at 1024 px: load, encode, decode, and export back to a strict torch load."""
    cfg = VARIANTS["sam2.1_t"]
    ref = randomize_(build_reference_sam2(cfg), seed=5)
    src = tmp_path / "model.pt"
    torch.save({"model": ref.state_dict()}, src)
    model, params = sam_jax.load(src)
    assert model.config.name == "sam2.1_t"

    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    feats = _encode(model, params, images)
    with torch.no_grad():
        rout = ref.forward_image(to_nchw(images))
    errors = {}
    for i in range(3):
        errors[f"fpn{i}"] = rel_err(feats["backbone_fpn"][i], nchw(rout["backbone_fpn"][i]))
        errors[f"pos{i}"] = rel_err(feats["vision_pos_enc"][i], nchw(rout["vision_pos_enc"][i]))
    coords = np.array([[[100.0, 200.0], [812.0, 640.0], [10.0, 20.0], [700.0, 900.0]]], np.float32)
    labels = np.array([[2, 3, 1, 0]], np.int32)
    theirs = _ref_heads(ref, rout, coords, labels, None, True)
    ours = _our_heads(model, params, feats, coords, labels, None, True)
    for name, a, b in zip(HEADS, ours, theirs, strict=True):
        errors[name] = rel_err(a, b)
    print({k: f"{v:.2e}" for k, v in errors.items()})
    assert all(v < FEATURE_TOL for k, v in errors.items() if "masks" not in k), errors
    assert all(v < LOGIT_TOL for k, v in errors.items() if "masks" in k), errors

    dst = tmp_path / "exported.pt"
    export_torch(dst, model, params)
    exported = torch.load(dst, map_location="cpu", weights_only=True)
    assert set(exported) == {"model"}
    fresh = build_reference_sam2(cfg)
    fresh.load_state_dict(exported["model"], strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    again = _ref_heads(fresh, rout, coords, labels, None, True)
    for a, b in zip(again, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
