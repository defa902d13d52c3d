"""sam_jax.evaluation: J and F on hand-made masks with values computed by hand, the next-click
rule, the drivers with fake predictors (a perfect one scores 1.0), and `sam-jax evaluate`
end to end with the bundled models on tiny datasets written here."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import main
from sam_jax.data import ImageSample, VideoSample
from sam_jax.evaluation import (
    boundary,
    boundary_f,
    boundary_prf,
    dilate_disk,
    evaluate_images,
    evaluate_videos,
    iou,
    largest_region,
    mask_box,
    next_click,
    tolerance,
)


def square(x0, y0, side=10, h=40, w=40):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


# ------------------------------------------------------------------------------- J


def test_iou_known_values():
    a = square(10, 10)
    assert iou(a, a) == 1.0
    assert iou(a, square(25, 25)) == 0.0
    empty = np.zeros_like(a)
    assert iou(empty, empty) == 1.0  # absent and predicted absent
    assert iou(empty, a) == 0.0
    # shifted 2 px right: 8 x 10 shared of 12 x 10 covered
    assert iou(a, square(12, 10)) == pytest.approx(80 / 120)
    # ignoring the two uncovered 2-px strips leaves the overlap only
    ignore = square(10, 10) ^ square(12, 10)
    assert iou(a, square(12, 10), ignore) == 1.0
    with pytest.raises(ValueError, match="one shape"):
        iou(a, a[:-1])


# ------------------------------------------------------------------------------- F


def test_boundary_is_the_inner_contour_not_the_image_edge():
    assert boundary(square(10, 10)).sum() == 36  # 4 * (10 - 1) pixels around a 10 x 10
    full = np.ones((8, 8), bool)
    assert not boundary(full).any()  # the frame edge is no contour
    half = np.zeros((8, 8), bool)
    half[:, :4] = True
    assert boundary(half).sum() == 8 and boundary(half)[:, 3].all()


def test_tolerance_is_davis_fraction_of_the_diagonal():
    assert tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert tolerance((10, 10)) == 1  # at least one pixel


def test_dilate_disk_matches_euclidean_distance():
    rng = np.random.default_rng(0)
    m = rng.random((23, 31)) < 0.02
    ys, xs = np.nonzero(m)
    gy, gx = np.mgrid[:23, :31]
    for r in (1, 3, 4):
        d2 = (gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2
        np.testing.assert_array_equal(dilate_disk(m, r), (d2 <= r * r).any(-1))


def test_boundary_f_known_values():
    a = square(10, 10)
    assert boundary_f(a, a) == 1.0
    assert boundary_f(a, square(26, 26), radius=3) == 0.0
    empty = np.zeros_like(a)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_prf(empty, a) == (0.0, 1.0, 0.0)  # nothing predicted: P 1, R 0
    # shifted by 2 px, matched within 3 px: every contour pixel finds a partner
    assert boundary_f(square(12, 10), a, radius=3) == 1.0
    # shifted by 5 px, radius 3: of the 36 contour pixels of the shifted square, its rows
    # match for x <= 22 (8 of 10, twice) and its left column for y 11..13 and 16..18 (6 of
    # 8); its right column is 5 px from any contour. Symmetric, so P = R = F = 22 / 36.
    f, p, r = boundary_prf(square(15, 10), a, radius=3)
    assert (f, p, r) == pytest.approx((22 / 36,) * 3)
    # the default radius for a 40 x 40 image is 1: the 2-px shift is then partly missed
    assert boundary_f(square(12, 10), a) < 1.0


# ------------------------------------------------------------------------------- clicks


def flood_sizes(mask):
    """Sizes of the 4-connected components, by breadth-first search (the reference)."""
    seen, sizes = np.zeros_like(mask), []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        seen[y, x], queue, n = True, deque([(y, x)]), 0
        while queue:
            cy, cx = queue.popleft()
            n += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        sizes.append(n)
    return sizes


def test_largest_region_is_4_connected():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = m[2, 1] = True  # diagonal contact does not connect
    assert largest_region(m).sum() == 2 and largest_region(m)[1:3, 1].all()
    assert not largest_region(np.zeros((4, 4), bool)).any()
    rng = np.random.default_rng(1)
    for density in (0.3, 0.5, 0.6):
        m = rng.random((30, 37)) < density
        assert largest_region(m).sum() == max(flood_sizes(m))
        assert flood_sizes(largest_region(m)) == [max(flood_sizes(m))]


def test_next_click_on_a_hand_made_error_map():
    target = square(5, 5, side=20, h=48, w=48)
    hole = square(10, 10, side=6, h=48, w=48)  # 36 missed pixels
    blob = square(35, 35, side=3, h=48, w=48)  # 9 false-positive pixels
    pred = target & ~hole | blob
    # the larger error is the hole: a positive click at its innermost pixel (the 2 x 2 core
    # left by erosion is rows 12-13, columns 12-13; the middle one in row-major order)
    assert next_click(pred, target) == ((12, 13), 1)
    big_blob = square(30, 30, side=8, h=48, w=48)  # 64 false-positive pixels win
    (x, y), label = next_click(target & ~hole | big_blob, target)
    assert label == 0 and 33 <= x <= 34 and 33 <= y <= 34
    assert next_click(target, target) is None
    # errors inside the ignore region do not count
    assert next_click(pred, target, ignore=hole) == ((36, 36), 0)


def test_mask_box_in_pixel_edges():
    np.testing.assert_array_equal(mask_box(square(3, 7, side=4)), [3, 7, 7, 11])


# ------------------------------------------------------------------------------- drivers


class PerfectPredictor:
    """Predictor's interface; returns the ground-truth object under the first click (or of
    the box) as the best-scored of its masks."""

    def __init__(self, samples):
        self.samples = samples
        self.calls = []

    def set_image(self, image):
        self.masks = next(s.masks for s in self.samples if np.array_equal(s.image, image))

    def target(self, point_coords, box):
        if box is not None:
            return next(m for m in self.masks if np.array_equal(mask_box(m), box))
        x, y = np.asarray(point_coords, int)[0]
        return next(m for m in self.masks if m[y, x])

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
    ):
        self.calls.append(dict(points=point_coords, labels=point_labels, mask=mask_input))
        gt = self.target(point_coords, box)
        empty = np.zeros_like(gt)
        if multimask_output:
            masks, scores = np.stack([empty, gt, empty]), np.array([0.2, 0.9, 0.1])
        else:
            masks, scores = gt[None], np.array([0.9])
        logits = np.full((len(masks), 8, 8), len(self.calls), np.float32)
        return masks, scores, logits


def image_samples():
    a, b, c = square(4, 4), square(20, 22, side=12), square(30, 2, side=6)
    ignore = np.zeros((40, 40), bool)
    ignore[0:3, 30:40] = True  # a crowd region over part of c
    return [
        ImageSample(
            image=np.full((40, 40, 3), 7, np.uint8),
            masks=np.stack([a, b]),
            object_ids=[1, 2],
            name="one",
        ),
        ImageSample(
            image=np.full((40, 40, 3), 9, np.uint8),
            masks=np.stack([c, np.zeros_like(c)]),  # an empty annotation is skipped
            object_ids=[3, 4],
            ignore=ignore,
            name="two",
        ),
    ]


@pytest.mark.parametrize("prompt", ["click", "box", "clicks"])
def test_perfect_image_predictor_scores_one(prompt):
    samples = image_samples()
    result = evaluate_images(PerfectPredictor(samples), samples, prompt, clicks=3)
    assert result["miou"] == 1.0 and result["num_objects"] == 3 and result["num_images"] == 2
    assert [r["object_ids"] for r in result["per_image"]] == [[1, 2], [3]]
    assert result["per_image"][1]["skipped"] == [4]
    if prompt == "clicks":
        assert result["miou_per_click"] == [1.0, 1.0, 1.0]


class HoleyPredictor(PerfectPredictor):
    """Misses a 4 x 4 hole of the object until it has two clicks."""

    def predict(self, point_coords=None, point_labels=None, mask_input=None, **kw):
        masks, scores, logits = super().predict(point_coords, point_labels, None, mask_input, **kw)
        if len(point_coords) == 1:
            masks = masks.copy()
            masks[:, 8:12, 8:12] = False
        return masks, scores, logits


def test_clicks_protocol_corrects_the_largest_error():
    samples = image_samples()[:1]
    fake = HoleyPredictor(samples)
    result = evaluate_images(fake, samples, "clicks", clicks=3)
    ious = result["per_image"][0]["ious_per_click"]
    assert ious[0] == [pytest.approx(84 / 100), 1.0, 1.0]  # object a: hole 16 of 100 px
    assert ious[1][0] == 1.0  # object b lies outside the hole
    first, second = fake.calls[0], fake.calls[1]
    assert first["mask"] is None
    # click 2: positive, at the hole's innermost pixel; the previous best logits fed back
    np.testing.assert_array_equal(second["points"], [[8, 9], [9, 10]])
    np.testing.assert_array_equal(second["labels"], [1, 1])
    np.testing.assert_array_equal(second["mask"], np.full((8, 8), 1, np.float32))


class FrozenVideoPredictor:
    """VideoPredictor's interface; outputs every object's prompt mask on every frame (or the
    ground truth, `perfect`)."""

    def __init__(self, sample=None):
        self.sample, self.masks, self.closed = sample, {}, False

    def init_state(self, frames):
        return {"frames": frames}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.masks[obj_id] = (frame_idx, np.asarray(mask, bool))

    def propagate_in_video(self, state):
        ids = sorted(self.masks, reverse=True)  # any order: the evaluation maps by id
        start = min(f for f, _ in self.masks.values())
        for f in range(start, len(state["frames"])):
            if self.sample is not None:
                k = {int(o): i for i, o in enumerate(self.sample.object_ids)}
                out = np.stack([self.sample.masks[f, k[o]] for o in ids])
            else:
                out = np.stack([self.masks[o][1] for o in ids])
            yield f, ids, np.where(out, 5.0, -5.0).astype(np.float32)

    def close(self, state):
        self.closed = True


def moving_square_video():
    """4 frames; object 7 moves 2 px right per frame; object 9 appears on frame 1 and stays;
    frame 2 has no annotation."""
    t = 4
    masks = np.zeros((t, 2, 40, 40), bool)
    for f in range(t):
        masks[f, 0] = square(5 + 2 * f, 5)
        masks[f, 1] = square(24, 24, side=8) if f >= 1 else False
    annotated = np.array([True, True, False, True])
    masks[2] = False
    ignore = np.zeros((t, 40, 40), bool)
    ignore[2] = True
    return VideoSample(
        frames=np.zeros((t, 40, 40, 3), np.uint8),
        masks=masks,
        object_ids=[7, 9],
        annotated=annotated,
        ignore=ignore,
        name="moving",
    )


def test_perfect_video_predictor_scores_one():
    sample = moving_square_video()
    fake = FrozenVideoPredictor(sample)
    result = evaluate_videos(fake, [sample])
    assert (result["J"], result["F"], result["J&F"]) == (1.0, 1.0, 1.0)
    assert fake.closed and result["num_objects"] == 2
    objects = result["per_sequence"]["moving"]["objects"]
    assert objects["7"]["prompt_frame"] == 0 and objects["7"]["frames"] == 2  # frames 1 and 3
    assert objects["9"]["prompt_frame"] == 1 and objects["9"]["frames"] == 1  # frame 3


def test_frozen_video_predictor_known_j():
    sample = moving_square_video()
    result = evaluate_videos(FrozenVideoPredictor(), [sample], radius=1)
    seq = result["per_sequence"]["moving"]
    # object 7 frozen at x 5..14: frame 1 (shift 2) J = 80/120, frame 3 (shift 6) J = 40/160
    j7 = (80 / 120 + 40 / 160) / 2
    assert seq["objects"]["7"]["J"] == pytest.approx(j7)
    assert seq["objects"]["9"]["J"] == 1.0 and seq["objects"]["9"]["F"] == 1.0  # still object
    assert result["J"] == pytest.approx((j7 + 1.0) / 2)
    assert result["J&F"] == pytest.approx((result["J"] + result["F"]) / 2)
    assert 0.0 < seq["objects"]["7"]["F"] < 1.0


# ------------------------------------------------------------------------------- end to end


def write_coco(root, size=96):
    """Two synthetic-shape images and their objects as a COCO JSON with compressed RLE."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from sam_jax.projects.shapes.synthetic import scene

    images, anns = [], []
    for i in range(2):
        img, masks = scene(100 + i, size, num_objects=(2, 3))
        Image.fromarray(img).save(root / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "height": size, "width": size})
        for m in masks:
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": i, "segmentation": rle, "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path, len(anns)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_cli_evaluate_images_end_to_end(tmp_path, capsys):
    data, num_objects = write_coco(tmp_path)
    out = tmp_path / "result.json"
    argv = ["evaluate", "--checkpoint", "sam_tiny_shapes", "--data", str(data), "--json", str(out)]
    # two clicks: the one-click protocol, then a corrective click with the logits fed back
    assert main([*argv, "--clicks", "2", "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("mIoU ") and "prompt clicks" in line and len(line.splitlines()) == 1
    result = json.loads(out.read_text())
    assert {"miou", "num_objects", "per_image"} <= set(result)
    assert len(result["miou_per_click"]) == 2
    assert result["num_objects"] == num_objects and len(result["per_image"]) == 2
    ious = [v for r in result["per_image"] for v in r["ious"]]
    assert all(0.0 <= v <= 1.0 for v in ious) and 0.0 <= result["miou"] <= 1.0


def write_davis(root, size=64, frames=3):
    """A DAVIS-layout video of moving synthetic shapes: palette PNGs, index = object id."""
    from sam_jax.projects.shapes.synthetic import video

    rgb, masks = video(5, frames, size, num_objects=2, max_speed=0.02)
    (root / "JPEGImages" / "shapes").mkdir(parents=True)
    (root / "Annotations" / "shapes").mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(rgb[t]).save(root / "JPEGImages" / "shapes" / f"{t:05d}.jpg", quality=95)
        ids = np.zeros((size, size), np.uint8)
        for k in range(masks.shape[1]):
            ids[masks[t, k]] = k + 1
        png = Image.fromarray(ids, mode="P")
        png.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0, 0, 0] * 253)
        png.save(root / "Annotations" / "shapes" / f"{t:05d}.png")
    return root


