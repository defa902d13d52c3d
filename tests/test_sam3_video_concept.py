"""Concept tracking in video (ConceptVideoPredictor) against ultralytics'
SAM3VideoSemanticPredictor with its default settings, on a reduced random-weight SAM 3:
the concept model of tests/test_sam3_semantic.py and the tracker of
tests/test_sam3_tracker.py, sharing one trunk (the reference detector's backbone, with
both necks, serves the reference tracker, as ultralytics wires them).

Random weights give near-identical queries; a few weights are set so that detections
vary between queries and frames: the mask embedding and the scoring projection are
centred on the mean query and amplified, and the detection logits shifted.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import numpy as np
import pytest
import torch

from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.predictors import concept_video_compiled as compiled
from sam_jax.predictors.concept_video import ConceptVideoPredictor
from sam_jax.predictors.concept_video_assoc import MaskletBook
from sam_jax.tracking import bucket
from tests.reference import randomize_, rel_err, to_nchw
from tests.test_sam3_semantic import SMALL as CONCEPT
from tests.test_sam3_tracker import SMALL as TRACKER
from tests.test_video import _video

CAPTION = "a red disc"
LOGIT_TOL = 1e-3
# Tracked objects follow the reference more closely; float32 memories instead of its
# half-precision ones would give about 3.5e-5 here.
TRACKED_TOL = 2e-5
PERTURBED_TOL = 1e-2  # objects whose conditioning masks differ by a flipped pixel
PIXEL_EPS = 1e-2
SCORE_EPS = 1e-3


@dataclasses.dataclass
class Setup:
    det_ref: torch.nn.Module  # ultralytics SAM3SemanticModel (both necks)
    trk_ref: torch.nn.Module  # ultralytics SAM3Model without its image encoder
    concept: object
    concept_params: dict
    tracker: object
    tracker_params: dict


def _spread_queries(det: torch.nn.Module, images: list, gain: float, shift: float) -> None:
    """Make the detector's queries differ: its mask embedding and its scorer's query
    projection see only how a query departs from the mean query of its frame (the mean
    over `images` removed, and the directions in which the frames' means differ),
    amplified by `gain`; every detection logit then moves by `shift`."""
    from ultralytics.models.sam.sam3.geometry_encoders import Prompt

    seen = {"queries": []}
    hooks = [
        det.segmentation_head.mask_predictor.register_forward_hook(
            lambda m, i, o: seen["queries"].append(i[0].reshape(-1, i[0].shape[-1]))
        ),
        det.dot_prod_scoring.prompt_proj.register_forward_hook(
            lambda m, i, o: seen.update(prompt=o.reshape(-1))
        ),
    ]
    empty = Prompt(box_embeddings=torch.zeros(0, 1, 4), box_mask=torch.zeros(1, 0, dtype=bool))

    def run(image):  # as the video predictor detects: with an empty box prompt
        det.forward_grounding(det.backbone.forward_image(to_nchw(image)), torch.arange(1), empty)

    with torch.no_grad():
        det.set_classes([CAPTION])
        for image in images:
            run(image)
        means = torch.stack([q.mean(0) for q in seen["queries"]])
        mean = means.mean(0)
        u = torch.linalg.svd(means - mean, full_matrices=False)[2][: len(images) - 1]
        keep = torch.eye(len(mean)) - u.T @ u
        for layer in (det.segmentation_head.mask_predictor.mask_embed.layers[0],
                      det.dot_prod_scoring.hs_proj):  # fmt: skip
            layer.weight.copy_(gain * layer.weight @ keep)
            layer.bias.copy_(-layer.weight @ mean)
        run(images[0])
        p = seen["prompt"]
        det.dot_prod_scoring.hs_proj.bias += shift * p / (p @ p) / det.dot_prod_scoring.scale
    for h in hooks:
        h.remove()


def _normalise(frame: np.ndarray) -> np.ndarray:
    from sam_jax.transforms import resize_bilinear_u8

    s = CONCEPT.image_size
    return ((resize_bilinear_u8(frame, s, s).astype(np.float32) - 127.5) / 127.5)[None]


@functools.cache
def _setup(gain: float = 30.0, shift: float = 0.0, score_shift: float = 1.0) -> Setup:
    from tests.reference_sam3 import build_reference_sam3_semantic, build_reference_sam3_tracker
    from tests.test_sam3_text import _PaddedSimpleTokenizer

    enc = dataclasses.replace(CONCEPT.encoder, add_sam2_neck=True)
    det = build_reference_sam3_semantic(
        dataclasses.replace(CONCEPT, encoder=enc), _PaddedSimpleTokenizer()
    )
    det = randomize_(det, seed=6)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        text = det.backbone.language_backbone.encoder
        text.attn_mask.copy_(text.build_causal_mask())  # a constant, not a weight
        for name, p in det.named_parameters():  # as tests/test_sam3_semantic.py
            if name.endswith("in_proj_weight"):
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    _spread_queries(det, [_normalise(f) for f in _frames()], gain, shift)
    trk = randomize_(build_reference_sam3_tracker(TRACKER), seed=4)
    with torch.no_grad():
        trk.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += score_shift
    trk.image_encoder = None  # the detector's backbone serves the tracker

    det_sd = {k: v.detach().numpy() for k, v in det.state_dict().items()}
    concept = build_from_config(CONCEPT)
    concept_params = state_dict_to_variables(
        {k: v for k, v in det_sd.items() if ".sam2_convs." not in k}, variable_shapes(concept)
    )
    trk_sd = {k: v.detach().numpy() for k, v in trk.state_dict().items()}
    prefix = "backbone.vision_backbone."
    trk_sd.update(
        {
            "image_encoder.vision_backbone." + k[len(prefix) :]: v
            for k, v in det_sd.items()
            if k.startswith(prefix) and ".convs." not in k
        }
    )
    tracker = build_from_config(TRACKER)
    tracker_params = state_dict_to_variables(trk_sd, variable_shapes(tracker))
    return Setup(det, trk, concept, jax.device_put(concept_params), tracker,
                 jax.device_put(tracker_params))  # fmt: skip


@functools.cache
def _frames() -> np.ndarray:
    return _video(6, 90, 120, seed=3)


def _reference_session(
    setup: Setup, frames: np.ndarray, prompt: dict, **options
) -> list[tuple[dict, object]]:
    """Drive SAM3VideoSemanticPredictor over in-memory frames as its `inference` would:
    `prompt` (text / box / box_labels) on frame 0, then one `_run_single_frame_inference`
    per frame, each followed by its `postprocess`. Returns (raw output, Results) per frame."""
    from ultralytics.models.sam.predict import SAM3SemanticPredictor, SAM3VideoSemanticPredictor

    s, g = CONCEPT.image_size, CONCEPT.embed_size
    opts = dict(conf=0.25, imgsz=s, save=False, verbose=False)
    p = SAM3VideoSemanticPredictor(overrides=opts, **options)
    SAM3SemanticPredictor.setup_model(p, model=setup.det_ref, verbose=False)
    p.tracker.setup_model(model=setup.trk_ref, verbose=False)
    p.imgsz = p.tracker.imgsz = [s, s]
    p.tracker.model.set_imgsz([s, s])
    p.tracker._bb_feat_sizes = [[4 * g] * 2, [2 * g] * 2, [g] * 2]
    p.interpol_size = p.tracker.model.memory_encoder.mask_downsampler.interpol_size
    n = len(frames)
    p.inference_state = {
        "num_frames": n,
        "tracker_inference_states": [],
        "tracker_metadata": {},
        "text_prompt": None,
        "per_frame_geometric_prompt": [None] * n,
    }
    outs = []
    for f, rgb in enumerate(frames):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        p.batch = (["frame"], [bgr], [""])
        im = p.preprocess([bgr])
        p.inference_state["im"] = im
        with torch.no_grad():
            if f == 0:
                box, labels = prompt.get("box"), prompt.get("box_labels")
                raw = p.add_prompt(0, text=prompt.get("text"), bboxes=box, labels=labels)[1]
            else:
                raw = p._run_single_frame_inference(f)
            outs.append((raw, p.postprocess(raw, im, [bgr])[0]))
    return outs


def _our_session(setup: Setup, frames: np.ndarray, prompt: dict, **options) -> list[tuple]:
    """(ConceptFrame, FrameDetails) per frame, `prompt` on frame 0."""
    vp = ConceptVideoPredictor(
        setup.concept, setup.concept_params, setup.tracker, setup.tracker_params, **options
    )
    state = vp.init_state(frames)
    vp.add_prompt(state, 0, **prompt)
    return [(out, state.details) for out in vp.propagate_in_video(state)]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _upsample(low: torch.Tensor, size) -> np.ndarray:
    """(m, m) logits -> (h, w), torch bilinear (as the reference upsamples)."""
    return torch.nn.functional.interpolate(low[None, None].float(), size, mode="bilinear")[
        0, 0
    ].numpy()


def _prompts_differ(ours: np.ndarray, theirs: torch.Tensor) -> bool:
    """Whether a new object's conditioning mask (its detection logits (m, m) upsampled to
    16g and thresholded at 0) differs between the two sides: a pixel at rounding distance
    of 0 flipped. Its memory, and its later logits, are then not comparable at LOGIT_TOL."""
    size = (16 * CONCEPT.embed_size,) * 2
    mine = _upsample(torch.from_numpy(np.array(ours)), size) > 0
    return bool((mine != (_upsample(theirs, size) > 0)).any())


def _unexplained(ours, theirs, i, raw, shown, perturbed) -> int:
    """Pixels where object i's output masks differ for no float-rounding reason: not near
    its logit's zero (|logit| >= PIXEL_EPS) and not also claimed by another shown object
    with a near-equal tracker score or a perturbed memory (the non-overlap tie-break)."""
    bad = ours != theirs
    if not bad.any():
        return 0
    logits = {j: _upsample(raw["obj_id_to_mask"][j][0], ours.shape) for j in shown}
    score = raw["obj_id_to_tracker_score"]
    near = np.abs(logits[i]) < PIXEL_EPS
    for j in shown:
        tie = abs(score[i] - score[j]) < SCORE_EPS or {i, j} & perturbed
        if j != i and tie:
            near |= logits[j] > -PIXEL_EPS
    return int((bad & ~near).sum())


def _compare(setup: Setup, prompt: dict, **options) -> dict:
    """Run both predictors; per frame the candidate objects, the shown objects, their
    scores and unconfirmed / removed ids must agree. Low-res logits must agree within
    LOGIT_TOL, masks with IoU >= 0.99, where comparable: an object whose conditioning mask
    had a pixel at rounding distance of the threshold has perturbed memories (its logits
    are held to PERTURBED_TOL), and mask pixels may differ only where rounding decides
    (a logit near 0, or a non-overlap tie). Returns the per-frame objects and figures."""
    frames = _frames()
    theirs = _reference_session(setup, frames, prompt, **options)
    ours = _our_session(setup, frames, prompt, **options)
    assert len(ours) == len(theirs) == len(frames)
    worst = {"detection_rel_err": 0.0, "tracked_rel_err": 0.0, "perturbed_rel_err": 0.0,
             "mask_iou": 1.0, "explained_pixels": 0, "perturbed": set()}  # fmt: skip
    removed_before, live_before, seen = set(), set(), []
    h, w = frames.shape[1:3]
    for f, ((out, det), (raw, res)) in enumerate(zip(ours, theirs, strict=True)):
        assert out.frame_idx == f
        cands = sorted(int(i) for i in raw["obj_id_to_mask"])
        assert det.obj_ids.tolist() == cands, f
        for k, i in enumerate(cands):  # objects born here output their detection logits
            if i not in live_before and _prompts_differ(
                det.low_res[k], raw["obj_id_to_mask"][i][0]
            ):
                worst["perturbed"].add(i)
        for i, low in zip(cands, det.low_res, strict=True):
            key = "detection_rel_err" if i not in live_before else "tracked_rel_err"
            key = "perturbed_rel_err" if i in worst["perturbed"] else key
            worst[key] = max(worst[key], rel_err(low, raw["obj_id_to_mask"][i][0].numpy()))
        removed = {int(i) for i in raw["removed_obj_ids"]}
        assert set(det.removed_ids.tolist()) == removed - removed_before, f
        removed_before, live_before = removed, set(cands) - removed
        assert det.unconfirmed_ids.tolist() == [int(i) for i in raw["unconfirmed_obj_ids"]], f

        boxes = res.boxes.data.numpy() if res.boxes is not None else np.zeros((0, 7))
        shown = boxes[:, 4].astype(int).tolist()
        assert out.obj_ids.tolist() == shown, f
        np.testing.assert_allclose(out.scores, boxes[:, 5], rtol=1e-4)
        assert out.masks.shape == (len(shown), h, w) and out.masks.dtype == bool
        ref_masks = res.masks.data.numpy() > 0 if shown else np.zeros((0, h, w), bool)
        for i, a, b in zip(shown, out.masks, ref_masks, strict=True):
            iou = _mask_iou(a, b)
            worst["mask_iou"] = min(worst["mask_iou"], iou)
            if iou < 0.99:
                assert _unexplained(a, b, i, raw, shown, worst["perturbed"]) == 0, (f, i, iou)
                worst["explained_pixels"] += int((a != b).sum())
        seen.append(shown)
    print(f"\n{prompt} {options}: {worst}; objects per frame {seen}")
    assert worst["detection_rel_err"] <= LOGIT_TOL, worst
    assert worst["tracked_rel_err"] <= TRACKED_TOL, worst
    assert worst["perturbed_rel_err"] <= PERTURBED_TOL, worst
    return {"objects": seen, **worst}


@pytest.mark.torch
def test_caption_matches_reference():
    """A caption with the reference's defaults: objects detected on frame 0, new ones on
    later frames, detections matched to masklets, masklets confirmed after 3 frames. The
    tracker compiles once per object bucket, whatever the number of objects."""
    before = collections.Counter(compiled.TRACE_COUNTS)
    got = _compare(_setup(), {"text": CAPTION})
    born = [
        len(set(b) - set(a))
        for a, b in zip([[]] + got["objects"][:-1], got["objects"], strict=True)
    ]
    assert born[0] > 0 and sum(n > 0 for n in born[1:]) >= 2, born
    traces = compiled.TRACE_COUNTS - before
    buckets = {bucket(len(o)) for o in got["objects"][:-1]}  # tracked on the next frame
    assert traces["track"] <= len(buckets) and traces["perceive"] <= 1, (traces, buckets)


@pytest.mark.torch
def test_exemplars_and_removal_match_reference():
    """Exemplar boxes without a caption (positive and negative): only frame 0 detects;
    the object limit keeps the best-scoring detections; masklets unmatched on later frames
    lose their keep-alive (started at 2 here, 10 by default) and are removed on frame 2."""
    prompt = {"box": [[10, 20, 50, 60], [70, 40, 110, 85]], "box_labels": [1, 0]}
    got = _compare(_setup(), prompt, max_num_objects=5, init_trk_keep_alive=2)
    assert [len(o) for o in got["objects"]] == [5, 5, 0, 0, 0, 0]


@pytest.mark.torch
def test_removing_one_object_leaves_the_others(monkeypatch):
    """Objects are tracked independently: removing one mid-video (its bank row dropped, the
    bank compacted) leaves every other object's logits as they were."""
    setup = _setup()
    plain = _our_session(setup, _frames(), {"text": CAPTION})
    update = MaskletBook.update

    def remove_one_more(self, frame_idx, assoc, new_ids):
        gone = update(self, frame_idx, assoc, new_ids)
        if frame_idx == 2:
            gone.add(1)
            self.removed.add(1)
        return gone

    monkeypatch.setattr(MaskletBook, "update", remove_one_more)
    forced = _our_session(setup, _frames(), {"text": CAPTION})
    for f, ((_, a), (_, b)) in enumerate(zip(plain, forced, strict=True)):
        expected = a.obj_ids[a.obj_ids != 1] if f > 2 else a.obj_ids
        assert b.obj_ids.tolist() == expected.tolist(), f
        assert b.removed_ids.tolist() == ([1] if f == 2 else []), f
        rows = np.isin(a.obj_ids, b.obj_ids)
        assert rel_err(b.low_res, np.asarray(a.low_res)[rows]) < 1e-5, f


