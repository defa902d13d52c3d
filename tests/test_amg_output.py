"""Segment-everything output modes and options: RLE encodings that pycocotools reads back,
single-mask output, SAM 2's mask-to-mask refinement and the per-family defaults. Runs the
bundled tiny models on a 96 x 96 shapes scene with a 4 x 4 point grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import sam_jax
from sam_jax.cli import flags
from sam_jax.predictors import amg_output
from sam_jax.predictors.mask_generator import FAMILY_DEFAULTS, MaskGenerator

# Low thresholds: the tiny models' scores run lower than SAM's.
SMALL = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.3)
LOOSE = dict(**SMALL, stability_score_thresh=0.3)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from sam_jax.projects.shapes.data import scene_pool

    return scene_pool(1, 96, seed0=3)[0][0]


@pytest.fixture(scope="module")
def sam():
    return sam_jax.load("sam_tiny_shapes")


@pytest.fixture(scope="module")
def sam2():
    return sam_jax.load("sam2_tiny_shapes")


def _masks(h: int = 7, w: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    full = np.ones((h, w), bool)
    first = np.zeros((h, w), bool)
    first[0, 0] = True
    return [rng.random((h, w)) > 0.5, full, ~full, first, ~first]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (8-connected)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], 0)


def test_uncompressed_rle_round_trip_and_pycocotools_agrees():
    for mask in _masks():
        rle = amg_output.mask_to_rle(mask)
        assert rle["size"] == [7, 5] and sum(rle["counts"]) == 35
        assert all(isinstance(c, int) for c in rle["counts"])
        np.testing.assert_array_equal(amg_output.rle_to_mask(rle), mask)
        assert amg_output.rle_area(rle) == mask.sum()
        coco = mask_utils.frPyObjects(json.loads(json.dumps(rle)), 7, 5)
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), mask)
    assert amg_output.mask_to_rle(_masks()[3])["counts"][:2] == [0, 1]  # starts with 0 zeros
    with pytest.raises(ValueError, match="summing to 7 x 5"):
        amg_output.rle_to_mask({"size": [7, 5], "counts": [3, 4]})


def test_coco_rle_decodes_with_pycocotools():
    for mask in _masks():
        rle = json.loads(json.dumps(amg_output.mask_to_coco_rle(mask)))  # JSON-ready
        assert isinstance(rle["counts"], str) and rle["size"] == [7, 5]
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        assert mask_utils.area(rle) == mask.sum()


def test_output_modes_hold_the_same_masks(sam, image):
    model, params = sam
    binary = MaskGenerator(model, params, **LOOSE).generate(image)
    assert len(binary) > 1
    for mode in ("uncompressed_rle", "coco_rle"):
        records = MaskGenerator(model, params, **LOOSE, output_mode=mode).generate(image)
        assert records == amg_output.format_records(binary, mode)  # converting gives the same
        assert len(records) == len(binary)
        for r, b in zip(records, binary, strict=True):
            seg = r["segmentation"]
            if mode == "coco_rle":
                decoded = mask_utils.decode(seg).astype(bool)
            else:
                decoded = amg_output.rle_to_mask(seg)
            np.testing.assert_array_equal(decoded, b["segmentation"])
            assert {**r, "segmentation": None} == {**b, "segmentation": None}
    with pytest.raises(ValueError, match="output_mode must be one of"):
        MaskGenerator(model, params, output_mode="polygons")
    with pytest.raises(ValueError, match="mask_threshold"):
        MaskGenerator(model, params, mask_threshold=float("nan"))


def test_single_mask_output_is_the_predictors_single_mask(sam, image):
    model, params = sam
    kw = dict(**LOOSE, box_nms_thresh=1.0)  # keep duplicates: one record per kept point
    single = MaskGenerator(model, params, **kw, multimask_output=False).generate(image)
    multi = MaskGenerator(model, params, **kw).generate(image)
    points = [tuple(r["point_coords"][0]) for r in single]
    assert 0 < len(single) <= 16 and len(set(points)) == len(points)
    assert len(multi) > len(single)
    predictor = sam_jax.Predictor(model, params)
    predictor.set_image(image)
    for r in single:
        _, score, _ = predictor.predict(r["point_coords"], [1], multimask_output=False)
        assert abs(float(score[0]) - r["predicted_iou"]) < 1e-3


def test_m2m_refines_each_candidate_from_its_own_logits(sam2, image):
    """Each m2m record's IoU is that of one of its point's candidates decoded again with the
    candidate's logits as mask prompt (as Predictor.predict computes it), and its mask is
    that refined mask."""
    model, params = sam2
    plain = MaskGenerator(model, params, **LOOSE).generate(image)
    refined = MaskGenerator(model, params, **LOOSE, use_m2m=True).generate(image)
    assert refined, "no m2m mask passed the filters"
    assert sorted(r["predicted_iou"] for r in refined) != sorted(r["predicted_iou"] for r in plain)
    predictor = sam_jax.Predictor(model, params)
    predictor.set_image(image)
    for r in refined[:6]:
        point = r["point_coords"]
        _, _, logits = predictor.predict(point, [1], multimask_output=True)
        outs = [
            predictor.predict(point, [1], mask_input=lg, multimask_output=False) for lg in logits
        ]
        gaps = [abs(float(s[0]) - r["predicted_iou"]) for _, s, _ in outs]
        j = int(np.argmin(gaps))
        assert gaps[j] < 1e-3
        mask = outs[j][0][0]
        seg = r["segmentation"]
        # The generator resamples through the letterboxed frame and keeps a pixel where any
        # of its bilinear taps is in the mask (ultralytics' post-processing), so its mask
        # holds the predictor's and a rim of about a pixel more.
        assert mask.any() and not (mask & ~seg).any()
        assert (seg & ~_dilate(mask)).sum() <= 0.02 * seg.sum()


def test_family_defaults_and_explicit_values(sam, sam2):
    for (model, params), family, other in ((sam, "sam", "sam2"), (sam2, "sam2", "sam")):
        gen = MaskGenerator(model, params)
        assert gen.pred_iou_thresh == FAMILY_DEFAULTS[family]["pred_iou_thresh"]
        assert gen.stability_score_offset == FAMILY_DEFAULTS[family]["stability_score_offset"]
        theirs = FAMILY_DEFAULTS[other]
        gen = MaskGenerator(model, params, **theirs)  # the other family's values, explicitly
        assert gen.pred_iou_thresh == theirs["pred_iou_thresh"]
        assert gen.stability_score_offset == theirs["stability_score_offset"]
        gen = MaskGenerator(model, params, pred_iou_thresh=0.0, stability_score_offset=0.5)
        assert (gen.pred_iou_thresh, gen.stability_score_offset) == (0.0, 0.5)
    assert FAMILY_DEFAULTS["sam2"] == {"pred_iou_thresh": 0.8, "stability_score_offset": 1.0}
    assert FAMILY_DEFAULTS["sam"] == {"pred_iou_thresh": 0.88, "stability_score_offset": 0.95}


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_unset_offset_scores_as_the_family_default(sam, sam2, image, family):
    """Left unset, stability_score_offset is the family's value: the records equal those of
    that value passed explicitly and not those of the other family's value."""
    model, params = sam if family == "sam" else sam2
    other = "sam2" if family == "sam" else "sam"

    def stabilities(**kw):
        records = MaskGenerator(model, params, **LOOSE, **kw).generate(image)
        return [r["stability_score"] for r in records]

    unset = stabilities()
    assert unset
    assert unset == stabilities(
        stability_score_offset=FAMILY_DEFAULTS[family]["stability_score_offset"]
    )
    assert unset != stabilities(
        stability_score_offset=FAMILY_DEFAULTS[other]["stability_score_offset"]
    )


def test_cli_help_shows_the_family_defaults():
    for name in ("pred_iou_thresh", "stability_score_offset"):
        shown = flags.GENERATOR_FLAGS[name].default
        assert f"{FAMILY_DEFAULTS['sam'][name]} for SAM," in shown
        assert f"{FAMILY_DEFAULTS['sam2'][name]} for SAM 2" in shown