def test_cli_evaluate_video_end_to_end(tmp_path, capsys):
    data = write_davis(tmp_path / "davis")
    out = tmp_path / "video.json"
    argv = ["evaluate", "--checkpoint", "sam2_tiny_shapes", "--data", str(data)]
    assert main([*argv, "--json", str(out), "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("J&F ") and "prompt mask" in line
    result = json.loads(out.read_text())
    assert {"J", "F", "J&F", "per_sequence"} <= set(result)
    seq = result["per_sequence"]["shapes"]
    assert seq["objects"] and all(o["frames"] == 2 for o in seq["objects"].values())
    for key in ("J", "F", "J&F"):
        assert 0.0 <= result[key] <= 1.0


def test_cli_evaluate_errors(tmp_path, capsys):
    data = write_davis(tmp_path / "davis", frames=2)
    argv = ["evaluate", "--checkpoint", "sam2_tiny_shapes", "--data", str(data)]
    assert main([*argv, "--prompt", "clicks"]) == 1
    assert "does not apply to a video dataset" in capsys.readouterr().err
    assert main([*argv, "--prompt", "box", "--clicks", "3"]) == 1
    assert "--clicks applies to --prompt clicks" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "nowhere")]) == 1
    assert "dataset not found" in capsys.readouterr().err
