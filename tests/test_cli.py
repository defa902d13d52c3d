"""The `sam-jax` command line: flags shared across sub-commands, and every error about the
user's input shown as one line `sam-jax: error: ...` with exit status 1; `segment` over
folders and globs, several objects and RLE output, and `track` with several objects, on
the bundled tiny models."""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import sam_jax
from sam_jax.cli import flags, main

CANONICAL = {
    "convert": ["--variant"],
    "segment": [
        "--checkpoint CKPT",
        "--variant NAME",
        "--out OUT.png",
        "--image-size S",
        "--point X,Y[,LABEL]",
        "--box X0,Y0,X1,Y1",
        "--points-per-side N",
        "--points-per-batch N",
        "--pred-iou-thresh T",
        "--stability-score-thresh T",
        "--crop-n-layers N",
        "--min-mask-region-area A",
        "-q, --quiet",
    ],
    "track": [
        "--checkpoint CKPT",
        "--variant NAME",
        "--out DIR",
        "--point X,Y[,LABEL]",
        "--box X0,Y0,X1,Y1",
        "-q, --quiet",
    ],
    "demo": ["--checkpoint", "--stability-score-thresh"],
}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the failed command wrote to stderr, without its prefix."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sam-jax: error: ")
    return lines[0].removeprefix("sam-jax: error: ")


