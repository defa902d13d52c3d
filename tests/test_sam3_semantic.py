"""SAM 3's concept model (`sam3_semantic`) against ultralytics' SAM3SemanticModel, every
parameter and buffer random: text prompts (several captions at once, as the reference
batches them) and exemplar boxes (positive and negative, with and without a caption), from
the image and the caption strings to scores, boxes and masks. A reduced model (ViT 2 x 64
at 112 px, text 2 x 64, 2 + 2 detector layers, 12 queries) covers the math; the full-size
model's names and shapes are checked against the reference's (built on torch's meta
device). The detector parts have their own tests (test_sam3_encoder / _decoder / _seg_head).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import VARIANTS, Sam3SemanticConfig
from sam_jax.config_json import config_from_json, config_to_json
from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.sam3_config import Sam3TextConfig
from sam_jax.text import CLIPTokenizer
from tests.reference import randomize_, rel_err, to_nchw
from tests.tiny_configs import SAM3_SEMANTIC_SMALL

TOL = 1e-4
SMALL = SAM3_SEMANTIC_SMALL
CAPTIONS = ["a red car", "dog", "wow!😀 a cat"]
KEYS = ("pred_logits", "presence_logit", "pred_boxes", "pred_boxes_xyxy", "pred_masks",
        "semantic_seg")  # fmt: skip


@dataclasses.dataclass
class Setup:
    ref: torch.nn.Module
    model: object
    params: dict
    image: np.ndarray  # (1, S, S, 3) normalised


@functools.cache
def _setup() -> Setup:
    from tests.reference_sam3 import build_reference_sam3_semantic
    from tests.test_sam3_text import _PaddedSimpleTokenizer

    ref = randomize_(build_reference_sam3_semantic(SMALL, _PaddedSimpleTokenizer()), seed=6)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        text = ref.backbone.language_backbone.encoder
        text.attn_mask.copy_(text.build_causal_mask())  # a constant, not a weight
        # randomize_ leaves packed q/k/v weights at 0.2 std, where stacked layers amplify
        # float32 rounding past any tolerance (torch float32 vs float64 included).
        for name, p in ref.named_parameters():
            if name.endswith("in_proj_weight"):
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    model = build_from_config(SMALL)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    s = SMALL.image_size
    image = np.random.default_rng(0).uniform(-1, 1, (1, s, s, 3)).astype(np.float32)
    return Setup(ref, model, params, image)


@functools.partial(jax.jit, static_argnums=0)
def _ours(model, params, image, ids, boxes, labels):
    feats = model.apply(params, image, method="encode_image")
    text = model.apply(params, ids, method="encode_text")
    return model.apply(params, feats, text, boxes, labels, method="detect")


def _theirs(setup: Setup, captions, boxes=None, labels=None) -> dict:
    from ultralytics.models.sam.sam3.geometry_encoders import Prompt

    ref = setup.ref
    prompt = None
    if boxes is not None:  # (T, N, 4) -> the reference's sequence-first (N, T, 4)
        prompt = Prompt(
            box_embeddings=torch.from_numpy(boxes.transpose(1, 0, 2).copy()),
            box_labels=torch.from_numpy(labels.T.astype(np.int64).copy()),
        )
    with torch.no_grad():
        ref.set_classes(captions)
        feats = ref.backbone.forward_image(to_nchw(setup.image))
        out = ref.forward_grounding(feats, torch.arange(len(captions)), prompt)
    return {
        "pred_logits": out["pred_logits"][..., 0].numpy(),
        "presence_logit": out["presence_logit_dec"][..., 0].numpy(),
        "pred_boxes": out["pred_boxes"].numpy(),
        "pred_boxes_xyxy": out["pred_boxes_xyxy"].numpy(),
        "pred_masks": out["pred_masks"].numpy(),
        "semantic_seg": out["semantic_seg"][:, 0].numpy(),
    }


def _compare(captions, boxes=None, labels=None) -> dict[str, float]:
    setup = _setup()
    ids = CLIPTokenizer()(captions, SMALL.text.context_length)
    ours = _ours(setup.model, setup.params, setup.image, jnp.asarray(ids), boxes, labels)
    theirs = _theirs(setup, captions, boxes, labels)
    errs = {}
    g, t = SMALL.embed_size, len(captions)
    assert ours["pred_masks"].shape == (t, SMALL.detector.num_queries, 4 * g, 4 * g)
    for key in KEYS:
        assert ours[key].shape == theirs[key].shape, (key, ours[key].shape, theirs[key].shape)
        errs[key] = rel_err(ours[key], theirs[key])
    print(f"\n{captions}, boxes {None if boxes is None else boxes.shape}: {errs}")
    assert max(errs.values()) < TOL, errs
    return errs


@pytest.mark.torch
def test_text_prompts_match_reference():
    """Three captions in one call (one image's features broadcast to the prompts)."""
    errs = _compare(CAPTIONS)
    assert set(errs) == set(KEYS)


@pytest.mark.torch
def test_exemplar_boxes_match_reference():
    """A caption with a positive and a negative exemplar box; boxes alone use the caption
    "visual", as ultralytics' predictor does."""
    boxes = np.array([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.25, 0.2]]], np.float32)
    labels = np.array([[1, 0]], np.int32)
    _compare(["a red car"], boxes, labels)
    _compare(["visual"], boxes[:, :1], labels[:, :1])


