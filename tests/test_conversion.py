"""Checkpoint conversion: every variant's keys and shapes, strictness, save/load, export."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict
from reference import build_reference_sam, build_reference_vit, randomize_, rel_err, to_nchw

import sam_jax
from sam_jax import checkpoint
from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.cli import main as cli_main
from sam_jax.config import VARIANTS, SamConfig, ViTConfig
from sam_jax.convert.detect import detect_variant
from sam_jax.convert.keymap import flax_to_torch, state_dict_to_variables, torch_key
from sam_jax.convert.torch_reader import read_state_dict

KEYS_DIR = Path(__file__).parent / "data" / "state_dict_keys"
SMALL = SamConfig(
    encoder=ViTConfig(
        embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), pretrain_image_size=256
    ),
    image_size=256,
)


def reference_keys(variant: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(parameter count, key -> shape) from the reference listing of a variant."""
    lines = (KEYS_DIR / f"{variant}.txt").read_text().splitlines()
    count = int(lines[0].split("params=")[1].split()[0])
    shapes = {}
    for line in lines[1:]:
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return count, shapes


def assert_converted_matches(path: Path, variant: str) -> None:
    """Load `path` with sam_jax.load; check the variant, every key, shape, value and count."""
    model, variables = sam_jax.load(path)
    assert model.config.name == variant
    count, want = reference_keys(variant)
    sd = read_state_dict(path)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    flat = flatten_dict(variables)
    n_params = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[0] == "params")
    assert n_params == count
    for full_path, value in flat.items():  # every value came from its key, layout fixed
        key = torch_key(full_path[1:])
        got = flax_to_torch(full_path[1:], np.asarray(value))
        if not np.array_equal(got, sd[key]):  # 30x faster than the assert on sam_h's 2.5 GB
            np.testing.assert_array_equal(got, sd[key], err_msg=key)


@pytest.mark.torch
@pytest.mark.parametrize("variant", ["sam_b", "sam_l", "sam_h"])
def test_convert_sam_variant(variant, tmp_path):
    from ultralytics.models.sam import build

    ref = getattr(build, f"build_sam_vit_{variant[-1]}")()
    path = tmp_path / f"{variant}.pt"
    torch.save(ref.state_dict(), path)
    del ref
    gc.collect()
    assert_converted_matches(path, variant)


@pytest.fixture(scope="module")
def small_ref():
    return randomize_(build_reference_sam(build_reference_vit(SMALL.encoder), 256), seed=3)


@pytest.fixture()
def small_file(small_ref, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(small_ref.state_dict(), path)
    return path


def _shapes():
    return variable_shapes(build_from_config(SMALL))


@pytest.mark.torch
def test_missing_key_is_named(small_ref):
    sd = {k: v.numpy() for k, v in small_ref.state_dict().items()}
    del sd["mask_decoder.iou_token.weight"]
    with pytest.raises(ValueError, match=r"mask_decoder\.iou_token\.weight \(1, 256\)"):
        state_dict_to_variables(sd, _shapes())


@pytest.mark.torch
def test_unused_key_is_named(small_ref):
    sd = {k: v.numpy() for k, v in small_ref.state_dict().items()}
    sd["extra.thing"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"extra\.thing"):
        state_dict_to_variables(sd, _shapes())


@pytest.mark.torch
def test_shape_mismatch_names_key_and_both_shapes(small_ref):
    sd = {k: v.numpy() for k, v in small_ref.state_dict().items()}
    sd["image_encoder.blocks.0.attn.qkv.weight"] = np.zeros((192, 32), np.float32)
    with pytest.raises(ValueError, match=r"qkv\.weight.*\(192, 32\).*\(192, 64\)"):
        state_dict_to_variables(sd, _shapes())


def test_unknown_checkpoint_is_refused():
    with pytest.raises(ValueError, match="cannot tell the model variant"):
        detect_variant({"backbone.conv.weight": np.zeros((3, 3))})


@pytest.mark.torch
def test_save_load_identical(small_file, tmp_path):
    model = build_from_config(SMALL)
    variables = state_dict_to_variables(read_state_dict(small_file), variable_shapes(model))
    out = tmp_path / "m.safetensors"
    sam_jax.save(out, model, variables)
    model2, variables2 = sam_jax.load(out)
    assert model2.config == model.config
    a, b = flatten_dict(variables), flatten_dict(variables2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    half = tmp_path / "half.safetensors"
    sam_jax.save(half, model, variables, half=True)
    assert half.stat().st_size < 0.6 * out.stat().st_size
    _, variables3 = sam_jax.load(half)
    for k, v in flatten_dict(variables3).items():
        assert v.dtype == a[k].dtype
        np.testing.assert_array_equal(v, np.asarray(a[k]).astype(np.float16).astype(v.dtype))


@pytest.mark.torch
def test_interrupted_save_leaves_no_file(small_file, tmp_path, monkeypatch):
    model = build_from_config(SMALL)
    variables = state_dict_to_variables(read_state_dict(small_file), variable_shapes(model))

    def boom(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", boom)
    out = tmp_path / "out" / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        sam_jax.save(out, model, variables)
    assert list(out.parent.iterdir()) == []


@pytest.mark.torch
def test_cli_convert_and_export_round_trip(small_ref, tmp_path, monkeypatch):
    """ours -> torch file -> ultralytics module (strict) gives the same outputs as ours."""
    # The CLI detects variants from the VARIANTS table: the reduced model joins it here (the
    # full-size files' detection and values are test_convert_sam_variant's).
    monkeypatch.setitem(VARIANTS, "sam_small", dataclasses.replace(SMALL, name="sam_small"))
    src = tmp_path / "small.pt"
    torch.save(small_ref.state_dict(), src)
    st = tmp_path / "small.safetensors"
    back = tmp_path / "back.pt"
    assert cli_main(["convert", str(src), str(st)]) == 0
    assert cli_main(["convert", str(st), str(back)]) == 0

    fresh = build_reference_sam(build_reference_vit(SMALL.encoder), 256)
    fresh.load_state_dict(torch.load(back, weights_only=True), strict=True)
    fresh.eval()
    model, variables = sam_jax.load(st)
    assert model.config.name == "sam_small"
    # Decoder-level check on a random embedding keeps this test fast.
    emb = np.random.RandomState(1).randn(1, 16, 16, 256).astype(np.float32)
    pts = np.array([[[25.0, 50.0], [125.0, 75.0]]], np.float32)
    lab = np.array([[1, 0]], np.int32)
    decode = jax.jit(lambda v: model.apply(v, emb, pts, lab, method="predict_masks"))
    logits, iou = decode(variables)
    with torch.no_grad():
        sp, de = fresh.prompt_encoder((torch.from_numpy(pts), torch.from_numpy(lab)), None, None)
        lr, ir = fresh.mask_decoder(to_nchw(emb), fresh.prompt_encoder.get_dense_pe(), sp, de, True)
    assert rel_err(logits, lr.numpy()) <= 1e-5
    assert rel_err(iou, ir.numpy()) <= 1e-5
    # Exported tensors are bit-identical to the original file's.
    orig = read_state_dict(src)
    again = read_state_dict(back)
    assert orig.keys() == again.keys()
    for k in orig:
        np.testing.assert_array_equal(orig[k], again[k])


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert cli_main(["convert", str(bad), str(tmp_path / "x.safetensors")]) == 1
    assert "not a PyTorch zip checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    assert cli_main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")]) == 1
    assert "no such" in capsys.readouterr().err


