"""The image predictor's Meta-style surface: set_image_batch / predict_batch, return_logits,
mask_threshold, normalize_coords, SAM 2's object score, and images given as files or PIL.

Runs on the bundled tiny models (sam_tiny_shapes, sam2_tiny_shapes); images are small and
non-square so that the letterbox and the coordinate scaling both count.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

import sam_jax
from sam_jax.predictors import image as image_mod
from sam_jax.predictors import image_batch
from sam_jax.predictors.image import Predictor, load_image

MODELS = ("sam_tiny_shapes", "sam2_tiny_shapes")
SHAPES = ((70, 100), (90, 60), (64, 64))


@pytest.fixture(scope="module", params=MODELS)
def predictor(request) -> Predictor:
    model, params = sam_jax.load(request.param)
    return Predictor(model, params)


@pytest.fixture(scope="module")
def sam2() -> Predictor:
    model, params = sam_jax.load("sam2_tiny_shapes")
    return Predictor(model, params)


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Noise with a bright disc and a dark square, so that clicks have something to find."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 3) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 5) ** 2] = (230, 200, 40)
    img[h // 2 : h // 2 + h // 4, w // 2 : w // 2 + w // 4] = (20, 30, 160)
    return img


IMAGES = [_image(s, i) for i, s in enumerate(SHAPES)]


def _prompts(mask_size: int) -> list[dict]:
    """One prompt set per image of IMAGES: points, a batch of boxes with points, nothing."""
    return [
        dict(point_coords=[[33.0, 23.0], [80.0, 50.0]], point_labels=[1, 0]),
        dict(
            point_coords=[[[20.0, 30.0]], [[40.0, 55.0]]],
            point_labels=[[1], [1]],
            box=[[5.0, 10.0, 40.0, 60.0], [28.0, 42.0, 50.0, 70.0]],
        ),
        dict(mask_input=np.linspace(-4, 4, mask_size * mask_size).reshape(mask_size, -1)),
    ]


def _batched(prompts: list[dict]) -> dict:
    names = ("point_coords", "point_labels", "box", "mask_input")
    return {f"{n}_batch": [p.get(n) for p in prompts] for n in names}


def _assert_same(got, want, what: str) -> None:
    masks, scores, logits, objects = got
    np.testing.assert_array_equal(masks, want[0], err_msg=what)
    np.testing.assert_allclose(scores, want[1], atol=1e-5, rtol=0, err_msg=what)
    np.testing.assert_allclose(logits, want[2], atol=1e-5, rtol=0, err_msg=what)
    if want[3] is None:
        assert objects is None, what
    else:
        np.testing.assert_allclose(objects, want[3], atol=1e-5, rtol=0, err_msg=what)


# ---------------------------------------------------------------------------- batches


@pytest.mark.parametrize("multimask", [True, False])
def test_batch_equals_one_image_at_a_time(predictor, multimask, monkeypatch):
    prompts = _prompts(predictor.mask_size)
    want = []
    for image, p in zip(IMAGES, prompts, strict=True):
        predictor.set_image(image)
        want.append(predictor.predict(**p, multimask_output=multimask, return_object_score=True))
        want[-1] = (*want[-1], predictor.get_image_embedding())
    calls = []

    def encode_batch(model, params, images_u8):
        calls.append(images_u8.shape)
        return real(model, params, images_u8)

    real = image_batch.encode_batch
    monkeypatch.setattr(image_batch, "encode_batch", encode_batch)
    monkeypatch.setattr(image_mod, "encode", None)  # the one-image encoder must not run
    predictor.set_image_batch(IMAGES)
    s = predictor.image_size
    assert calls == [(len(IMAGES), s, s, 3)]  # one encoder call for the whole batch
    assert predictor.is_image_set and predictor.is_batch
    got = predictor.predict_batch(
        **_batched(prompts), multimask_output=multimask, return_object_score=True
    )
    assert all(isinstance(x, list) and len(x) == len(IMAGES) for x in got)
    for i, w in enumerate(want):
        _assert_same([x[i] for x in got], w[:4], f"image {i}")
    m = 3 if multimask else 1
    assert got[0][0].shape == (m, *SHAPES[0]) and got[0][0].dtype == bool
    assert got[0][1].shape == (2, m, *SHAPES[1]) and got[1][1].shape == (2, m)
    # the batch's embedding stacks the images' ones
    emb = predictor.get_image_embedding()
    stacked = [w[4] for w in want]
    for leaf, *parts in zip(*(jax.tree_util.tree_leaves(t) for t in (emb, *stacked)), strict=True):
        assert leaf.shape[0] == len(IMAGES)
        np.testing.assert_allclose(leaf, np.concatenate(parts), atol=1e-5, rtol=0)
    # without the flag: three lists, as Meta's predict_batch
    assert len(predictor.predict_batch(**_batched(prompts))) == 3


def test_batch_options_apply_to_every_image(predictor):
    """return_logits and normalize_coords pass through predict_batch like predict."""
    pts = [[[0.3, 0.4]], [[0.5, 0.2]]]
    predictor.set_image_batch(IMAGES[:2])
    got = predictor.predict_batch(pts, None, None, None, return_logits=True, normalize_coords=False)
    for i, image in enumerate(IMAGES[:2]):
        predictor.set_image(image)
        want = predictor.predict(pts[i], return_logits=True, normalize_coords=False)
        assert got[0][i].dtype == np.float32
        np.testing.assert_allclose(got[0][i], want[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[2][i], want[2], atol=1e-5, rtol=0)


def test_batch_state_and_errors(predictor):
    p = Predictor(predictor.model, predictor.params)
    with pytest.raises(ValueError, match="set_image_batch"):
        p.predict_batch()
    p.set_image_batch(IMAGES[:2])
    with pytest.raises(ValueError, match="use predict_batch"):
        p.predict(point_coords=[[1, 2]])
    with pytest.raises(ValueError, match=r"one entry per image of the batch \(2\); got 3"):
        p.predict_batch(point_coords_batch=[[[1, 2]]] * 3)
    with pytest.raises(ValueError, match="box_batch must be a list"):
        p.predict_batch(box_batch="0 0 4 4")
    with pytest.raises(ValueError, match="image 1 of the batch: box"):
        p.predict_batch(box_batch=[None, [9, 9, 1, 1]])
    # a bad image leaves the batch that was set
    with pytest.raises(ValueError, match=r"images\[1\]: .*uint8"):
        p.set_image_batch([IMAGES[0], IMAGES[1].astype(np.float32)])
    with pytest.raises(ValueError, match="list of images.*list\\(array\\)"):
        p.set_image_batch(np.stack([IMAGES[2], IMAGES[2]]))
    with pytest.raises(ValueError, match="empty"):
        p.set_image_batch([])
    assert p.is_batch and len(p.predict_batch()[0]) == 2
    p.set_image(IMAGES[0])  # back to one image
    assert not p.is_batch
    with pytest.raises(ValueError, match="use predict\\("):
        p.predict_batch()
    assert p.predict(point_coords=[[1, 2]])[0].shape == (3, *SHAPES[0])
    p.set_image_batch(IMAGES[:1])
    p.reset_image()
    assert not p.is_image_set and not p.is_batch
    with pytest.raises(ValueError, match="no image set"):
        p.get_image_embedding()


# ---------------------------------------------------------------------------- logits, threshold


def test_return_logits_thresholds_to_the_masks(predictor):
    predictor.set_image(IMAGES[0])
    kw = dict(point_coords=[[33, 23]], point_labels=[1])
    masks, scores, low = predictor.predict(**kw)
    logits, scores2, low2 = predictor.predict(**kw, return_logits=True)
    assert logits.shape == masks.shape and logits.dtype == np.float32
    np.testing.assert_array_equal(logits > 0.0, masks)
    np.testing.assert_array_equal(scores, scores2)
    np.testing.assert_array_equal(low, low2)
    assert masks.any() and not masks.all()  # a real threshold, not a constant


def test_mask_threshold(predictor):
    predictor.set_image(IMAGES[1])
    kw = dict(box=[5.0, 10.0, 40.0, 60.0], multimask_output=False)
    logits = predictor.predict(**kw, return_logits=True)[0]
    inside = logits[(logits > -20) & (logits < 20)]
    t = float(np.median(inside))  # a threshold that surely moves pixels
    default = predictor.predict(**kw)[0]
    strict = Predictor(predictor.model, predictor.params, mask_threshold=t)
    strict.set_image(IMAGES[1])
    before = dict(image_mod.TRACE_COUNTS)
    masks = strict.predict(**kw)[0]
    assert dict(image_mod.TRACE_COUNTS) == before  # a new threshold compiles nothing
    np.testing.assert_array_equal(masks, logits > t)
    assert masks.sum() != default.sum()
    assert (masks <= default).all() if t > 0 else (masks >= default).all()
    strict.mask_threshold = 0.0  # the attribute is read on each call
    np.testing.assert_array_equal(strict.predict(**kw)[0], default)
    for bad in (float("nan"), "high", None):
        strict.mask_threshold = bad
        with pytest.raises(ValueError, match="mask_threshold must be a finite number"):
            strict.predict(**kw)


# ---------------------------------------------------------------------------- normalize_coords


def test_normalize_coords_false_takes_fractions_of_the_image(predictor):
    h, w = SHAPES[0]
    predictor.set_image(IMAGES[0])
    pts = np.array([[[33.0, 23.0], [80.0, 50.0]], [[12.0, 60.0], [70.0, 10.0]]])
    boxes = np.array([[5.0, 10.0, 60.0, 50.0], [30.0, 5.0, 95.0, 65.0]])
    labels = [[1, 0], [1, 1]]
    pixels = predictor.predict(pts, labels, boxes, return_logits=True)
    fractions = predictor.predict(
        pts / [w, h], labels, boxes / [w, h, w, h], return_logits=True, normalize_coords=False
    )
    for a, b in zip(pixels, fractions, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # normalize_coords=True (the default) reads the same numbers as pixels: another result
    as_pixels = predictor.predict(pts / [w, h], labels, boxes / [w, h, w, h], return_logits=True)
    assert np.abs(as_pixels[2] - pixels[2]).max() > 1e-2


# ---------------------------------------------------------------------------- object score


def test_object_score(predictor):
    predictor.set_image(IMAGES[0])
    single = predictor.predict([[33, 23]], [1], return_object_score=True)
    batched = predictor.predict(
        [[[33, 23]], [[70, 40]]], [[1], [1]], return_object_score=True, multimask_output=False
    )
    assert len(single) == len(batched) == 4
    if "sam2" not in predictor.model.config.name:
        assert single[3] is None and batched[3] is None
        return
    assert single[3].shape == () and single[3].dtype == np.float32
    assert batched[3].shape == (2,) and batched[3].dtype == np.float32
    # the model's own object score for the same prompt in the letterboxed frame
    r = min(predictor.image_size / s for s in SHAPES[0])
    _, _, obj = predictor.model.apply(
        predictor.params,
        predictor.get_image_embedding(),
        point_coords=np.array([[[33 * r, 23 * r]]], np.float32),
        point_labels=np.array([[1]], np.int32),
        method="predict_masks",
    )
    np.testing.assert_allclose(single[3], np.asarray(obj)[0, 0], atol=1e-5, rtol=0)
    assert single[3] > 0  # the trained model sees the disc


# ---------------------------------------------------------------------------- image inputs


def test_set_image_from_a_path_or_pil_equals_the_array(sam2, tmp_path):
    array = IMAGES[0]
    path = tmp_path / "im.png"
    Image.fromarray(array).save(path)
    kw = dict(point_coords=[[33, 23]], point_labels=[1])
    sam2.set_image(array)
    want = sam2.predict(**kw)
    for image in (path, str(path), Image.open(path), Image.fromarray(array)):
        sam2.set_image(image)
        for a, b in zip(sam2.predict(**kw), want, strict=True):
            np.testing.assert_array_equal(a, b)
    # a batch may mix kinds too
    sam2.set_image_batch([str(path), Image.fromarray(IMAGES[1]), IMAGES[2]])
    np.testing.assert_array_equal(
        sam2.predict_batch([kw["point_coords"], None, None])[0][0], want[0]
    )


def test_load_image_modes_and_exif(tmp_path):
    array = IMAGES[1]
    gray = array[..., 0]
    np.testing.assert_array_equal(
        load_image(Image.fromarray(gray)), np.repeat(gray[..., None], 3, 2)
    )
    rgba = np.concatenate([array, np.full((*array.shape[:2], 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgba)), array)  # alpha dropped
    path = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    Image.fromarray(array).save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), array[::-1, ::-1])


def test_bad_paths_are_refused(sam2, tmp_path):
    sam2.set_image(IMAGES[2])
    want = sam2.predict(box=[2, 2, 30, 30])[0]
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    cases = [
        (tmp_path / "missing.jpg", "no such image file"),
        (str(tmp_path / "missing.jpg"), "no such image file"),
        (tmp_path, "is not a file"),
        (not_image, "cannot read .*notes.png.* as an image"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            sam2.set_image(path)
        with pytest.raises(ValueError, match=r"images\[1\]: .*" + message):
            sam2.set_image_batch([IMAGES[0], path])
    # the image set before is kept
    assert not sam2.is_batch
    np.testing.assert_array_equal(sam2.predict(box=[2, 2, 30, 30])[0], want)


def test_generate_uses_the_predictors_mask_threshold():
    """Predictor.generate passes its mask_threshold on to MaskGenerator unless told one."""
    model, params = sam_jax.load("sam_tiny_shapes")
    image = _image((96, 80), seed=3)
    kw = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    p = Predictor(model, params, mask_threshold=1.5)
    records = p.generate(image, **kw)
    want = sam_jax.MaskGenerator(model, params, mask_threshold=1.5, **kw).generate(image)
    plain = sam_jax.MaskGenerator(model, params, **kw).generate(image)
    areas = lambda rs: sorted(r["area"] for r in rs)
    assert areas(records) == areas(want) != areas(plain)
    assert areas(p.generate(image, mask_threshold=0.0, **kw)) == areas(plain)