def test_config_round_trip_and_errors():
    cfg = VARIANTS["sam3_semantic"]
    assert (cfg.embed_size, cfg.mask_input_size) == (72, 288)
    assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ValueError, match="widths must agree"):
        Sam3SemanticConfig(text=Sam3TextConfig(d_model=128))
    model = build_from_config(SMALL)
    with pytest.raises(ValueError, match="images must be"):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), method="encode_image")
        )


@pytest.mark.torch
def test_full_size_names_and_shapes(monkeypatch):
    """The full concept model's variables are exactly the reference's (as
    build_sam3_image_model builds it), the tracker's neck aside."""
    import ultralytics.models.sam.build_sam3 as build

    monkeypatch.setattr(build, "_load_checkpoint", lambda model, path, **kw: model)
    for name in ("trunc_normal_", "normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_",
                 "constant_", "zeros_", "ones_"):  # fmt: skip
        monkeypatch.setattr(torch.nn.init, name, lambda t, *a, **k: t)  # shapes only: no init
    ref = build.build_sam3_image_model("unused.pt")
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if ".sam2_convs." not in k}
    from flax.traverse_util import flatten_dict

    from sam_jax.convert.keymap import _torch_shape, torch_key

    flat = flatten_dict(dict(variable_shapes(build_from_config(VARIANTS["sam3_semantic"]))))
    ours = {torch_key(p[1:]): _torch_shape(p[1:], v.shape) for p, v in flat.items()}
    assert ours.keys() == theirs.keys(), (ours.keys() - theirs.keys(), theirs.keys() - ours.keys())
    assert ours == theirs


@pytest.mark.torch
def test_load_combined_checkpoint_and_export(tmp_path, monkeypatch):
    """variant="sam3_semantic" reads the detector out of a combined file (the tracker's
    keys and neck left alone), strictly; export writes the `detector.*` names back."""
    import sam_jax
    from sam_jax.convert.export import export_torch

    monkeypatch.setitem(VARIANTS, "sam3_semantic_small", SMALL)
    setup = _setup()
    sd = {"detector." + k: v.clone() for k, v in setup.ref.state_dict().items()}
    sd["detector.backbone.vision_backbone.sam2_convs.0.conv_1x1.weight"] = torch.zeros(2, 2)
    sd["tracker.sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    path = tmp_path / "sam3.pt"
    torch.save({"model": sd}, path)
    model, variables = sam_jax.load(path, variant="sam3_semantic_small")
    same = jax.tree_util.tree_map(np.array_equal, variables, setup.params)
    assert all(jax.tree_util.tree_leaves(same))
    out = tmp_path / "exported.pt"
    export_torch(out, model, variables)
    written = torch.load(out)["model"]
    assert all(k.startswith("detector.") for k in written)
    _, again = sam_jax.load(out, variant="sam3_semantic_small")
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, again, variables)))
    del sd["detector.transformer.decoder.query_embed.weight"]
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match="query_embed"):
        sam_jax.load(path, variant="sam3_semantic_small")


