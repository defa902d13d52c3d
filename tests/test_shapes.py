"""The bundled toy models' project (sam_jax/projects/shapes): synthetic data, repatching,
the training recipe and its options, and the demo / train-shapes / eval-shapes commands."""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import VARIANTS
from sam_jax.projects.shapes.repatch import repatch
from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.projects.shapes.variants import SAM_TINY_SHAPES_P16, variant_config
from tests.test_train import TINY, scene_batch
from tests.tiny_configs import random_variables


def test_synthetic_data_masks_are_exact_and_visible():
    img, masks = scene(3, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert masks.dtype == bool and masks.shape[1:] == (64, 64)
    assert not (masks.sum(0) > 1).any()  # visible masks never overlap (occlusion applied)
    frames, vmasks = video(1, num_frames=6, size=64, num_objects=2)
    assert frames.shape == (6, 64, 64, 3) and vmasks.shape == (6, 2, 64, 64)
    assert not np.array_equal(vmasks[0], vmasks[-1])  # things move


def test_demo_command_runs(tmp_path, capsys):
    from sam_jax.checkpoint import bundled_models
    from sam_jax.cli import main

    # the image model by bundled name, the video model as a file path: both ways resolve
    video_file = str(bundled_models()["sam2_tiny_shapes"])
    args = [
        "demo",
        "--out",
        str(tmp_path),
        "--points-per-side",
        "4",
        "--video-checkpoint",
        video_file,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "model: bundled model 'sam_tiny_shapes'" in out
    assert "mean one-click IoU" in out
    assert "segment everything: " in out and "segment everything: 0 masks" not in out
    assert f"video: checkpoint {video_file}" in out
    for name in (
        "image.png",
        "overlay_clicks.png",
        "overlay_everything.png",
        "model.safetensors",
        "video_strip.png",
    ):
        assert (tmp_path / name).is_file()


def _project_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    from sam_jax.projects.shapes import commands

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    commands.add_parsers(sub)
    return parser, sub


def test_demo_old_flag_spellings_are_hidden_aliases():
    parser, sub = _project_parser()
    new = parser.parse_args(
        ["demo", "--checkpoint", "a", "--video-checkpoint", "b", "--stability-score-thresh", "0.5"]
    )
    old = parser.parse_args(
        ["demo", "--model", "a", "--video-model", "b", "--stability-thresh", "0.5"]
    )
    assert vars(new) == vars(old)
    assert (new.checkpoint, new.video_checkpoint, new.stability_score_thresh) == ("a", "b", 0.5)
    default = parser.parse_args(["demo"])
    assert (default.checkpoint, default.video_checkpoint) == ("sam_tiny_shapes", "sam2_tiny_shapes")
    assert (default.points_per_side, default.stability_score_thresh) == (16, 0.85)
    demo_help = sub.choices["demo"].format_help()
    assert "--stability-score-thresh" in demo_help and "--stability-thresh " not in demo_help
    assert "--model" not in demo_help and "--video-model" not in demo_help


def test_train_shapes_flags_are_the_recipe_options():
    """Every RecipeOptions field is a flag with the field's default; parsed flags give the
    options back, the tri-state tracking flag included."""
    from sam_jax.projects.shapes.options import RecipeOptions, from_args

    parser, _ = _project_parser()
    args = parser.parse_args(["train-shapes", "--out", "o.safetensors"])
    assert from_args(args) == RecipeOptions(out="o.safetensors")
    args = parser.parse_args(
        ["train-shapes", "--out", "o", "--lr", "0.1", "--corrections", "0", "--half"]
        + ["--multimask-tracking", "--num-maskmem", "3", "--trainable", "decoder"]
    )
    want = RecipeOptions(
        out="o",
        learning_rate=0.1,
        num_corrections=0,
        half=True,
        single_mask_tracking=False,
        num_maskmem=3,
        trainable="decoder",
    )
    assert from_args(args) == want
    args = parser.parse_args(["train-shapes", "--out", "o", "--single-mask-tracking"])
    assert from_args(args).single_mask_tracking is True
    with pytest.raises(SystemExit):
        parser.parse_args(["train-shapes", "--out", "o", "--trainable", "encoder"])
    with pytest.raises(ValueError, match="trainable must be one of"):
        RecipeOptions(trainable="encoder")


def test_repatch_sees_the_image_as_the_old_model_sees_it_upsampled():
    """8-px patches resized from 16-px ones: on an image x the new model gives what the old
    one gives on x upsampled 2x (nearest), prompts scaled alike (all-global blocks, a
    constant position table; windows grow with r and are not comparable this way)."""
    enc = dataclasses.replace(TINY.encoder, global_attn_indexes=(0, 1))
    cfg = dataclasses.replace(TINY, encoder=enc)
    model = build_from_config(cfg)
    variables = random_variables(model)  # init_params compiles for 9 s
    params = variables["params"]
    for blk in ("blocks_0", "blocks_1"):  # zero-initialised tables would test nothing
        for t in ("rel_pos_h", "rel_pos_w"):
            shape = params["image_encoder"][blk]["attn"][t].shape
            table = np.random.default_rng(1).normal(size=shape).astype(np.float32)
            params["image_encoder"][blk]["attn"][t] = table
    pos = np.random.default_rng(2).normal(size=(1, 1, 1, enc.embed_dim)).astype(np.float32)
    params["image_encoder"]["pos_embed"] = np.broadcast_to(pos, (1, 4, 4, enc.embed_dim))
    fine, fine_vars = repatch(model, variables, 8, name="fine")
    assert fine.config.name == "fine" and fine.config.embed_size == 8
    assert fine_vars["params"]["image_encoder"]["patch_embed"]["proj"]["kernel"].shape[:2] == (8, 8)

    x, _ = scene_batch(2)
    big = build_from_config(dataclasses.replace(cfg, image_size=128))
    up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    pts, lab = np.array([[[20.0, 30.0]], [[40.0, 12.0]]]), np.ones((2, 1), np.int32)
    # pixel centres: x + 0.5 at 64 px is 2x + 1 at 128 px
    want, want_iou = jax.jit(big.apply)(variables, up, point_coords=2 * pts + 0.5, point_labels=lab)
    got, got_iou = jax.jit(fine.apply)(fine_vars, x, point_coords=pts, point_labels=lab)
    assert got.shape == want.shape == (2, 3, 32, 32)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(got_iou), np.asarray(want_iou), atol=1e-5)

    with pytest.raises(ValueError, match="must divide"):
        repatch(model, variables, 5)
    # The bundled model's table entry is its from-scratch base given 8-px patches.
    base = build_from_config(SAM_TINY_SHAPES_P16)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(base))
    bundled, bundled_vars = repatch(base, zeros, 8, name="sam_tiny_shapes")
    assert bundled.config == VARIANTS["sam_tiny_shapes"]
    want_shapes = jax.tree.map(lambda s: s.shape, variable_shapes(bundled))
    assert jax.tree.map(np.shape, bundled_vars) == want_shapes