@pytest.mark.torch
def test_fine_tuned_decoder_exports_to_the_same_masks(small_ref, tmp_path):
    """Fine-tune the decoder here, export to a torch file, load it strictly into a fresh
    ultralytics module: its masks equal ours, and differ from the un-tuned model's."""

    from sam_jax.convert.export import export_torch
    from sam_jax.projects.shapes.synthetic import scene
    from sam_jax.train.batching import normalise
    from sam_jax.train.step import TrainState, make_optimizer, make_train_step

    path = tmp_path / "small.pt"
    torch.save(small_ref.state_dict(), path)
    model = build_from_config(SMALL)
    before = state_dict_to_variables(read_state_dict(path), _shapes())
    images, targets = zip(*[scene(i, 256) for i in range(4)], strict=True)
    x = normalise(np.stack(images), SMALL)
    t = np.stack([m[0] for m in targets])
    tx = make_optimizer(before["params"], "decoder", 1e-2)
    step = make_train_step(model, tx, num_corrections=0)  # no corrective click: less to compile
    state = TrainState.create(before, tx)
    for i in range(3):
        state, _ = step(state, x, t, jax.random.key(i))
    tuned = jax.device_get(state.variables)
    out = tmp_path / "tuned.pt"
    export_torch(out, model, tuned)

    fresh = build_reference_sam(build_reference_vit(SMALL.encoder), 256)
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
    fresh.eval()
    pts = np.array([[[60.0, 80.0]], [[150.0, 40.0]]], np.float32)
    lab = np.ones((2, 1), np.int32)
    predict = jax.jit(lambda v: model.apply(v, x[:2], point_coords=pts, point_labels=lab)[0])
    ours, old = predict(tuned), predict(before)  # one compile
    with torch.no_grad():
        emb = fresh.image_encoder(to_nchw(x[:2]))
        sp, de = fresh.prompt_encoder((torch.from_numpy(pts), torch.from_numpy(lab)), None, None)
        theirs = [
            fresh.mask_decoder(
                emb[i : i + 1],
                fresh.prompt_encoder.get_dense_pe(),
                sp[i : i + 1],
                de[i : i + 1],
                True,
            )[0]
            for i in range(2)
        ]
    theirs = torch.cat(theirs).numpy()
    assert rel_err(ours, theirs) <= 1e-4
    np.testing.assert_array_equal(np.asarray(ours) > 0, theirs > 0)
    assert rel_err(old, theirs) > 1e-2  # the export carries the fine-tuned decoder
    enc = flatten_dict(before["params"]["image_encoder"])
    for k, v in flatten_dict(tuned["params"]["image_encoder"]).items():
        np.testing.assert_array_equal(v, enc[k])  # only the decoder trained