def test_rejects_bad_input():
    concept, tracker = build_from_config(CONCEPT), build_from_config(TRACKER)
    fake = {
        "params": {"backbone": {"vision_backbone": {}}, "image_encoder": {"vision_backbone": {}}}
    }
    with pytest.raises(ValueError, match="concept model"):
        ConceptVideoPredictor(tracker, fake, tracker, fake)
    other = build_from_config(dataclasses.replace(TRACKER, image_size=140))
    with pytest.raises(ValueError, match="share one vision trunk"):
        ConceptVideoPredictor(concept, fake, other, fake)
    with pytest.raises(ValueError, match="unknown option"):
        ConceptVideoPredictor(concept, fake, tracker, fake, keep_alive=3)
    with pytest.raises(ValueError, match="must be <= hotstart_delay"):
        ConceptVideoPredictor(concept, fake, tracker, fake, hotstart_delay=2)
    vp = ConceptVideoPredictor(concept, fake, tracker, fake)
    state = vp.init_state(np.zeros((3, 20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="no prompt"):
        next(vp.propagate_in_video(state))
    for kwargs, match in [
        ({}, "give text"),
        ({"text": []}, "text must be"),
        ({"text": ["a", "b"], "box": [1, 2, 3, 4]}, "one caption at most"),
        ({"box": [1, 2, 3]}, "box must be"),
        ({"box": [1, 2, 3, 4], "box_labels": [2]}, "box_labels must be"),
        ({"text": "dog", "box_labels": [1]}, "box_labels given without box"),
        ({"text": "dog", "frame_idx": 3}, "out of range"),
    ]:
        with pytest.raises(ValueError, match=match):
            vp.add_prompt(state, **kwargs)
    state.next_frame = 2  # as after tracking frames 0 and 1
    with pytest.raises(ValueError, match="next frame to process"):
        vp.add_prompt(state, frame_idx=1, text="dog")