def _reference_predictor(setup: Setup, conf: float):
    from ultralytics.models.sam.predict import SAM3SemanticPredictor

    s = SMALL.image_size
    opts = dict(conf=conf, task="segment", mode="predict", imgsz=s, save=False, verbose=False)
    p = SAM3SemanticPredictor(overrides=opts)
    p.setup_model(model=setup.ref, verbose=False)
    p.imgsz = [s, s]
    return p


@pytest.mark.torch
@pytest.mark.parametrize("prompt", ["captions", "exemplars"])
def test_predictor_matches_ultralytics_predictor(prompt: str):
    """Predictor(model) on the concept model against SAM3SemanticPredictor on the same
    image: the kept detections (score > conf, NMS 0.7 per caption), their order, boxes in
    pixels, scores and masks at the original size. Random weights score exemplars lower:
    their threshold is lowered to keep some."""
    from sam_jax.predictors.image import Predictor

    setup = _setup()
    conf = 0.25 if prompt == "captions" else 0.1
    ref = _reference_predictor(setup, conf)
    image = np.random.default_rng(3).integers(0, 255, (90, 140, 3), dtype=np.uint8)
    kwargs = {"text": ["a red car", "dog"]}
    if prompt == "exemplars":
        kwargs = {"box": [[20, 10, 70, 60], [80, 30, 130, 85]], "box_labels": [1, 0]}
    with torch.no_grad():
        feats = ref.get_im_features(ref.preprocess([image[..., ::-1].copy()]))  # BGR in
        ref_kwargs = {"bboxes": kwargs.get("box"), "labels": kwargs.get("box_labels")}
        masks, boxes = ref.inference_features(
            feats, image.shape, text=kwargs.get("text"), **ref_kwargs
        )
    p = Predictor(setup.model, setup.params)
    p.set_image(image)
    out = p.predict(**kwargs, conf=None if prompt == "captions" else conf)
    boxes = boxes.numpy()
    assert len(out.scores) == len(boxes) > 0
    np.testing.assert_allclose(out.scores, boxes[:, 4], rtol=1e-4)
    np.testing.assert_array_equal(out.classes, boxes[:, 5].astype(int))
    assert rel_err(out.boxes, boxes[:, :4]) < TOL
    assert out.masks.shape == (len(boxes), 90, 140)
    assert np.mean(out.masks != masks.numpy()) < 1e-3  # logits at exactly 0 may flip
    assert out.names == (kwargs.get("text") or ["visual"])


def test_predictor_rejects_bad_prompts():
    from sam_jax.predictors.concept import ConceptPredictor

    model = build_from_config(SMALL)
    p = ConceptPredictor(model, params=None)
    with pytest.raises(ValueError, match="no image set"):
        p.predict(text="dog")
    p._features, p._shape = {}, (10, 10)  # prompt checks come before the model runs
    for kwargs, match in [
        ({}, "give text"),
        ({"text": []}, "text must be"),
        ({"box": [1, 2, 3]}, "box must be"),
        ({"box": [1, 2, 3, 4], "box_labels": [2]}, "box_labels must be"),
        ({"text": "dog", "box_labels": [1]}, "box_labels given without box"),
    ]:
        with pytest.raises(ValueError, match=match):
            p.predict(**kwargs)
    with pytest.raises(ValueError, match="concept model"):
        ConceptPredictor(build_from_config(VARIANTS["sam2_tiny_shapes"]), None)
