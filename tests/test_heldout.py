"""The shifted-look shapes datasets (sam_jax.projects.shapes.heldout): what they write is
read back by sam_jax.data.open_dataset with the masks that were drawn (COCO and DAVIS), the
same seed writes the same files, and the look measurably differs from the training scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam_jax.data import CocoDataset, VideoFolderDataset, open_dataset
from sam_jax.projects.shapes import heldout as ho
from sam_jax.projects.shapes.synthetic import scene

SEED0 = 123_000  # any seed range works; small counts keep the files few


def _saturation(img: np.ndarray) -> float:
    """Median HSV saturation of an (H, W, 3) uint8 image."""
    x = img.astype(np.float64) / 255
    hi, lo = x.max(-1), x.min(-1)
    return float(np.median((hi - lo) / np.maximum(hi, 1e-6)))


def _grain(img: np.ndarray, masks: np.ndarray) -> float:
    """Median absolute difference between horizontal neighbours that are both background."""
    bg = ~masks.any(0)
    pair = bg[:, 1:] & bg[:, :-1]
    diff = np.abs(np.diff(img.astype(np.float64), axis=1)).mean(-1)
    return float(np.median(diff[pair]))


def _close(decoded: np.ndarray, drawn: np.ndarray) -> bool:
    """Whether a JPEG-decoded image is its drawn image up to compression: the mean of 4x4
    blocks (which averages out the grain that JPEG drops) moves by under 2 levels."""
    h, w = drawn.shape[0] // 4 * 4, drawn.shape[1] // 4 * 4
    blocks = lambda x: x[:h, :w].astype(np.float64).reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3))
    return decoded.shape == drawn.shape and np.abs(blocks(decoded) - blocks(drawn)).mean() < 2


def test_coco_round_trip(tmp_path):
    out = ho.write_coco(tmp_path / "coco", 3, SEED0)
    ds = open_dataset(out)
    assert isinstance(ds, CocoDataset) and len(ds) == 3
    data = json.loads((out / "annotations.json").read_text())
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)  # COCO's annotation ids are unique
    for i in range(3):
        img, masks = ho.heldout_scene(SEED0 + i)
        sample = ds[i]
        assert sample.hw == img.shape[:2] == ho.image_shape(SEED0 + i)
        np.testing.assert_array_equal(sample.masks, masks)  # RLE is lossless
        assert len(set(sample.object_ids.tolist())) == len(masks)
        assert _close(sample.image, img)  # JPEG is not lossless
        areas = [a["area"] for a in data["annotations"] if a["image_id"] == i + 1]
        np.testing.assert_array_equal(areas, masks.sum(axis=(1, 2)))
        assert masks.sum(axis=(1, 2)).min() >= ho.MIN_AREA


def test_davis_round_trip(tmp_path):
    out = ho.write_davis(tmp_path / "davis", 2, SEED0, num_frames=3)
    ds = open_dataset(out)
    assert isinstance(ds, VideoFolderDataset) and ds.names == ["v0000", "v0001"]
    for i in range(2):
        frames, masks = ho.heldout_video(SEED0 + i, 3)
        sample = ds[i]
        np.testing.assert_array_equal(sample.object_ids, np.arange(1, masks.shape[1] + 1))
        np.testing.assert_array_equal(sample.masks, masks)
        assert all(_close(a, b) for a, b in zip(sample.frames, frames, strict=True))
        assert masks[0].sum(axis=(1, 2)).min() >= ho.MIN_AREA  # every object starts visible
    with Image.open(out / "Annotations" / "v0000" / "00000.png") as png:
        assert png.mode == "P"


def test_videos_move(tmp_path):
    frames, masks = ho.heldout_video(SEED0, 4)
    assert frames.shape[0] == masks.shape[0] == 4
    assert not np.array_equal(masks[0], masks[-1])
    assert not (masks.sum(axis=1) > 1).any()  # visible masks never overlap (one id a pixel)


def test_same_seed_same_files(tmp_path):
    counts = dict(images=2, val_images=1, videos=1, val_videos=1, num_frames=2)
    written = ho.write_heldout(tmp_path / "a", **counts)
    ho.write_heldout(tmp_path / "b", **counts)
    assert sorted(written) == ["coco_train", "coco_val", "davis_train", "davis_val"]
    files = sorted(p.relative_to(tmp_path / "a") for p in tmp_path.glob("a/**/*.*"))
    assert len(files) == 2 + 3 + 2 * 2 * 2  # 2 JSONs, 3 JPEGs, 2 videos x 2 frames x 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    train = open_dataset(written["coco_train"])[0].image
    val = open_dataset(written["coco_val"])[0].image
    assert train.shape != val.shape or not np.array_equal(train, val)


def test_seeds_differ():
    one, two = ho.heldout_scene(SEED0), ho.heldout_scene(SEED0 + 1)
    assert one[0].shape != two[0].shape or not np.array_equal(one[0], two[0])
    np.testing.assert_array_equal(ho.heldout_scene(SEED0)[1], one[1])


def test_look_differs_from_training_scenes():
    held = [ho.heldout_scene(SEED0 + i) for i in range(10)]
    train = [scene(i) for i in range(10)]
    # Colours: muted, where training colours are uniform over RGB.
    assert np.mean([_saturation(img) for img, _ in held]) < 0.35
    assert np.mean([_saturation(img) for img, _ in train]) > 0.45
    # Backgrounds: every held-out one is grainier than every training one.
    assert min(_grain(*s) for s in held) > 1.5 * max(_grain(*s) for s in train)
    # Sizes: images that are not square, in the shapes the module promises.
    shapes = {img.shape[:2] for img, _ in held}
    assert shapes <= set(ho.IMAGE_SHAPES) and any(h != w for h, w in shapes)


def test_refuses_existing_folder_and_bad_counts(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        ho.write_coco(tmp_path / "taken", 1, SEED0)
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        ho.write_coco(tmp_path / "c", 0, SEED0)
    with pytest.raises(ValueError, match="num_frames must be at least 1"):
        ho.write_davis(tmp_path / "d", 1, SEED0, num_frames=0)
    with pytest.raises(ValueError, match="davis_val count must be at least 0"):
        ho.write_heldout(tmp_path / "h", val_videos=-1)
    with pytest.raises(ValueError, match="num_objects must be"):
        ho.heldout_scene(SEED0, num_objects=(3, 2))
    (tmp_path / "h" / "davis_val").mkdir(parents=True)  # checked before anything is written
    with pytest.raises(ValueError, match="davis_val: already exists"):
        ho.write_heldout(tmp_path / "h", images=1, val_images=1, videos=1, num_frames=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "taken"]
    assert [p.name for p in (tmp_path / "h").iterdir()] == ["davis_val"]


def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def failing(seed, *args):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return scene(seed, 64)

    monkeypatch.setattr(ho, "heldout_scene", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        ho.write_coco(tmp_path / "c", 3, SEED0)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary


def test_command_line(tmp_path, capsys):
    args = ["--images", "1", "--val-images", "1", "--videos", "0", "--val-videos", "0"]
    ho.main([str(tmp_path / "o"), *args])
    assert "coco_train" in capsys.readouterr().out
    assert len(open_dataset(tmp_path / "o" / "coco_val")) == 1
    with pytest.raises(SystemExit):
        ho.main([str(tmp_path / "o")])  # already there: an error line, exit 2
    assert "already exists" in capsys.readouterr().err