def _torch_zip(path: Path, obj: object) -> Path:
    """A file laid out as torch.save writes it, pickling `obj` (no tensors), without torch."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "im.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", sorted(CANONICAL))
def test_help_lists_the_canonical_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for flag in CANONICAL[command]:
        assert flag in text


def test_shared_flags_read_the_same_in_every_sub_command(capsys):
    helps = {}
    for command in ("segment", "track"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for line in ("--variant NAME use this model variant", "-q, --quiet no progress messages"):
        assert all(line in text for text in helps.values())


def test_hidden_alias_sets_the_canonical_flag(capsys):
    parser = argparse.ArgumentParser()
    flags.add_checkpoint(parser, required=False, default="sam_tiny_shapes", aliases=["--model"])
    flags.add_generator_flags(parser, ["stability_score_thresh"], stability_score_thresh=0.85)
    flags.add_hidden_alias(parser, "--stability-thresh", "stability_score_thresh", type=float)
    args = parser.parse_args(["--model", "x.pt", "--stability-thresh", "0.5"])
    assert (args.checkpoint, args.stability_score_thresh) == ("x.pt", 0.5)
    args = parser.parse_args([])
    assert (args.checkpoint, args.stability_score_thresh) == ("sam_tiny_shapes", 0.85)
    help_text = parser.format_help()
    assert "--model" not in help_text and "--stability-thresh " not in help_text
    assert "(0.85)" in help_text


def test_text_file_named_safetensors(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_text("hello, not weights")
    assert main(["convert", str(bad), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(bad) in line and "is not a safetensors file" in line
    with pytest.raises(ValueError, match="is not a safetensors file"):
        sam_jax.load(bad)


def test_safetensors_without_sam_jax_metadata(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path))
    assert main(["convert", str(path), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(path) in line and "--variant" in line


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["convert", str(missing), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert "no such checkpoint file" in line and str(missing) in line
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        sam_jax.load(missing)


def test_folder_as_checkpoint(tmp_path, capsys):
    assert main(["convert", str(tmp_path), str(tmp_path / "y.safetensors")]) == 1
    assert "is a folder, not a checkpoint file" in _error_line(capsys)


def test_garbage_torch_files(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    assert main(["convert", str(garbage), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(garbage) in line and "not a PyTorch zip checkpoint" in line

    training_state = _torch_zip(tmp_path / "state.pt", {"epoch": 3, "lr": 0.1})
    assert main(["convert", str(training_state), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(training_state) in line and "holds no model state dict: entry 'epoch'" in line

    empty = _torch_zip(tmp_path / "empty.pth", {})
    assert main(["convert", str(empty), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(empty) in line and "cannot tell the model variant" in line
    assert not (tmp_path / "y.safetensors").exists()


def test_unknown_checkpoint_suffix(tmp_path, capsys):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"weights")
    assert main(["convert", str(weights), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(weights) in line and ".safetensors, .pt, .pth" in line


def test_convert_refuses_an_unknown_destination_before_loading(tmp_path, capsys):
    assert main(["convert", "sam_tiny_shapes", str(tmp_path / "model.onnx")]) == 1
    assert "DST must end in .safetensors, .pt, .pth; got 'model.onnx'" in _error_line(capsys)


def test_segment_unreadable_image(tmp_path, capsys):
    text = tmp_path / "photo.jpg"
    text.write_text("not a picture")
    argv = ["segment", str(text), "--checkpoint", "sam_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"cannot read image {text}")


def test_segment_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    argv = ["segment", str(missing), "--checkpoint", "sam_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    assert _error_line(capsys) == f"no such image file: {missing}"


def test_segment_bad_checkpoint(tmp_path, image, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"{}")
    argv = ["segment", str(image), "--checkpoint", str(bad), "--box", "1,1,4,4"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    assert str(bad) in _error_line(capsys)


def test_track_missing_frames(tmp_path, capsys):
    missing = tmp_path / "no_video.mp4"
    argv = ["track", str(missing), "--checkpoint", "sam2_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert str(missing) in _error_line(capsys)


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "convert", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "SRC" in done.stdout


# ---------------------------------------------------------------- several objects, folders
# These run the bundled tiny models on small synthetic scenes.


def _scene_folder(folder: Path, count: int = 2, size: int = 96) -> list[np.ndarray]:
    """`count` shapes scenes written as folder/s<i>.png; returns the images."""
    from PIL import Image

    from sam_jax.projects.shapes.data import scene_pool

    folder.mkdir(parents=True, exist_ok=True)
    images = [image for image, _ in scene_pool(count, size, seed0=3)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"s{i}.png")
    return images


def _png_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def test_prompts_group_into_objects():
    parser = argparse.ArgumentParser()
    flags.add_prompts(parser)
    args = parser.parse_args(
        ["--point", "5,6", "--box", "1,2,30,40", "--box", "3,4,50,60", "--point", "7,8,0@2"]
    )
    objects = flags.group_prompts(args.point, args.box)
    assert [o.obj_id for o in objects] == [1, 2]
    np.testing.assert_array_equal(objects[0].points, [[5, 6]])
    np.testing.assert_array_equal(objects[0].box, [1, 2, 30, 40])
    np.testing.assert_array_equal(objects[1].labels, [0])
    np.testing.assert_array_equal(objects[1].box, [3, 4, 50, 60])
    only = parser.parse_args(["--point", "1,1@7"])
    assert [(o.obj_id, o.box) for o in flags.group_prompts(only.point, only.box)] == [(7, None)]
    assert flags.group_prompts(None, None) == []
    with pytest.raises(ValueError, match="object 1 has two boxes"):
        twice = parser.parse_args(["--box", "1,1,2,2", "--box", "3,3,4,4@1"])
        flags.group_prompts(twice.point, twice.box)


@pytest.mark.parametrize("bad", ["1,2@0", "1,2@x", "1,2,1@70000", "1,2,3,4"])
def test_bad_object_ids_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", "im.png", "--checkpoint", "c", "--out", "o.png", "--point", bad])
    assert e.value.code == 2 and "--point must be X,Y" in capsys.readouterr().err


def test_segment_everything_over_a_folder_writes_decodable_records(tmp_path, capsys):
    from pycocotools import mask as mask_utils

    images = _scene_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")  # ignored in a folder
    argv = ["segment", "--checkpoint", "sam_tiny_shapes", "--everything", "-q"]
    argv += ["--points-per-side", "4", "--points-per-batch", "16", "--pred-iou-thresh", "0.3"]
    argv += ["--stability-score-thresh", "0.3"]
    decoded = {}
    for mode, source in (("uncompressed_rle", str(tmp_path / "imgs")), ("coco_rle", None)):
        source = source or str(tmp_path / "imgs" / "*.png")  # a glob pattern this time
        out = tmp_path / mode
        assert main([*argv, source, "--out", str(out), "--output-mode", mode]) == 0
        assert sorted(p.name for p in out.glob("*.json")) == ["s0.json", "s1.json"]
        for i, image in enumerate(images):
            records = json.loads((out / f"s{i}.json").read_text())
            labels = _png_array(out / f"s{i}.png")
            assert labels.shape == image.shape[:2] and labels.max() == len(records)
            assert (out / f"s{i}_overlay.png").is_file()
            masks = []
            for k, r in enumerate(records, start=1):
                assert set(r) == {
                    "segmentation",
                    "area",
                    "bbox",
                    "predicted_iou",
                    "point_coords",
                    "stability_score",
                    "crop_box",
                }
                seg = r["segmentation"]
                if mode == "uncompressed_rle":
                    seg = mask_utils.frPyObjects(seg, *seg["size"])
                mask = mask_utils.decode(seg).astype(bool)
                assert mask.shape == image.shape[:2] and mask.sum() == r["area"]
                assert np.all(mask[labels == k])  # the label PNG shows record k as k
                masks.append(mask)
            decoded[mode, i] = masks
    assert sum(len(m) for m in decoded.values()) > 0
    for i in range(len(images)):
        for a, b in zip(decoded["uncompressed_rle", i], decoded["coco_rle", i], strict=True):
            np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "nothing" / "*.png"), "--out", str(tmp_path / "o")]) == 1
    assert _error_line(capsys).startswith("no files match")
    assert main([*argv, str(tmp_path / "imgs"), "--out", str(tmp_path / "x.png")]) == 1
    assert "--out must be a folder" in _error_line(capsys)


def test_segment_several_boxes_and_points(tmp_path, capsys):
    """Two boxes are two objects; a point with @2 joins the second. The label PNG holds
    the ids, the JSON one record per object with the predictor's mask."""
    from pycocotools import mask as mask_utils

    (image,) = _scene_folder(tmp_path, count=1)
    out = tmp_path / "out" / "m.png"
    argv = ["segment", str(tmp_path / "s0.png"), "--checkpoint", "sam_tiny_shapes", "-q"]
    argv += ["--box", "40,44,79,76", "--box", "0,48,29,77", "--point", "15,60@2"]
    assert main([*argv, "--out", str(out)]) == 0
    labels = _png_array(out)
    records = json.loads(out.with_suffix(".json").read_text())
    assert [r["object_id"] for r in records] == [1, 2]
    assert records[1]["point_coords"] == [[15.0, 60.0]] and records[1]["point_labels"] == [1]
    assert records[0]["box"] == [40.0, 44.0, 79.0, 76.0] and records[0]["point_coords"] == []
    predictor = sam_jax.Predictor(*sam_jax.load("sam_tiny_shapes"))
    predictor.set_image(image)
    want = [
        predictor.predict(box=[40, 44, 79, 76], multimask_output=False)[0][0],
        predictor.predict([[15, 60]], [1], box=[0, 48, 29, 77], multimask_output=False)[0][0],
    ]
    for r, mask, obj in zip(records, want, (1, 2), strict=True):
        seg = r["segmentation"]
        got = mask_utils.decode(mask_utils.frPyObjects(seg, *seg["size"])).astype(bool)
        np.testing.assert_array_equal(got, mask)
        assert mask.any() and np.all(mask[labels == obj])
    assert set(np.unique(labels)) == {0, 1, 2}

    # binary_mask mode: each object's mask as a PNG that the record names
    assert main([*argv, "--out", str(tmp_path / "b.png"), "--output-mode", "binary_mask"]) == 0
    records = json.loads((tmp_path / "b.json").read_text())
    assert [r["segmentation"] for r in records] == ["b_masks/1.png", "b_masks/2.png"]
    for r, mask in zip(records, want, strict=True):
        np.testing.assert_array_equal(_png_array(tmp_path / r["segmentation"]) == 255, mask)

    capsys.readouterr()
    twice = [*argv, "--box", "1,1,9,9@1", "--out", str(tmp_path / "e.png")]
    assert main(twice) == 1
    assert "object 1 has two boxes" in _error_line(capsys)
    assert not (tmp_path / "e.png").exists()


