"""Image predictor, segment-everything and `sam-jax segment` against the ultralytics predictor.

The reference is ultralytics' SAM `Predictor` driven with a random-weight SAMModel (reduced
ViT, 256 px input) and the same weights converted; images are non-square (portrait and
landscape) so that the letterbox, the prompt scaling and the mask un-letterboxing all count.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

import sam_jax  # noqa: E402
from sam_jax.checkpoint import build_from_config, variable_shapes  # noqa: E402
from sam_jax.cli import main as cli_main  # noqa: E402
from sam_jax.config import SamConfig, ViTConfig  # noqa: E402
from sam_jax.convert.keymap import state_dict_to_variables  # noqa: E402
from sam_jax.predictors import amg  # noqa: E402
from sam_jax.predictors import image as predictor  # noqa: E402
from sam_jax.predictors.image import Predictor  # noqa: E402
from sam_jax.predictors.image_input import as_rgb_uint8  # noqa: E402
from sam_jax.predictors.mask_generator import MaskGenerator  # noqa: E402
from sam_jax.transforms import letterbox_geometry, resize_bilinear_u8  # noqa: E402
from tests.reference import build_reference_sam, build_reference_vit, randomize_  # noqa: E402

S = 256
CONFIG = SamConfig(
    encoder=ViTConfig(
        embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), pretrain_image_size=S
    ),
    name="tiny_test",
    image_size=S,
)
SHAPES = {"portrait": (300, 200), "landscape": (170, 331)}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def pair():
    """(ultralytics Predictor, our Predictor, reference SAMModel)."""
    from ultralytics.models.sam.predict import Predictor as RefPredictor

    ref = randomize_(build_reference_sam(build_reference_vit(CONFIG.encoder), S), seed=3)
    with torch.no_grad():  # lift the random IoU predictions above 0 so that masks pass
        ref.mask_decoder.iou_prediction_head.layers[-1].bias += 0.5
    model = build_from_config(CONFIG)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = state_dict_to_variables(sd, variable_shapes(model))
    up = RefPredictor(overrides=dict(imgsz=S, device="cpu", conf=0.0, verbose=False, save=False))
    up.setup_model(ref, verbose=False)
    return up, Predictor(model, params), ref


def _image(shape, seed):
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2] = (200, 40, 30)
    return img


def _set_both(up, ours, image):
    up.set_image(np.ascontiguousarray(image[..., ::-1]))  # ultralytics reads BGR arrays
    ours.set_image(image)


# ---------------------------------------------------------------------------- transforms


def test_letterbox_resize_is_bit_exact_with_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    cases = [(480, 640, 1024), (2048, 1536, 1024), (999, 1001, 1024), (1, 50, 64), (37, 100, 256)]
    cases += [(int(rng.integers(1, 900)), int(rng.integers(1, 900)), 256) for _ in range(25)]
    for h, w, s in cases:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        _, nh, nw = letterbox_geometry(h, w, s)
        want = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resize_bilinear_u8(img, nh, nw), want, err_msg=str((h, w)))


@pytest.mark.torch
def test_connected_components_and_small_regions_match_reference():
    cv2 = pytest.importorskip("cv2")
    from ultralytics.models.sam import amg as ref_amg

    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        if t % 2:
            mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        else:
            mask = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (5, 5), 2) > 0.5
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
        ours, sizes = amg.connected_components(mask)
        np.testing.assert_array_equal(ours, labels)
        np.testing.assert_array_equal(sizes, stats[:, -1])
        for mode in ("holes", "islands"):
            thresh = int(rng.integers(1, 30))
            got, changed = amg.remove_small_regions(mask, thresh, mode)
            want, want_changed = ref_amg.remove_small_regions(mask, thresh, mode)
            assert changed == want_changed
            np.testing.assert_array_equal(got, want.astype(bool))


@pytest.mark.torch
def test_nms_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    for _ in range(10):
        xy = rng.integers(0, 100, (60, 2))
        boxes = np.concatenate([xy, xy + rng.integers(1, 60, (60, 2))], 1).astype(np.float32)
        scores = rng.random(60).astype(np.float32)
        for thresh in (0.3, 0.7):
            want = tv.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).numpy()
            np.testing.assert_array_equal(amg.nms(boxes, scores, thresh), want)


# ---------------------------------------------------------------------------- predict


def _random_prompts(rng, h, w, k, n):
    # Points fall slightly outside the image too: both sides use them as given.
    pts = rng.uniform(-0.05, 1.05, (k, n, 2)) * [w, h]
    labels = rng.integers(0, 2, (k, n))
    x0, y0 = rng.uniform(0, w * 0.6, k), rng.uniform(0, h * 0.6, k)
    boxes = np.stack([x0, y0, x0 + rng.uniform(4, w * 0.4, k), y0 + rng.uniform(4, h * 0.4, k)], 1)
    return pts, labels, boxes


@pytest.mark.torch
@pytest.mark.parametrize("orientation", list(SHAPES))
def test_predict_matches_ultralytics(pair, orientation):
    up, ours, _ = pair
    h, w = SHAPES[orientation]
    rng = np.random.default_rng(len(orientation))
    _set_both(up, ours, _image((h, w), seed=h))
    # (kind, K, N, batched, multimask): single and batched points, boxes and both.
    layouts = [
        ("points", 1, 1, False, True),
        ("points", 3, 2, True, False),
        ("box", 1, 0, False, False),
        ("box", 2, 0, True, True),
        ("both", 3, 1, True, True),
        ("both", 1, 3, False, False),
    ]
    worst_iou, worst_score = 1.0, 0.0
    for kind, k, n, batched, multimask in layouts:
        pts, labels, boxes = _random_prompts(rng, h, w, k, max(n, 1))
        ref_kw, kw = {}, {}
        if kind in ("points", "both"):
            ref_kw.update(points=pts, labels=labels)
            kw.update(
                point_coords=pts if batched else pts[0],
                point_labels=labels if batched else labels[0],
            )
        if kind in ("box", "both"):
            ref_kw["bboxes"] = boxes
            kw["box"] = boxes if batched else boxes[0]
        ref_masks, ref_boxes = up.inference_features(
            up.features, (h, w), (S, S), multimask_output=multimask, **ref_kw
        )
        masks, scores, logits = ours.predict(multimask_output=multimask, **kw)
        m = 3 if multimask else 1
        lead = (k, m) if batched else (m,)
        assert masks.shape == (*lead, h, w) and masks.dtype == bool
        assert scores.shape == lead and logits.shape == (*lead, S // 4, S // 4)
        ref_masks = ref_masks.numpy().reshape(masks.shape)
        ref_scores = ref_boxes[:, 4].numpy().reshape(scores.shape)
        ious = [
            _iou(a, b)
            for a, b in zip(masks.reshape(-1, h, w), ref_masks.reshape(-1, h, w), strict=True)
        ]
        worst_iou = min(worst_iou, *ious)
        worst_score = max(worst_score, float(np.abs(scores - ref_scores).max()))
    print(f"{orientation}: worst mask IoU {worst_iou:.6f}, worst score diff {worst_score:.2e}")
    assert worst_iou >= 0.99
    assert worst_score <= 1e-3


@pytest.mark.torch
def test_decoder_orders_and_cache_agree(pair, monkeypatch):
    """predict_masks with the per-image decoder cache and one image's embedding shared by K
    prompts equals predict_masks on the embedding repeated K times, and the reassociated
    attention products equal the plain order (FEW_TOKENS = 0)."""
    import jax
    import jax.numpy as jnp

    from sam_jax.models import two_way_transformer

    _, ours, _ = pair
    model, params = ours.model, ours.params
    rng = np.random.default_rng(0)
    emb = jnp.asarray(rng.standard_normal((1, S // 16, S // 16, 256)), jnp.float32)
    cache = predictor.decoder_cache(model, params, emb)

    def run(e, c, coords, labels, boxes, multimask):
        return jax.jit(
            lambda p, e, c, pc, pl, b: model.apply(
                p, e, pc, pl, b, None, multimask, decoder_cache=c, method="predict_masks"
            )
        )(params, e, c, coords, labels, boxes)

    layouts = [(1, 1, False, True), (3, 2, True, False), (2, 0, True, True), (2, 20, False, True)]
    for k, n, box, multimask in layouts:
        coords = jnp.asarray(rng.uniform(0, S, (k, n, 2)), jnp.float32) if n else None
        labels = jnp.asarray(rng.integers(0, 2, (k, n)), jnp.int32) if n else None
        boxes = (
            jnp.asarray(np.sort(rng.uniform(0, S, (k, 2, 2)), 1).reshape(k, 4), jnp.float32)
            if box
            else None
        )
        got = run(emb, cache, coords, labels, boxes, multimask)
        want = run(jnp.repeat(emb, k, 0), None, coords, labels, boxes, multimask)
        with monkeypatch.context() as m:
            m.setattr(two_way_transformer, "FEW_TOKENS", 0)
            plain = run(jnp.repeat(emb, k, 0), None, coords, labels, boxes, multimask)
        for a, b, c in zip(got, want, plain, strict=True):
            assert a.shape == b.shape == c.shape
            assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 1e-5
            assert float(jnp.abs(b - c).max() / jnp.abs(c).max()) < 1e-5


@pytest.mark.torch
def test_mask_input_matches_reference_decoder(pair):
    up, ours, ref = pair
    h, w = SHAPES["portrait"]
    _set_both(up, ours, _image((h, w), seed=7))
    pts = np.array([[60.0, 90.0], [120.0, 200.0]])
    labels = np.array([1, 0])
    _, _, logits = ours.predict(pts, labels, multimask_output=False)
    masks, scores, low = ours.predict(pts, labels, mask_input=logits, multimask_output=False)
    r = min(S / h, S / w)
    with torch.no_grad():
        ref_low, ref_scores = up._inference_features(
            up.features,
            points=torch.tensor(pts[None] * r, dtype=torch.float32),
            labels=torch.tensor(labels[None], dtype=torch.int32),
            masks=torch.from_numpy(logits[None]),
            multimask_output=False,
        )
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
    err = np.abs(low - ref_low.numpy()).max() / np.abs(ref_low.numpy()).max()
    assert err < 1e-4, err


@pytest.mark.torch
def test_changing_prompt_values_never_recompiles(pair):
    _, ours, _ = pair
    rng = np.random.default_rng(1)
    h, w = SHAPES["landscape"]
    ours.set_image(_image((h, w), seed=1))
    pts, labels, boxes = _random_prompts(rng, h, w, 3, 2)
    ours.predict(pts, labels, box=boxes)  # K = 3 -> bucket 4
    ours.predict(pts[0], labels[0])
    before = dict(predictor.TRACE_COUNTS)
    for k in (3, 4, 3):
        pts, labels, boxes = _random_prompts(rng, h, w, k, 2)
        ours.predict(pts, labels, box=boxes)
        ours.predict(pts[0], labels[0])
    ours.set_image(_image((h, w), seed=2))  # another image of the same size
    ours.predict(pts[1], labels[1])
    assert dict(predictor.TRACE_COUNTS) == before
    ours.set_image(_image((w, h), seed=3))  # another size: only the final resize is new
    ours.predict(pts[1], labels[1])
    after = dict(predictor.TRACE_COUNTS)
    for name in ("encode", "image_cache", "fast_decode", "decode"):
        assert after.get(name) == before.get(name), name


@pytest.mark.torch
def test_input_errors(pair):
    _, ours, _ = pair
    fresh = Predictor(ours.model, ours.params)
    with pytest.raises(ValueError, match="set_image"):
        fresh.predict(point_coords=[[1, 2]], point_labels=[1])
    img = _image((40, 30), seed=0)
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_uint8(img.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="RGBA"):
        as_rgb_uint8(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        as_rgb_uint8(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        as_rgb_uint8(np.zeros((0, 8, 3), np.uint8))
    gray = img[..., 0]
    np.testing.assert_array_equal(as_rgb_uint8(gray), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(as_rgb_uint8(gray[..., None]), as_rgb_uint8(gray))
    ours.set_image(img)
    with pytest.raises(ValueError, match="NaN"):
        ours.predict([[1.0, np.nan]], [1])
    with pytest.raises(ValueError, match="one label per point"):
        ours.predict([[1, 2], [3, 4]], [1])
    with pytest.raises(ValueError, match="point_labels must be 1"):
        ours.predict([[1, 2]], [5])
    with pytest.raises(ValueError, match=r"x1 >= x0"):
        ours.predict(box=[10, 5, 4, 20])
    with pytest.raises(ValueError, match="box must be"):
        ours.predict(box=[1, 2, 3])
    with pytest.raises(ValueError, match="point_coords must be"):
        ours.predict([1, 2, 3], [1])
    with pytest.raises(ValueError, match="disagree"):
        ours.predict(np.zeros((2, 1, 2)), np.ones((2, 1)), box=np.tile([1, 1, 9, 9], (3, 1)))
    with pytest.raises(ValueError, match="mask_input"):
        ours.predict([[1, 2]], [1], mask_input=np.zeros((10, 10)))
    masks, _, _ = ours.predict([[-50.0, 400.0]], [1])  # outside the image: used as given
    assert masks.shape == (3, 40, 30)
    masks, _, _ = ours.predict()  # no prompt at all: the model's unprompted masks
    assert masks.shape == (3, 40, 30)


@pytest.mark.torch
def test_set_image_names_a_missing_file(pair, tmp_path):
    """Paths are read (tests/test_predictor_batch.py); a missing one is named, and a path
    inside an array is refused with the hint to read the file."""
    _, ours, _ = pair
    fresh = Predictor(ours.model, ours.params)
    for path in ("photo.jpg", tmp_path / "photo.jpg"):
        with pytest.raises(ValueError, match="no such image file"):
            fresh.set_image(path)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB array.*read the file first"):
        fresh.set_image(np.array("photo.jpg"))
    assert not fresh.is_image_set


# ---------------------------------------------------------------------------- generate

GEN = dict(
    pred_iou_thresh=0.0,  # random weights: low IoU predictions and soft logits
    stability_score_thresh=0.6,
    stability_score_offset=0.1,
    box_nms_thresh=1.0,  # random-weight masks all span the image: keep them all
    crop_nms_thresh=0.8,
    points_per_batch=16,
)


@pytest.mark.torch
@pytest.mark.parametrize(
    "orientation, extra",
    [
        ("portrait", dict(points_per_side=8)),
        (
            "landscape",
            dict(points_per_side=4, crop_n_layers=1, min_mask_region_area=40, crop_nms_thresh=1.0),
        ),
    ],
)
def test_generate_matches_ultralytics(pair, orientation, extra):
    up, ours, _ = pair
    h, w = SHAPES[orientation]
    image = _image((h, w), seed=11)
    kw = {**GEN, **extra}
    records = ours.generate(image, **kw)
    up.args.iou = kw["box_nms_thresh"]
    res = up(
        source=np.ascontiguousarray(image[..., ::-1]),
        crop_n_layers=kw.get("crop_n_layers", 0),
        points_stride=kw["points_per_side"],
        points_batch_size=kw["points_per_batch"],
        conf_thres=kw["pred_iou_thresh"],
        stability_score_thresh=kw["stability_score_thresh"],
        stability_score_offset=kw["stability_score_offset"],
        crop_nms_thresh=kw["crop_nms_thresh"],
        min_mask_region_area=kw.get("min_mask_region_area", 0),
    )[0]
    ref_masks = res.masks.data.numpy().astype(bool)
    ref_scores = res.boxes.conf.numpy()
    assert len(records) == len(ref_masks) > 0
    worst = 1.0
    for r in records:  # match by predicted IoU, then compare the masks
        same = np.nonzero(np.abs(ref_scores - r["predicted_iou"]) < 1e-4)[0]
        worst = min(worst, max((_iou(r["segmentation"], ref_masks[j]) for j in same), default=0))
        seg = r["segmentation"]
        assert seg.shape == (h, w) and seg.dtype == bool and r["area"] == int(seg.sum())
        x, y, bw, bh = r["bbox"]
        ys, xs = np.nonzero(seg)
        assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert len(r["point_coords"]) == 1 and len(r["crop_box"]) == 4
        assert r["stability_score"] > kw["stability_score_thresh"]
    print(f"generate {orientation}: {len(records)} masks, worst matched IoU {worst:.6f}")
    assert worst >= 0.95


@pytest.mark.torch
def test_mask_generator_equals_predictor_generate(pair):
    """`MaskGenerator(model, params, **options).generate` is what `Predictor.generate` runs
    (same shapes and options as the portrait case above, so nothing new compiles)."""
    _, ours, _ = pair
    image = _image(SHAPES["portrait"], seed=12)
    kw = {**GEN, "points_per_side": 4}
    want = ours.generate(image, **kw)
    got = MaskGenerator(ours.model, ours.params, **kw).generate(image)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b
    with pytest.raises(ValueError, match="points_per_batch"):
        MaskGenerator(ours.model, ours.params, points_per_batch=0)


# ---------------------------------------------------------------------------- command line


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.torch
def test_cli_segment(pair, tmp_path, capsys):
    from PIL import Image

    _, ours, _ = pair
    ckpt = tmp_path / "tiny.safetensors"
    sam_jax.save(ckpt, ours.model, ours.params)
    image = _image((90, 140), seed=5)
    Image.fromarray(image).save(tmp_path / "im.png")
    out = tmp_path / "out" / "mask.png"
    args = ["segment", str(tmp_path / "im.png"), "--checkpoint", str(ckpt), "-q"]
    assert cli_main([*args, "--point", "40,50", "--point", "100,20,0", "--out", str(out)]) == 0
    mask = _png(out)
    assert mask.shape == (90, 140) and set(np.unique(mask)) <= {0, 255}
    assert _png(tmp_path / "out" / "mask_overlay.png").shape == (90, 140, 3)
    ours.set_image(image)
    want, _, _ = ours.predict([[40, 50], [100, 20]], [1, 0], multimask_output=False)
    np.testing.assert_array_equal(mask == 255, want[0])

    assert cli_main([*args, "--box", "10,10,80,60", "--out", str(tmp_path / "b.png")]) == 0
    everything = [
        *args,
        "--everything",
        "--points-per-side",
        "4",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--out",
        str(tmp_path / "all.png"),
    ]
    assert cli_main(everything) == 0
    labels = _png(tmp_path / "all.png")
    assert labels.shape == (90, 140) and labels.max() >= 1
    assert (tmp_path / "all_overlay.png").is_file()

    # Errors tell the user what to fix.
    capsys.readouterr()
    cases = [
        (
            ["segment", str(tmp_path / "nope.png"), "--checkpoint", str(ckpt), "--point", "1,2"],
            "no such image",
        ),
        (args, "nothing to segment"),
        ([*args, "--everything", "--point", "1,2"], "--everything"),
        (
            [
                "segment",
                str(tmp_path / "im.png"),
                "--checkpoint",
                str(tmp_path / "x.pt"),
                "--point",
                "1,2",
            ],
            "no such checkpoint",
        ),
    ]
    for argv, message in cases:
        out_args = [] if "--out" in argv else ["--out", str(tmp_path / "e.png")]
        assert cli_main([*argv, *out_args]) == 1
        assert message in capsys.readouterr().err
    assert cli_main([*args, "--point", "1,2", "--out", str(tmp_path / "e.jpg")]) == 1
    assert "--out must be a .png" in capsys.readouterr().err
    for bad, message in [
        (["--point", "1"], "X,Y"),
        (["--point", "1,2,7"], "label"),
        (["--box", "9,9,1,1"], "X1 >= X0"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli_main([*args, *bad, "--out", str(tmp_path / "e.png")])
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.torch
def test_cli_segment_torch_checkpoint(tmp_path):
    """A .pt file (MobileSAM, random weights) straight from ultralytics, run at 256 px."""
    from PIL import Image
    from ultralytics.models.sam.build import build_mobile_sam

    torch.manual_seed(0)
    torch.save(build_mobile_sam().state_dict(), tmp_path / "mobile.pt")
    Image.fromarray(_image((64, 48), seed=2)).save(tmp_path / "im.jpg")
    out = tmp_path / "m.png"
    argv = ["segment", str(tmp_path / "im.jpg"), "--checkpoint", str(tmp_path / "mobile.pt")]
    argv += ["--image-size", "256", "--point", "20,30", "--out", str(out), "-q"]
    assert cli_main(argv) == 0
    assert _png(out).shape == (64, 48) and (tmp_path / "m_overlay.png").is_file()


@pytest.mark.torch
def test_sam2_predict_matches_ultralytics():
    """The same predictor drives SAM 2 (dict features, three outputs): SAM2Predictor parity."""
    from ultralytics.models.sam.predict import SAM2Predictor

    from sam_jax.config import Sam2Config
    from tests.reference_sam2 import build_reference_sam2
    from tests.tiny_configs import SMALL_HIERA

    s = 128
    cfg = Sam2Config(encoder=SMALL_HIERA, image_size=s)
    ref = randomize_(build_reference_sam2(cfg), seed=3)
    with torch.no_grad():  # random weights: make "object present" sure
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 10.0
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    ours = Predictor(model, state_dict_to_variables(sd, variable_shapes(model)))
    up = SAM2Predictor(overrides=dict(imgsz=s, device="cpu", conf=0.0, verbose=False, save=False))
    up.setup_model(ref, verbose=False)
    rng = np.random.default_rng(0)
    for h, w in [(150, 100), (90, 170)]:
        image = _image((h, w), seed=h)
        _set_both(up, ours, image)
        pts, labels, boxes = _random_prompts(rng, h, w, 2, 2)
        for kw, ref_kw in [
            (dict(point_coords=pts, point_labels=labels), dict(points=pts, labels=labels)),
            (dict(box=boxes), dict(bboxes=boxes)),
            (
                dict(point_coords=pts, point_labels=labels, box=boxes),
                dict(points=pts, labels=labels, bboxes=boxes),
            ),
        ]:
            ref_masks, ref_boxes = up.inference_features(
                up.features, (h, w), (s, s), multimask_output=True, **ref_kw
            )
            masks, scores, _ = ours.predict(multimask_output=True, **kw)
            ref_masks = ref_masks.numpy().reshape(masks.shape)
            ious = [
                _iou(a, b)
                for a, b in zip(masks.reshape(-1, h, w), ref_masks.reshape(-1, h, w), strict=True)
            ]
            assert min(ious) >= 0.99
            np.testing.assert_allclose(
                scores, ref_boxes[:, 4].numpy().reshape(scores.shape), atol=1e-3
            )
    # segment everything through SAM 2 as well
    image = _image((150, 100), seed=4)
    gen = dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.5,
        stability_score_offset=0.1,
    )
    records = ours.generate(image, points_per_batch=16, box_nms_thresh=1.0, **gen)
    up.args.iou = 1.0
    res = up(
        source=np.ascontiguousarray(image[..., ::-1]),
        points_stride=6,
        points_batch_size=16,
        conf_thres=0.0,
        stability_score_thresh=0.5,
        stability_score_offset=0.1,
    )[0]
    ref_masks, ref_scores = res.masks.data.numpy().astype(bool), res.boxes.conf.numpy()
    assert len(records) == len(ref_masks) > 0
    for r in records:
        same = np.nonzero(np.abs(ref_scores - r["predicted_iou"]) < 1e-4)[0]
        assert max((_iou(r["segmentation"], ref_masks[j]) for j in same), default=0) >= 0.95
