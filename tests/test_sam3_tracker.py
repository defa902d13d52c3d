"""SAM 3's interactive tracker (`sam3`: SAM 2.1's heads and memory on SAM 3's ViT) against
ultralytics' SAM3Model, every parameter and buffer random.

A reduced tracker (ViT 2 x 64 at 112 px, a 8 x 8 grid) covers the encoder's tracker neck, the
SAM heads for every prompt kind and a whole video session (two objects prompted on
different frames, propagation, a correction, reverse tracking; and one with mask prompts, whose
outputs are S/4 wide, not 4g) through VideoPredictor against the reference's track_step. The
full-size tracker's shapes and a full-size forward run in tests/test_sam3_full.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import VARIANTS
from sam_jax.config_json import config_from_json, config_to_json
from sam_jax.convert.keymap import _torch_shape, state_dict_to_variables, torch_key
from sam_jax.convert.sam3_keys import tracker_to_sam3_keys
from sam_jax.predictors.resample import resample, unletterbox_taps
from tests.reference import nchw, randomize_, rel_err, to_nchw
from tests.reference_sam3 import build_reference_sam3_tracker, tracker_state_dict
from tests.test_video import Session, Setup, _video
from tests.tiny_configs import SAM3_TRACKER_SMALL

FEATURE_TOL = 1e-4
LOGIT_TOL = 1e-3
HEADS = ("low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks",
         "high_res_masks", "obj_ptr", "object_score_logits")  # fmt: skip

SMALL = SAM3_TRACKER_SMALL


@functools.cache
def _setup(score_shift: float = 1.0) -> Setup:
    ref = randomize_(build_reference_sam3_tracker(SMALL), seed=4)
    with torch.no_grad():  # random weights give scores near 0: make "object present" sure
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += score_shift
    model = build_from_config(SMALL)
    params = jax.device_put(
        state_dict_to_variables(tracker_state_dict(ref), variable_shapes(model))
    )
    return Setup(SMALL, ref, model, params)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(model, params, images):
    return model.apply(params, images, method="encode_image")


@functools.cache
def _encoded():
    setup = _setup()
    s = SMALL.image_size
    images = np.random.default_rng(0).standard_normal((2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        rout = setup.ref.forward_image(to_nchw(images))
    return setup, rout, _encode(setup.model, setup.params, images)


@pytest.mark.torch
def test_tracker_encoder_matches_reference():
    _, r, f = _encoded()
    g = SMALL.embed_size
    assert g == 8
    for i, (side, chans) in enumerate([(4 * g, 32), (2 * g, 64), (g, 256)]):
        assert f["backbone_fpn"][i].shape == (2, side, side, chans)
        assert rel_err(f["backbone_fpn"][i], nchw(r["backbone_fpn"][i])) < FEATURE_TOL
        assert rel_err(f["vision_pos_enc"][i], nchw(r["vision_pos_enc"][i])) < FEATURE_TOL
    assert rel_err(f["vision_features"], nchw(r["vision_features"])) < FEATURE_TOL


@pytest.mark.torch
@pytest.mark.parametrize("multimask", [True, False])
def test_tracker_heads_match_reference(multimask: bool):
    setup, rout, feats = _encoded()
    s = SMALL.image_size
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, s, (2, 3, 2)).astype(np.float32)
    labels = np.array([[2, 3, 1], [1, 0, 1]], np.int32)
    masks = 5 * rng.standard_normal((2, s, s, 1)).astype(np.float32)  # resized to 4g
    with torch.no_grad():
        emb = rout["vision_features"] + setup.ref.no_mem_embed.view(1, -1, 1, 1)
        points = {
            "point_coords": torch.from_numpy(coords),
            "point_labels": torch.from_numpy(labels),
        }
        theirs = setup.ref._forward_sam_heads(
            emb, points, to_nchw(masks), rout["backbone_fpn"][:2], multimask
        )
    nme = setup.params["params"]["no_mem_embed"].reshape(1, 1, 1, -1)
    ours = setup.model.apply(
        setup.params,
        feats["vision_features"] + nme,
        coords,
        labels,
        masks,
        feats["high_res_features"],
        multimask,
        method="forward_sam_heads",
    )
    assert ours.low_res_masks.shape == (2, 1, 4 * SMALL.embed_size, 4 * SMALL.embed_size)
    assert ours.high_res_masks.shape == (2, 1, s, s)
    for name, a, b in zip(HEADS, ours, theirs, strict=True):
        tol = LOGIT_TOL if "masks" in name else FEATURE_TOL
        assert rel_err(a, b.numpy()) < tol, (name, rel_err(a, b.numpy()))


@pytest.mark.torch
def test_tracker_video_session_matches_reference():
    """Two objects prompted on different frames (click, box), forward propagation, a
    correction and re-propagation, then reverse: every frame's logits per object."""
    setup = _setup()
    s = SMALL.image_size
    sess = Session(setup, _video(6, s, s, seed=3), chunk_size=4)
    sess.points(0, 1, [[0.25 * s, 0.4 * s]], [1])
    sess.points(2, 2, box=[0.55 * s, 0.45 * s, 0.8 * s, 0.85 * s])
    assert sess.propagate("fwd") == list(range(6))
    sess.points(3, 1, [[0.4 * s, 0.45 * s], [0.9 * s, 0.1 * s]], [1, 0])
    assert sess.propagate("re-prop", start_frame_idx=3) == list(range(3, 6))
    assert sess.propagate("reverse", start_frame_idx=5, reverse=True) == list(range(5, -1, -1))
    sess.report("sam3 tracker small")
    assert sess.present > 0