def _inner_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask's pixel nearest its centroid."""
    ys, xs = np.nonzero(mask)
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return int(xs[k]), int(ys[k])


def test_track_several_objects(tmp_path, capsys):
    """A click (object 1) and a box with a click (object 3): each frame's label PNG shows
    the masks VideoPredictor gives for the same prompts under their ids."""
    from PIL import Image

    from sam_jax.projects.shapes.data import video_pool

    frames, truth = video_pool(1, 64, num_frames=3, seed0=1)[0]
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i:03d}.png")
    (x, y), (bx, by) = _inner_pixel(truth[1, 0]), _inner_pixel(truth[1, 1])
    ys, xs = np.nonzero(truth[1, 1])
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    out = tmp_path / "out"
    argv = ["track", str(tmp_path / "frames"), "--checkpoint", "sam2_tiny_shapes", "-q"]
    argv += ["--frame", "1", "--point", f"{x},{y}", "--box", ",".join(map(str, box)) + "@3"]
    argv += ["--point", f"{bx},{by}@3", "--out", str(out)]
    assert main(argv) == 0
    assert "tracked 2 objects over 3 frames" in capsys.readouterr().out
    names = sorted(p.name for p in out.glob("mask_*.png"))
    assert names == [f"mask_{i:05d}.png" for i in range(3)]
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 3

    vp = sam_jax.VideoPredictor(*sam_jax.load("sam2_tiny_shapes"), progress=False)
    state = vp.init_state(frames)
    vp.add_new_points_or_box(state, frame_idx=1, obj_id=1, points=[[x, y]], labels=[1])
    vp.add_new_points_or_box(state, frame_idx=1, obj_id=3, points=[[bx, by]], labels=[1], box=box)
    want = {}
    for reverse in (False, True):
        for f, ids, logits in vp.propagate_in_video(state, start_frame_idx=1, reverse=reverse):
            want[f] = dict(zip(ids, logits > 0, strict=True))
    for f in range(3):
        labels = _png_array(out / f"mask_{f:05d}.png")
        assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 3}
        painted = np.zeros((64, 64), bool)
        for obj, mask in want[f].items():
            assert not np.any((labels == obj) & ~mask)  # an id only inside its mask
            painted |= mask
        assert np.array_equal(labels > 0, painted)  # every mask pixel got an id
    assert {1, 3} <= set(np.unique(_png_array(out / "mask_00001.png")))

    assert main([*argv[:-2], "--box", "1,1,2,2@3", "--out", str(tmp_path / "o")]) == 1
    assert "object 3 has two boxes" in _error_line(capsys)
