"""sam_jax.data augmentation and grain loaders: augmentation moves pixels and masks together
and is reproducible, batches are the predictor's letterbox of the data, resuming at step n
replays an uninterrupted run, hosts read disjoint examples. Tiny datasets on disk, no model."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from PIL import Image

from sam_jax.data import (
    NO_AUGMENT,
    Augment,
    ImageDataset,
    MaskFolderDataset,
    VideoDataset,
    VideoFolderDataset,
    VideoSample,
    augment_clip,
    augment_image,
    clip_loader,
    image_loader,
    images_at,
    letterbox_mask,
)
from sam_jax.data.letterbox import nearest_taps
from sam_jax.transforms import PAD_VALUE, letterbox, resize_bilinear_u8
from tests.drawn_masks import ellipse, rect

S = 64  # letterbox size
COLOURS = [(230, 40, 40), (40, 220, 60), (50, 60, 240)]
ONE_HOST = dict(shard_index=0, shard_count=1)
FULL = Augment(hflip=0.5, scale=(0.6, 1.5), brightness=0.3, contrast=0.3, saturation=0.3)


def scene(h, w, n_obj, seed):
    """(image (h, w, 3) uint8, masks (n_obj, h, w) bool): dark noise, disjoint flat objects."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    shapes = [rect(2, h // 2, 2, w // 3, h, w), ellipse(3 * h // 4, w // 2, h // 6, w // 6, h, w)]
    shapes.append(rect(2, h // 3, 2 * w // 3, w - 2, h, w))
    masks = np.stack(shapes[:n_obj]) if n_obj else np.zeros((0, h, w), bool)
    for k, m in enumerate(masks):
        image[m] = COLOURS[k]
    return image, masks


def write_ids(path, masks, ids):
    id_map = np.zeros(masks.shape[-2:], np.uint8)
    for m, i in zip(masks, ids, strict=True):
        id_map[m] = i
    pal = Image.fromarray(id_map, mode="P")
    pal.putpalette([0, 0, 0] + [200, 100, 50] * 255)
    pal.save(path)


@pytest.fixture
def images(tmp_path):
    """Seven images of mixed sizes and object counts (0 to 3)."""
    root = tmp_path / "images_ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(7):
        h, w = (40, 56) if i % 2 else (56, 40)
        image, masks = scene(h, w, i % 4, seed=i)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        write_ids(root / "masks" / f"im{i}.png", masks, [5 + k for k in range(len(masks))])
    return MaskFolderDataset(root)


@pytest.fixture
def videos(tmp_path):
    """DAVIS layout: videos of 2, 5 and 6 frames; an object moves right; in "late" the
    first two frames have no object."""
    root = tmp_path / "videos_ds"
    for name, n in (("short", 2), ("mid", 5), ("late", 6)):
        fdir, adir = root / "JPEGImages" / name, root / "Annotations" / name
        fdir.mkdir(parents=True)
        adir.mkdir(parents=True)
        for t in range(n):
            image, masks = scene(40, 56, 2, seed=t)
            masks[0] = np.roll(masks[0], 3 * t, axis=1)
            if name == "late" and t < 2:
                masks[:] = False
            Image.fromarray(image).save(fdir / f"{t:05d}.jpg")
            write_ids(adir / f"{t:05d}.png", masks, [1, 2])
    return VideoFolderDataset(root)


def take(it, n):
    return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ------------------------------------------------------------------------ augmentation


def test_augment_validation():
    for bad, match in [
        (dict(hflip=1.5), "hflip is a probability"),
        (dict(hflip=-0.1), "hflip is a probability"),
        (dict(scale=(0.0, 1.0)), "0 < lo <= hi"),
        (dict(scale=(1.2, 0.8)), "0 < lo <= hi"),
        (dict(scale=(1.0,)), "scale must be a"),
        (dict(brightness=-0.1), "brightness strength must be >= 0"),
        (dict(saturation=float("nan")), "saturation strength"),
    ]:
        with pytest.raises(ValueError, match=match):
            Augment(**bad)
    image, masks = scene(40, 56, 2, 0)
    with pytest.raises(ValueError, match=r"augment_image: masks must be bool \(K, 40, 56\)"):
        augment_image(image, masks[:, :-1], FULL, np.random.default_rng(0))
    with pytest.raises(ValueError, match="augment_image: expected uint8 RGB"):
        augment_image(image.astype(np.float32), masks, FULL, np.random.default_rng(0))


def test_augment_is_deterministic_and_off_is_identity():
    image, masks = scene(40, 56, 3, 0)
    a = augment_image(image, masks, FULL, np.random.default_rng(7))
    b = augment_image(image, masks, FULL, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outs = [augment_image(image, masks, FULL, np.random.default_rng(s))[0] for s in range(6)]
    assert len({o.tobytes() for o in outs}) == 6  # the draws do change the output
    out, out_masks = augment_image(image, masks, NO_AUGMENT, np.random.default_rng(7))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_masks, masks)


def test_flip_moves_image_and_masks_together():
    image, masks = scene(40, 56, 3, 0)
    out, out_masks = augment_image(image, masks, Augment(hflip=1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])


@pytest.mark.parametrize("seed", range(8))
def test_scale_jitter_keeps_masks_on_their_objects(seed):
    image, masks = scene(40, 56, 3, 0)
    aug = Augment(hflip=0.5, scale=(0.5, 1.8))
    out, out_masks = augment_image(image, masks, aug, np.random.default_rng(seed))
    assert out.shape == image.shape and out_masks.shape == masks.shape
    checked = 0
    for k, m in enumerate(out_masks):
        # In the mask's 5x5 erosion the bilinear image is the object's flat colour.
        inner = m.copy()
        for dy, dx in itertools.product(range(-2, 3), range(-2, 3)):
            inner &= np.roll(m, (dy, dx), (0, 1))
        assert np.abs(out[inner].astype(int) - COLOURS[k]).max(initial=0) <= 1
        checked += inner.sum()
    assert checked > 50  # an object may leave the crop, not all of them
    zoomed_out = (out == PAD_VALUE).all(-1)
    assert not (out_masks & zoomed_out).any()  # pad pixels (if any) belong to no object


def find_window(big, small):
    """The (y, x) offsets at which `small` equals a window of `big`."""
    h, w = small.shape[:2]
    return [
        (y, x)
        for y in range(big.shape[0] - h + 1)
        for x in range(big.shape[1] - w + 1)
        if (big[y : y + h, x : x + w] == small).all()
    ]


def test_zoom_in_crops_and_zoom_out_pads():
    image, masks = scene(40, 56, 3, 0)
    rows, cols = nearest_taps(40, 80), nearest_taps(56, 112)
    big, big_masks = resize_bilinear_u8(image, 80, 112), masks[:, rows[:, None], cols]
    out, out_masks = augment_image(
        image, masks, Augment(hflip=0.0, scale=(2.0, 2.0)), np.random.default_rng(1)
    )
    [(y, x)] = find_window(big, out)
    np.testing.assert_array_equal(out_masks, big_masks[:, y : y + 40, x : x + 56])

    out, out_masks = augment_image(
        image, masks, Augment(hflip=0.0, scale=(0.5, 0.5)), np.random.default_rng(1)
    )
    small = resize_bilinear_u8(image, 20, 28)
    [(y, x)] = find_window(out, small)
    canvas = np.full_like(image, PAD_VALUE)
    canvas[y : y + 20, x : x + 28] = small
    np.testing.assert_array_equal(out, canvas)  # the rest is the letterbox's padding
    rows, cols = nearest_taps(40, 20), nearest_taps(56, 28)
    np.testing.assert_array_equal(
        out_masks[:, y : y + 20, x : x + 28], masks[:, rows[:, None], cols]
    )
    assert out_masks.sum() == out_masks[:, y : y + 20, x : x + 28].sum()  # none in padding


def test_colour_jitter():
    image, masks = scene(40, 56, 2, 0)
    rng = np.random.default_rng(3)
    out, out_masks = augment_image(image, masks, Augment(hflip=0.0, brightness=0.5), rng)
    np.testing.assert_array_equal(out_masks, masks)
    big = image >= 100  # ratio well defined: one factor for every pixel
    ratio = out[big] / image[big]
    assert 0.5 <= ratio.mean() <= 1.5 and ratio.mean() != 1.0
    assert np.abs(out[big] - np.clip(image[big] * ratio.mean(), 0, 255)).max() <= 2.5
    grey = np.repeat(image[..., :1], 3, axis=-1)  # saturation leaves a grey image as is
    sat = augment_image(grey, masks, Augment(hflip=0.0, saturation=0.9), rng)[0]
    assert np.abs(sat.astype(int) - grey).max() <= 1
    flat = np.full_like(image, 90)  # contrast leaves a flat image as is
    con = augment_image(flat, masks, Augment(hflip=0.0, contrast=0.9), rng)[0]
    assert np.abs(con.astype(int) - flat).max() <= 1


def test_augment_clip_is_one_draw_for_all_frames():
    frames, masks = zip(*(scene(40, 56, 2, seed=t) for t in range(3)), strict=True)
    frames, masks = np.stack(frames), np.stack(masks)
    masks[2, 1] = False
    for seed in range(4):
        out, out_masks = augment_clip(frames, masks, FULL, np.random.default_rng(seed))
        assert out.shape == frames.shape and out_masks.shape == masks.shape
        for t in range(3):
            one, one_masks = augment_image(frames[t], masks[t], FULL, np.random.default_rng(seed))
            np.testing.assert_array_equal(out[t], one)
            np.testing.assert_array_equal(out_masks[t], one_masks)
    same = np.repeat(frames[:1], 3, axis=0)
    out, _ = augment_clip(same, np.repeat(masks[:1], 3, 0), FULL, np.random.default_rng(0))
    assert (out == out[0]).all()


# --------------------------------------------------------------------- image loader


def test_image_batches_are_the_predictor_letterbox(images):
    kw = dict(image_size=S, batch_size=3, objects_per_image=2, seed=1, **ONE_HOST)
    batches = take(image_loader(images, **kw), 3)
    for batch in batches:
        assert batch["images"].shape == (3, S, S, 3) and batch["images"].dtype == np.uint8
        assert batch["masks"].shape == (3, 2, S, S) and batch["masks"].dtype == np.bool_
        assert batch["valid"].shape == (3, 2) and batch["valid"].dtype == np.bool_
        assert batch["index"].shape == (3,) and batch["index"].dtype == np.int64
        np.testing.assert_array_equal(batch["images"], images_at(images, batch["index"], S))
        for b, i in enumerate(batch["index"]):
            sample = images[i]
            np.testing.assert_array_equal(batch["images"][b], letterbox(sample.image, S))
            assert batch["valid"][b].sum() == min(2, len(sample.masks))
            boxed = letterbox_mask(sample.masks, S)
            for mask, valid in zip(batch["masks"][b], batch["valid"][b], strict=True):
                if valid:  # one of the image's objects, never repeated
                    assert any((mask == m).all() for m in boxed) and mask.any()
                else:
                    assert not mask.any()
            if batch["valid"][b].all():
                assert not (batch["masks"][b, 0] == batch["masks"][b, 1]).all()


def test_resume_replays_the_uninterrupted_run(images):
    kw = dict(image_size=S, batch_size=2, objects_per_image=2, seed=5, augment=FULL)
    kw.update(shard_index=1, shard_count=2)
    full = take(image_loader(images, **kw), 6)  # 3 examples per epoch: crosses epochs
    resumed = take(image_loader(images, start_step=4, prefetch=0, **kw), 2)
    assert_batches_equal(full[4:], resumed)
    again = take(image_loader(images, prefetch=4, **kw), 6)
    assert_batches_equal(full, again)
    other_seed = take(image_loader(images, **{**kw, "seed": 6}), 6)
    assert any((a["images"] != b["images"]).any() for a, b in zip(full, other_seed, strict=True))


def test_shards_are_disjoint_and_epochs_reshuffled(images):
    kw = dict(image_size=16, batch_size=3, objects_per_image=1, seed=2, shard_count=2)
    # 7 images, 2 hosts: 3 each per epoch, so each batch here is one host's epoch.
    a = take(image_loader(images, shard_index=0, **kw), 6)
    b = take(image_loader(images, shard_index=1, **kw), 6)
    epochs = []
    for x, y in zip(a, b, strict=True):
        ix, iy = set(x["index"].tolist()), set(y["index"].tolist())
        assert len(ix) == 3 and len(iy) == 3 and not ix & iy
        epochs.append(tuple(x["index"]) + tuple(y["index"]))
    assert len(set(epochs)) > 1  # a fresh permutation per epoch


def test_image_loader_errors(images):
    kw = dict(image_size=S, batch_size=2, objects_per_image=2, seed=0, **ONE_HOST)

    class Empty(ImageDataset):
        def __len__(self):
            return 0

        def _load(self, i):
            raise AssertionError

    for override, match in [
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(objects_per_image=0), "objects_per_image must be"),
        (dict(image_size=-3), "image_size must be"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*32\)"),
        (dict(start_step=-1), "start_step must be an integer >= 0"),
        (dict(shard_index=2, shard_count=2), r"shard_index must be in \[0, 2\)"),
        (dict(shard_index=None), "give both shard_index and shard_count"),
        (dict(shard_index=0, shard_count=8), "7 usable examples cannot be split across 8"),
        (dict(augment="flip"), "augment must be an Augment"),
    ]:
        with pytest.raises(ValueError, match=match):
            image_loader(images, **{**kw, **override})
    with pytest.raises(ValueError, match="image_loader: empty dataset"):
        image_loader(Empty(), **kw)


# ---------------------------------------------------------------------- clip loader


def test_clip_batches(videos):
    kw = dict(image_size=S, batch_size=2, clip_len=3, objects_per_clip=2, seed=3, **ONE_HOST)
    batches = take(clip_loader(videos, **kw), 4)
    for batch in batches:
        assert batch["clips"].shape == (2, 3, S, S, 3) and batch["clips"].dtype == np.uint8
        assert batch["masks"].shape == (2, 3, 2, S, S) and batch["masks"].dtype == np.bool_
        assert batch["valid"].shape == (2, 2) and batch["index"].dtype == np.int64
        for b, i in enumerate(batch["index"]):
            assert videos.names[i] != "short"  # the 2-frame video is never drawn
            # The window's frames, letterboxed as the predictor does, frame by frame.
            starts = [
                t0
                for t0 in range(videos.num_frames(i) - 2)
                if all(
                    (batch["clips"][b, t] == letterbox(f, S)).all()
                    for t, f in enumerate(videos.clip(i, range(t0, t0 + 3)).frames)
                )
            ]
            assert len(starts) == 1
            clip = videos.clip(i, range(starts[0], starts[0] + 3))
            boxed = letterbox_mask(clip.masks, S)  # (T, K, S, S)
            np.testing.assert_array_equal(batch["ignore"][b], letterbox_mask(clip.ignore, S))
            for k, valid in enumerate(batch["valid"][b]):
                track = batch["masks"][b, :, k]
                if valid:  # a whole track of the clip, present in its first frame
                    assert track[0].any()
                    assert any((track == boxed[:, j]).all() for j in range(boxed.shape[1]))
                else:
                    assert not track.any()
    resumed = take(clip_loader(videos, start_step=2, prefetch=0, **kw), 2)
    assert_batches_equal(batches[2:], resumed)


def test_clip_augment_is_resumable(videos):
    kw = dict(image_size=32, batch_size=2, clip_len=2, objects_per_clip=1, seed=4, **ONE_HOST)
    kw.update(augment=FULL)
    full = take(clip_loader(videos, **kw), 3)
    assert_batches_equal(full[1:], take(clip_loader(videos, start_step=1, **kw), 2))


def test_clip_loader_errors(videos, images):
    kw = dict(image_size=S, batch_size=1, clip_len=3, objects_per_clip=1, seed=0, **ONE_HOST)
    with pytest.raises(ValueError, match="clip_len 7 is longer than every video .*6 frames"):
        clip_loader(videos, **{**kw, "clip_len": 7})
    with pytest.raises(ValueError, match="clip_len must be an integer >= 1"):
        clip_loader(videos, **{**kw, "clip_len": 0})
    with pytest.raises(ValueError, match="2 usable examples cannot be split across 3"):
        clip_loader(videos, **{**kw, "shard_count": 3})  # the short video does not count
    with pytest.raises(ValueError, match="dataset must be a sam_jax.data VideoDataset"):
        clip_loader(images, **kw)


class LateObjects(VideoDataset):
    """One in-memory video of 8 frames whose object appears in frame 4."""

    def __len__(self):
        return 1

    def num_frames(self, i):
        return 8

    def _load(self, i, frames):
        masks = np.zeros((len(frames), 1, 24, 24), bool)
        masks[np.asarray(frames) >= 4, 0, 5:15, 5:15] = True
        return VideoSample(
            frames=np.zeros((len(frames), 24, 24, 3), np.uint8), masks=masks, object_ids=[1]
        )


def test_clip_windows_prefer_a_first_frame_with_objects():
    # 4 of the 7 windows of 2 frames start without the object: half the clips would have
    # no valid slot if the first draw were kept.
    kw = dict(image_size=24, batch_size=8, clip_len=2, objects_per_clip=1, seed=0, **ONE_HOST)
    kw.update(prefetch=0)
    valid = np.concatenate([b["valid"][:, 0] for b in take(clip_loader(LateObjects(), **kw), 4)])
    assert valid.mean() >= 0.75


def test_missing_grain_names_the_extra(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain now fails
    with pytest.raises(ImportError, match=r"pip install 'sam-jax\[train\]'"):
        image_loader(images, image_size=S, batch_size=1, objects_per_image=1, seed=0, **ONE_HOST)


def test_void_pixels_ride_with_the_masks(tmp_path):
    """A mask folder's void value becomes the batch's ignore mask, flipped and letterboxed
    exactly as the objects' masks (the letterbox padding is known background)."""
    root = tmp_path / "void_ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image, masks = scene(40, 56, 2, seed=0)
    void = np.zeros((40, 56), bool)
    void[30:, :10] = True
    Image.fromarray(image).save(root / "images" / "a.png")
    write_ids(root / "masks" / "a.png", np.concatenate([masks, void[None]]), [1, 2, 255])
    ds = MaskFolderDataset(root, void=255)
    for hflip in (0.0, 1.0):
        kw = dict(image_size=S, batch_size=1, objects_per_image=2, seed=0, **ONE_HOST)
        (batch,) = take(image_loader(ds, augment=Augment(hflip=hflip), **kw), 1)
        want_void = void[:, ::-1] if hflip else void
        np.testing.assert_array_equal(batch["ignore"][0], letterbox_mask(want_void, S))
        assert batch["ignore"].shape == (1, S, S) and batch["ignore"][0].any()
        boxed = letterbox_mask(masks[:, :, ::-1] if hflip else masks, S)
        assert all(any((m == b).all() for b in boxed) for m in batch["masks"][0])