def test_project_variants_extend_the_core_table():
    assert variant_config("sam_tiny_shapes_p16") == SAM_TINY_SHAPES_P16
    assert variant_config("sam_tiny_shapes_p16", 64).image_size == 64
    assert variant_config("sam_tiny_shapes") == VARIANTS["sam_tiny_shapes"]
    assert "sam_tiny_shapes_p16" not in VARIANTS  # the core table stays the shipped models
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        variant_config("nope")


def test_train_recipe_size_trainable_and_iou_weight(tmp_path, monkeypatch):
    """train_sam at another input size trains only what `trainable` names, hands
    `iou_weight` to the train step's loss, and saves a file that loads back at that size."""
    from sam_jax.checkpoint import init_params
    from sam_jax.projects.shapes import recipe
    from sam_jax.projects.shapes.options import RecipeOptions

    seen = []
    real_step = recipe.make_train_step

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_step(*args, **kwargs)

    def run(iou_weight, out=None):
        options = RecipeOptions(
            variant="sam_tiny_shapes_p16",
            steps=2,  # the first step's learning rate is 0 (warm-up)
            batch_size=2,
            num_scenes=6,
            objects_per_image=2,
            num_corrections=0,
            image_size=64,
            trainable="decoder",
            iou_weight=iou_weight,
            out=out,
        )
        return recipe.train_sam(options)

    monkeypatch.setattr(recipe, "make_train_step", spy)
    path = str(tmp_path / "m.safetensors")
    model, variables, log = run(5.0, path)
    assert seen[-1]["iou_weight"] == 5.0
    start_model = build_from_config(variant_config("sam_tiny_shapes_p16", 64))
    start = init_params(start_model, jax.random.key(0))["params"]
    moved = {
        name: max(
            jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), start[name], p))
        )
        for name, p in variables["params"].items()
    }
    assert model.config.image_size == 64
    assert moved["mask_decoder"] > 0
    assert moved["image_encoder"] == 0 and moved["prompt_encoder"] == 0
    loaded, _ = sam_jax.load(path)
    assert loaded.config.image_size == 64
    with pytest.raises(ValueError, match="single_mask_tracking needs a SAM 2 model"):
        options = RecipeOptions(
            variant="sam_tiny_shapes_p16", steps=1, image_size=64, single_mask_tracking=True
        )
        recipe.train_sam(options)


def test_cli_trainable_choices_are_the_table():
    # options.py spells the choices out to keep jax out of argument parsing
    from sam_jax.projects.shapes.recipe import TRAINABLE

    _, sub = _project_parser()
    (action,) = [a for a in sub.choices["train-shapes"]._actions if a.dest == "trainable"]
    assert sorted(action.choices) == sorted(TRAINABLE)
