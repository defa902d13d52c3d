"""sam_jax.data mask utilities: samples check their shapes, `letterbox_mask` stays aligned
with the image predictor's `letterbox`, `sample_objects` pads with invalid, empty objects.
No model, no jit."""

from __future__ import annotations

import numpy as np
import pytest

from sam_jax.data import (
    ImageSample,
    VideoSample,
    letterbox_mask,
    sample_object_indices,
    sample_objects,
)
from sam_jax.transforms import letterbox, letterbox_geometry
from tests.drawn_masks import H, W, ellipse, rect

# --------------------------------------------------------------------------- samples


def test_sample_checks_shapes():
    im = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match=r"x\.png: masks must be \(K, 40, 56\) bool"):
        ImageSample(image=im, masks=np.zeros((1, H, W + 1), bool), object_ids=[1], name="x.png")
    with pytest.raises(ValueError, match="2 object ids for 1 masks"):
        ImageSample(image=im, masks=np.zeros((1, H, W), bool), object_ids=[1, 2])
    s = ImageSample(image=im, masks=np.zeros((0, H, W), bool), object_ids=[])
    assert s.ignore.shape == (H, W) and not s.ignore.any() and s.hw == (H, W)
    with pytest.raises(ValueError, match=r"masks must be \(2, K, 40, 56\)"):
        VideoSample(frames=np.zeros((2, H, W, 3), np.uint8), masks=np.zeros((3, 1, H, W), bool),
                    object_ids=[1])  # fmt: skip


# --------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    ("h", "w", "size"), [(40, 56, 28), (40, 56, 32), (30, 20, 64), (37, 53, 48)]
)
def test_letterbox_mask_stays_aligned_with_the_image(h, w, size):
    """Paint the same shapes in an image and a mask: after `letterbox` (the predictor's) and
    `letterbox_mask`, every pixel that is a blend of shape pixels only is in the mask, every
    blend of background only is not, and the padding is out."""
    shapes = np.stack(
        [rect(h // 5, h // 2, w // 7, w // 2, h, w), ellipse(h * 0.7, w * 0.7, h / 5, w / 6, h, w)]
    )
    for m in shapes:
        image = np.where(m[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
        boxed = letterbox(image, size)[..., 0]
        lm = letterbox_mask(m, size)
        _, nh, nw = letterbox_geometry(h, w, size)
        assert lm.shape == (size, size) and lm.dtype == bool
        assert not lm[nh:].any() and not lm[:, nw:].any()
        inside = boxed[:nh, :nw]
        assert lm[:nh, :nw][inside >= 200].all()
        assert not lm[:nh, :nw][inside <= 55].any()
        agree = (lm[:nh, :nw] == (inside >= 128)).mean()
        assert agree > 0.97
    stacked = letterbox_mask(shapes, size)
    assert stacked.shape == (2, size, size)
    np.testing.assert_array_equal(stacked[1], letterbox_mask(shapes[1], size))
    clip = letterbox_mask(shapes[None].repeat(3, axis=0), size)  # (T, K, H, W)
    assert clip.shape == (3, 2, size, size)


def test_letterbox_mask_identity_and_errors():
    m = ellipse(20, 28, 9, 12)
    out = letterbox_mask(m, 56)  # the long side is already the size
    np.testing.assert_array_equal(out[:40], m)
    assert not out[40:].any()
    with pytest.raises(ValueError, match="bool mask"):
        letterbox_mask(m.astype(np.uint8), 32)


# ---------------------------------------------------------------------------- objects


def test_sample_objects_pads_with_invalid_empty_objects():
    masks = np.stack([rect(0, 5, 0, 5), np.zeros((H, W), bool), ellipse(20, 20, 5, 5)])
    rng = np.random.default_rng(0)
    picked, valid = sample_objects(masks, 5, rng)
    assert picked.shape == (5, H, W) and picked.dtype == bool
    np.testing.assert_array_equal(valid, [True, True, False, False, False])
    assert not picked[~valid].any()  # padding: all False, no fake object
    got = {tuple(np.flatnonzero(p.ravel())[:3]) for p in picked[valid]}
    assert got == {tuple(np.flatnonzero(masks[i].ravel())[:3]) for i in (0, 2)}  # empty skipped
    idx, valid = sample_object_indices(masks, 5, np.random.default_rng(0))
    assert sorted(idx[valid]) == [0, 2] and (idx[~valid] == -1).all()
    # More objects than k: k distinct ones, all valid.
    many = np.stack([rect(i, i + 2, 0, 4) for i in range(10)])
    idx, valid = sample_object_indices(many, 4, np.random.default_rng(1))
    assert valid.all() and len(set(idx.tolist())) == 4
    # No object at all: every slot invalid and empty.
    picked, valid = sample_objects(np.zeros((0, H, W), bool), 2, rng)
    assert picked.shape == (2, H, W) and not valid.any() and not picked.any()


def test_sample_objects_in_a_clip_needs_the_first_frame():
    clip = np.zeros((3, 3, H, W), bool)
    clip[:, 0] = rect(0, 5, 0, 5)
    clip[1:, 1] = rect(10, 15, 10, 15)  # appears after frame 0: cannot be prompted there
    clip[0, 2] = rect(20, 25, 20, 25)  # visible in frame 0 only
    picked, valid = sample_objects(clip, 4, np.random.default_rng(0))
    assert picked.shape == (3, 4, H, W) and valid.sum() == 2
    idx, _ = sample_object_indices(clip, 4, np.random.default_rng(0))
    assert sorted(idx[:2]) == [0, 2]
    np.testing.assert_array_equal(picked[:, valid], clip[:, idx[valid]])
    assert not picked[:, ~valid].any()
