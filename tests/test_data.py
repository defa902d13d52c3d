"""sam_jax.data readers: each reads back what pycocotools / PIL wrote, layout detection,
and the errors a user meets first (wrong path, empty dataset, a mask whose size is not its
image's). Mask utilities are in test_data_masks.py. No model, no jit."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from sam_jax.data import (
    CocoDataset,
    MaskFolderDataset,
    Sa1bDataset,
    VideoFolderDataset,
    VideoSample,
    open_dataset,
)
from tests.drawn_masks import H, W, ellipse, rect

# pycocotools' decode under numpy 2 warns about its own __array__; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def image_of(masks, h=H, w=W, seed=0):
    """A synthetic RGB image: noise, each object painted a flat colour."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for k, m in enumerate(masks):
        im[m] = (80 + 50 * k, 200 - 40 * k, 120)
    return im


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask):
    """COCO's crowd format: run lengths of the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    rle = {"size": list(mask.shape), "counts": counts}
    # The fixture itself is checked by pycocotools.
    assert (mask_utils.decode(mask_utils.frPyObjects(rle, *mask.shape)) == mask).all()
    return rle


# ------------------------------------------------------------------------------- COCO


def polygon_mask(poly, h=H, w=W):
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)


def write_coco(root, images_dir=None):
    """Two annotated images (compressed RLE, polygon, uncompressed RLE, a crowd region)
    and one image whose only annotation is a crowd."""
    images_dir = images_dir or root
    root.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    a, b = rect(5, 20, 8, 30), ellipse(28, 38, 8, 12)
    poly = [40.0, 4.0, 52.0, 4.0, 52.0, 16.0, 40.0, 16.0]
    crowd = rect(30, 38, 2, 14)
    c = ellipse(20, 20, 10, 15)
    masks1 = [a, b, polygon_mask(poly)]
    Image.fromarray(image_of(masks1)).save(images_dir / "one.png")
    Image.fromarray(image_of([c], seed=1)).save(images_dir / "two.png")
    Image.fromarray(image_of([], seed=2)).save(images_dir / "crowd_only.png")
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": H, "width": W},
            {"id": 2, "file_name": "two.png", "height": H, "width": W},
            {"id": 3, "file_name": "crowd_only.png", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "iscrowd": 0, "segmentation": compressed_rle(a)},
            {"id": 11, "image_id": 1, "iscrowd": 0, "segmentation": uncompressed_rle(b)},
            {"id": 12, "image_id": 1, "iscrowd": 0, "segmentation": [poly]},
            {"id": 13, "image_id": 1, "iscrowd": 1, "segmentation": uncompressed_rle(crowd)},
            {"id": 20, "image_id": 2, "segmentation": compressed_rle(c)},
            {"id": 30, "image_id": 3, "iscrowd": 1, "segmentation": uncompressed_rle(c)},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, {1: (masks1, crowd), 2: ([c], None)}


def test_coco_round_trip(tmp_path):
    path, expected = write_coco(tmp_path)
    ds = CocoDataset(path)
    assert len(ds) == 2  # the crowd-only image has no object
    s = ds[0]
    masks, crowd = expected[1]
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.masks.shape == (3, H, W) and s.masks.dtype == bool
    np.testing.assert_array_equal(s.masks, np.stack(masks))
    np.testing.assert_array_equal(s.object_ids, [10, 11, 12])
    np.testing.assert_array_equal(s.ignore, crowd)  # crowd: ignored, not an object
    np.testing.assert_array_equal(s.image, np.asarray(Image.open(tmp_path / "one.png")))
    # The polygon is the rectangle it outlines, give or take its boundary.
    poly = s.masks[2]
    assert (poly & rect(4, 17, 40, 53)).sum() / (poly | rect(4, 17, 40, 53)).sum() > 0.8
    s = ds[-1]
    np.testing.assert_array_equal(s.masks, np.stack(expected[2][0]))
    assert not s.ignore.any()
    everything = CocoDataset(path, skip_empty=False)
    assert len(everything) == 3 and everything[2].masks.shape == (0, H, W)


def test_coco_images_elsewhere(tmp_path):
    path, _ = write_coco(tmp_path / "ann", images_dir=tmp_path / "pics")
    with pytest.raises(FileNotFoundError, match=r"one\.png.*images=DIR"):
        CocoDataset(path)
    ds = open_dataset(path, images=tmp_path / "pics")
    assert isinstance(ds, CocoDataset) and len(ds) == 2 and ds[0].masks.shape[0] == 3


def test_coco_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset(tmp_path / "nope.json")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"empty\.json: empty dataset"):
        CocoDataset(empty)
    not_coco = tmp_path / "other.json"
    not_coco.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match=r"other\.json: not a COCO file"):
        CocoDataset(not_coco)
    # A mask whose size is not its image's.
    path, _ = write_coco(tmp_path / "bad")
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = compressed_rle(rect(1, 5, 1, 5, h=H + 1))
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation 10 of one\.png: mask size 41x56"):
        CocoDataset(path)[0]
    # An image whose size is not the one the JSON gives.
    data = json.loads(path.read_text())
    data["images"][1]["width"] = W + 3
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"two\.png: image is 40x56 .* gives 40x59"):
        CocoDataset(path)[1]


# ------------------------------------------------------------------------------ SA-1B


def write_sa1b(root):
    root.mkdir(parents=True, exist_ok=True)
    per_image = {
        "sa_1": [rect(2, 12, 3, 20), ellipse(25, 30, 9, 14), rect(0, 40, 50, 56)],
        "sa_2": [ellipse(10, 10, 5, 5)],
    }
    for stem, masks in per_image.items():
        Image.fromarray(image_of(masks)).save(root / f"{stem}.jpg", quality=95)
        anns = [
            {"id": 100 + k, "segmentation": compressed_rle(m), "area": int(m.sum())}
            for k, m in enumerate(masks)
        ]
        info = {"image_id": 1, "file_name": f"{stem}.jpg", "height": H, "width": W}
        (root / f"{stem}.json").write_text(json.dumps({"image": info, "annotations": anns}))
    return per_image


def test_sa1b_round_trip(tmp_path):
    expected = write_sa1b(tmp_path)
    ds = Sa1bDataset(tmp_path)
    assert len(ds) == 2
    for i, stem in enumerate(["sa_1", "sa_2"]):
        s = ds[i]
        assert s.name.endswith(f"{stem}.jpg")
        np.testing.assert_array_equal(s.masks, np.stack(expected[stem]))
        np.testing.assert_array_equal(s.object_ids, 100 + np.arange(len(expected[stem])))
        np.testing.assert_array_equal(s.image, np.asarray(Image.open(tmp_path / f"{stem}.jpg")))
    assert isinstance(open_dataset(tmp_path), Sa1bDataset)


def test_sa1b_errors(tmp_path):
    (tmp_path / "lonely.json").write_text("{}")
    with pytest.raises(ValueError, match="empty dataset"):
        Sa1bDataset(tmp_path)
    write_sa1b(tmp_path / "d")
    data = json.loads((tmp_path / "d" / "sa_2.json").read_text())
    data["annotations"][0]["segmentation"] = compressed_rle(rect(0, 3, 0, 3, h=H, w=W - 1))
    (tmp_path / "d" / "sa_2.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"sa_2\.json: annotation 100 .*size 40x55"):
        Sa1bDataset(tmp_path / "d")[1]


# ------------------------------------------------------------------------ mask folder


def write_mask_folder(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    a, b = rect(3, 18, 4, 25), ellipse(28, 40, 8, 10)
    ids = np.zeros((H, W), np.uint8)
    ids[a], ids[b] = 3, 7
    Image.fromarray(image_of([a, b])).save(root / "images" / "img1.png")
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] * 85 + [0, 0, 0])
    pal.save(root / "masks" / "img1.png")
    # A 16-bit id map beside a JPEG.
    ids16 = np.zeros((H, W), np.uint16)
    ids16[b] = 300
    Image.fromarray(image_of([b])).save(root / "images" / "img2.jpg")
    Image.fromarray(ids16).save(root / "masks" / "img2.png")
    return {"img1": ([a, b], [3, 7]), "img2": ([b], [300])}


def test_mask_folder_round_trip(tmp_path):
    expected = write_mask_folder(tmp_path)
    ds = MaskFolderDataset(tmp_path)
    assert len(ds) == 2
    for i, stem in enumerate(["img1", "img2"]):
        s = ds[i]
        masks, ids = expected[stem]
        np.testing.assert_array_equal(s.masks, np.stack(masks))
        np.testing.assert_array_equal(s.object_ids, ids)
    assert isinstance(open_dataset(tmp_path), MaskFolderDataset)
    with pytest.raises(ValueError, match="images= applies to a COCO JSON only"):
        open_dataset(tmp_path, images=tmp_path)


def test_mask_folder_void(tmp_path):
    write_mask_folder(tmp_path)
    ids = np.asarray(Image.open(tmp_path / "masks" / "img1.png")).copy()
    ids[:2] = 255
    Image.fromarray(ids).save(tmp_path / "masks" / "img1.png")
    assert 255 in MaskFolderDataset(tmp_path)[0].object_ids
    s = MaskFolderDataset(tmp_path, void=255)[0]
    np.testing.assert_array_equal(s.object_ids, [3, 7])
    np.testing.assert_array_equal(s.ignore, ids == 255)


def test_mask_folder_errors(tmp_path):
    write_mask_folder(tmp_path)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(tmp_path / "masks" / "img2.png")
    with pytest.raises(ValueError, match=r"masks/img2\.png: mask size 40x58 .*img2\.jpg \(40x56\)"):
        MaskFolderDataset(tmp_path)[1]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "masks" / "img2.png")
    with pytest.raises(ValueError, match=r"img2\.png: a mask must be a palette or single-channel"):
        MaskFolderDataset(tmp_path)[1]
    (tmp_path / "masks" / "img2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img2\.png: mask not found \(1 of 2"):
        MaskFolderDataset(tmp_path)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        MaskFolderDataset(tmp_path / "empty")


# -------------------------------------------------------------------------- DAVIS/MOSE

T = 4


def write_davis(root, level=()):
    """Video "cars": object 1 moves right, object 2 leaves after frame 1, a void band in
    frame 0, no annotation for the last frame. Video "one": a single object."""
    truth = {}
    for video, n_obj in (("cars", 2), ("one", 1)):
        fdir = root.joinpath("JPEGImages", *level, video)
        adir = root.joinpath("Annotations", *level, video)
        fdir.mkdir(parents=True)
        adir.mkdir(parents=True)
        masks = np.zeros((T, 2, H, W), bool)
        void = np.zeros((T, H, W), bool)
        for t in range(T):
            masks[t, 0] = rect(5, 15, 4 + 6 * t, 14 + 6 * t)
            if n_obj == 2 and t < 2:
                masks[t, 1] = ellipse(28, 40, 6, 8)
            ids = np.zeros((H, W), np.uint8)
            ids[masks[t, 0]], ids[masks[t, 1]] = 1, 2
            if video == "cars" and t == 0:
                void[t, 36:] = True
                ids[void[t]] = 255
            Image.fromarray(image_of(list(masks[t]), seed=t)).save(fdir / f"{t:05d}.jpg")
            if video == "cars" and t == T - 1:
                continue  # unannotated frame
            pal = Image.fromarray(ids, mode="P")
            pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
            pal.save(adir / f"{t:05d}.png")
        truth[video] = (masks[:, :n_obj], void)
    return truth


def test_davis_round_trip(tmp_path):
    truth = write_davis(tmp_path)
    ds = VideoFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.names == ["cars", "one"] and ds.num_frames(0) == T
    s = ds[0]
    masks, void = truth["cars"]
    assert isinstance(s, VideoSample) and s.frames.shape == (T, H, W, 3)
    np.testing.assert_array_equal(s.object_ids, [1, 2])
    np.testing.assert_array_equal(s.annotated, [True, True, True, False])
    np.testing.assert_array_equal(s.masks[:3], masks[:3])
    assert not s.masks[3].any()
    np.testing.assert_array_equal(s.ignore[:3], void[:3])
    assert s.ignore[3].all()  # nothing is known in an unannotated frame
    np.testing.assert_array_equal(s.present[:3], [[True, True], [True, True], [True, False]])
    assert s.frame_names == ("00000", "00001", "00002", "00003")
    # A clip decodes only its frames; its objects are those in them.
    c = ds.clip(0, [2, 1])
    assert c.frame_names == ("00002", "00001") and c.frames.shape[0] == 2
    np.testing.assert_array_equal(c.masks, masks[[2, 1]])
    c = ds.clip(0, [2])
    np.testing.assert_array_equal(c.object_ids, [1])
    np.testing.assert_array_equal(ds[1].masks, truth["one"][0])
    assert isinstance(open_dataset(tmp_path), VideoFolderDataset)


def test_davis_480p_level(tmp_path):
    truth = write_davis(tmp_path, level=("480p",))
    ds = open_dataset(tmp_path)
    assert isinstance(ds, VideoFolderDataset) and ds.names == ["cars", "one"]
    np.testing.assert_array_equal(ds[1].masks, truth["one"][0])


def test_davis_errors(tmp_path):
    write_davis(tmp_path)
    Image.fromarray(np.zeros((H - 1, W), np.uint8)).save(
        tmp_path / "Annotations" / "one" / "00002.png"
    )
    with pytest.raises(ValueError, match=r"one/00002\.png: mask size 39x56"):
        VideoFolderDataset(tmp_path)[1]
    for p in (tmp_path / "Annotations" / "one").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no annotation <frame>.png for any frame"):
        VideoFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nothing/JPEGImages: folder not found"):
        VideoFolderDataset(tmp_path / "nothing")
    (tmp_path / "v" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "v" / "Annotations").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        VideoFolderDataset(tmp_path / "v")


# --------------------------------------------------------------------------- detection


def test_open_dataset_detection_and_errors(tmp_path):
    path, _ = write_coco(tmp_path / "coco")
    assert isinstance(open_dataset(path), CocoDataset)
    assert isinstance(open_dataset(tmp_path / "coco"), CocoDataset)  # its one COCO JSON
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no dataset layout found(?s:.*)COCO(?s:.*)DAVIS/MOSE"):
        open_dataset(tmp_path / "junk")
    with pytest.raises(ValueError, match="not a COCO .json"):
        open_dataset(tmp_path / "junk" / "a.txt")


def test_datasets_pickle(tmp_path):
    """Readers hold paths and indices only, so loader workers can receive them."""
    import pickle

    write_mask_folder(tmp_path / "m")
    write_davis(tmp_path / "v")
    for ds in (MaskFolderDataset(tmp_path / "m"), VideoFolderDataset(tmp_path / "v")):
        again = pickle.loads(pickle.dumps(ds))
        np.testing.assert_array_equal(again[0].masks, ds[0].masks)