class _GridSession(Session):
    """A Session whose reference logits may differ in size per object (a mask prompt's
    output is S/4 wide, the SAM heads' 4g): each is mapped to the frame at its own size
    (the reference predictor's resize of its low-res masks to the original image)."""

    def _check(self, tag: str, ours: np.ndarray, ref_low: dict) -> None:
        st = self.state
        hw, theirs = (st.video_height, st.video_width), []
        for i in st.obj_ids:
            taps = unletterbox_taps(*hw, SMALL.image_size, ref_low[i].shape[-1])
            theirs.append(np.asarray(resample(jnp.asarray(ref_low[i]), *taps)))
        err, iou = 0.0, 1.0
        for a, b in zip(ours, theirs, strict=True):
            err = max(err, rel_err(a, b))
            union = ((a > 0) | (b > 0)).sum()
            if union:
                iou = min(iou, float(((a > 0) & (b > 0)).sum() / union))
            self.present += int((b > 0).any())
            self.total += 1
        self.errors[tag], self.ious[tag] = err, iou
        assert err <= LOGIT_TOL and iou >= 0.99, (tag, err, iou)


@pytest.mark.torch
def test_tracker_mask_prompt_session_matches_reference():
    """Mask prompts on a letterboxed video (90 x 112 at S = 112: the S/4 = 28 grid maps
    to 22.5 rows): a mask starting an object, a click starting another, propagation
    (the mask's memory), a mask correction on a tracked frame (kept in the disk history),
    a click correcting the mask's frame (the mask output fed back as the previous
    logits), re-propagation and reverse tracking: every frame's logits per object."""
    setup = _setup()
    s, h = SMALL.image_size, 90
    assert s // 4 != SMALL.mask_input_size  # 28 vs 32: the case where the grids differ
    sess = _GridSession(setup, _video(5, h, s, seed=7), chunk_size=4, history="disk")
    yy, xx = np.mgrid[:h, :s]
    disc = (xx - 0.28 * s) ** 2 + (yy - 0.41 * h) ** 2 < (0.13 * s) ** 2
    rect = (np.abs(xx - 0.64 * s) < 0.12 * s) & (np.abs(yy - 0.65 * h) < 0.16 * h)
    sess.mask(1, 1, disc)
    sess.points(0, 2, [[0.7 * s, 0.65 * h]], [1])
    assert sess.propagate("fwd") == list(range(5))
    sess.mask(3, 2, rect)
    sess.points(1, 1, [[0.3 * s, 0.4 * h]], [0])
    assert sess.propagate("re-prop", start_frame_idx=0) == list(range(5))
    assert sess.propagate("reverse", start_frame_idx=4, reverse=True) == list(range(4, -1, -1))
    sess.report("sam3 tracker mask prompts")
    assert sess.present > 0
    assert max(sess.errors["mask f1 obj1"], sess.errors["mask f3 obj2"]) < 1e-5
    # clearing a mask-started frame moves its S/4-wide output to the history unchanged
    _, _, before = sess.vp.add_new_mask(sess.state, 2, 3, disc)
    sess.vp.propagate_in_video_preflight(sess.state)  # a conditioning frame now
    _, _, after = sess.vp.clear_all_prompts_in_frame(sess.state, 2, 3)
    np.testing.assert_array_equal(after, before)
    assert sess.state.history.low_res(sess.state.tracks[3].key, 2).shape == (s // 4, s // 4)


@pytest.mark.parametrize("backend", ["ram", "disk", "ring"])
def test_history_keeps_a_smaller_grid(tmp_path, backend: str):
    """Stores hold (k, k) logits with k <= m (a SAM 3 mask prompt's S/4 output) in their
    fixed (m, m) records and give them back as put, also after a full-size put over
    another frame's; a full-size put over one gives (m, m) again; k > m is refused."""
    from sam_jax.predictors.history import make_history
    from sam_jax.predictors.ring_history import RingHistory

    g, m, c, d = 2, 8, 3, 4
    if backend == "ring":
        store = RingHistory(4, g, m, c, d)
    else:
        store = make_history(backend, 5, g, m, c, d, ram_limit=0, directory=str(tmp_path))
    rng = np.random.default_rng(0)
    small, full = rng.standard_normal((5, 5)), rng.standard_normal((m, m))
    mem, ptr = np.zeros((g, g, c)), np.zeros(d)
    store.put(0, 1, mem, small, ptr, 1.0)
    store.put(0, 2, mem, full, ptr, 1.0)
    np.testing.assert_array_equal(store.low_res(0, 1), small.astype(np.float32))
    np.testing.assert_array_equal(store.low_res(0, 2), full.astype(np.float32))
    store.put(0, 1, mem, full, ptr, 1.0)
    assert store.low_res(0, 1).shape == (m, m)
    store.put(0, 3, mem, small, ptr, 1.0)
    store.drop(0, 3)
    assert not store.has(0, 3)
    with pytest.raises(ValueError, match="k <= 8"):
        store.put(0, 0, mem, np.zeros((m + 1, m + 1)), ptr, 1.0)
    store.close()


def test_sam3_config_round_trip_and_grid():
    cfg = VARIANTS["sam3"]
    assert (cfg.image_size, cfg.embed_size, cfg.mask_input_size) == (1008, 72, 288)
    assert cfg.pixel_mean == cfg.pixel_std == (127.5, 127.5, 127.5)
    assert config_from_json(config_to_json(cfg)) == cfg
    with pytest.raises(ValueError, match="multiple of 14"):
        build_from_config(dataclasses.replace(SMALL, image_size=120)).init(
            jax.random.key(0), jnp.zeros((1, 120, 120, 3)), method="encode_image"
        )


def _combined_file(ref: torch.nn.Module, sam3_1: bool) -> dict[str, torch.Tensor]:
    """A SAM 3 (or 3.1) style combined state_dict around the reference tracker's weights,
    with detector-only entries the tracker must leave alone."""
    sd = {k: torch.from_numpy(v) for k, v in tracker_state_dict(ref).items()}
    sd.update(
        {
            k: v.detach()
            for k, v in ref.state_dict().items()
            if k.startswith("image_encoder.vision_backbone.convs.")
        }
    )
    out = {k: v.clone() for k, v in tracker_to_sam3_keys(sd).items()}
    out["detector.transformer.decoder.query_embed.weight"] = torch.zeros(3, 4)
    out["detector.backbone.language_backbone.resizer.bias"] = torch.zeros(4)
    if sam3_1:  # SAM 3.1's names for the interactive head and neck, plus its multiplex tracker
        out = {
            k.replace("tracker.", "tracker.model.interactive_").replace(
                "sam2_convs", "interactive_convs"
            ): v
            for k, v in out.items()
        }
        out["tracker.model.multiplex_head.weight"] = torch.zeros(2, 2)
    return out


@pytest.mark.torch
@pytest.mark.parametrize("sam3_1", [False, True])
def test_load_combined_checkpoint_and_export(tmp_path, monkeypatch, sam3_1: bool):
    """sam_jax.load reads the tracker out of a combined file (SAM 3 and 3.1 names), strictly;
    exporting writes the combined names back, and the exported file loads the same."""
    import sam_jax
    from sam_jax.convert.export import export_torch

    monkeypatch.setitem(VARIANTS, "sam3_small", SMALL)
    setup = _setup()
    path = tmp_path / "sam3.pt"
    torch.save({"model": _combined_file(setup.ref, sam3_1)}, path)
    model, variables = sam_jax.load(path, variant="sam3_small")
    same = jax.tree_util.tree_map(np.array_equal, variables, setup.params)
    assert all(jax.tree_util.tree_leaves(same))

    out = tmp_path / "exported.pt"
    export_torch(out, model, variables)
    written = torch.load(out)["model"]
    assert all(k.startswith(("detector.backbone.vision_backbone.", "tracker.")) for k in written)
    assert "tracker.transformer.encoder.layers.0.self_attn.q_proj.weight" in written
    _, again = sam_jax.load(out, variant="sam3_small")
    same = jax.tree_util.tree_map(np.array_equal, again, setup.params)
    assert all(jax.tree_util.tree_leaves(same))

    broken = _combined_file(setup.ref, sam3_1)
    broken = {k: v for k, v in broken.items() if "maskmem_tpos_enc" not in k}
    torch.save({"model": broken}, path)
    with pytest.raises(ValueError, match="maskmem_tpos_enc"):
        sam_jax.load(path, variant="sam3_small")
    torch.save({"model": {"detector.transformer.x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="no SAM 3 tracker"):
        sam_jax.load(path)


@pytest.mark.torch
def test_full_size_tracker_names_and_shapes():
    """The full `sam3` tracker's variables are exactly the reference SAM3Model's (as
    `build_interactive_sam3` builds it), detector neck aside."""
    ref = build_reference_sam3_tracker(VARIANTS["sam3"])
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    del ref
    theirs = {k: v for k, v in theirs.items() if ".vision_backbone.convs." not in k}
    shapes = variable_shapes(build_from_config(VARIANTS["sam3"]))
    flat = flatten_dict(dict(shapes))  # every collection (buffers too), its name first
    ours = {torch_key(p[1:]): _torch_shape(p[1:], v.shape) for p, v in flat.items()}
    assert ours == theirs


@pytest.mark.torch
def test_predictor_takes_the_tracker():
    """Predictor runs SAM 3's tracker as it runs SAM 2: the click's logits at the model's
    size are the reference heads' on the same letterboxed, [-1, 1]-scaled image."""
    from sam_jax.predictors.image import Predictor
    from sam_jax.transforms import letterbox

    setup = _setup()
    s = SMALL.image_size
    image = _video(1, 84, s, seed=5)[0]  # letterboxed: padded at the bottom
    pred = Predictor(setup.model, setup.params)
    pred.set_image(image)
    point = np.array([[0.3 * s, 0.4 * 84]], np.float32)
    masks, scores, low = pred.predict(point_coords=point, point_labels=np.array([1]))
    assert masks.shape == (3, 84, s) and scores.shape == (3,)
    norm = (letterbox(image, s).astype(np.float32) - 127.5) / 127.5
    with torch.no_grad():
        rout = setup.ref.forward_image(to_nchw(norm[None]))
        emb = rout["vision_features"] + setup.ref.no_mem_embed.view(1, -1, 1, 1)
        pts = {"point_coords": torch.from_numpy(point[None]), "point_labels": torch.ones(1, 1)}
        theirs = setup.ref._forward_sam_heads(emb, pts, None, rout["backbone_fpn"][:2], True)
    assert rel_err(low, theirs[0][0].numpy()) < LOGIT_TOL
    assert rel_err(scores, theirs[2][0].numpy()) < FEATURE_TOL
