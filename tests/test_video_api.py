"""The rest of Meta's SAM2VideoPredictor API on `VideoPredictor`, with the bundled
`sam2_tiny_shapes` model on small synthetic clips: several objects in one prompt call (the
same as one call per object), `normalize_coords`, `clear_all_prompts_in_frame`,
`remove_object` returning (obj_ids, updated_frames), `propagate_in_video_preflight`, and a
closed state refused with a ValueError by every method."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import sam_jax
from sam_jax.predictors.video import VideoPredictor

H, W = 64, 96


@functools.cache
def _model():
    return sam_jax.load("sam2_tiny_shapes")


def _video(t: int = 5, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A red disc moving right and a green box moving left on a noisy textured
    background, (t, h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    out = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        img = 90 + 40 * np.sin(xx / 7.0 + 0.4 * i)[..., None] * np.ones(3)
        cx, cy = 0.3 * w + 0.03 * w * i, 0.4 * h
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.15 * h) ** 2] = (220, 40, 40)
        box = (np.abs(xx - 0.75 * w + 0.02 * w * i) < 0.1 * w) & (np.abs(yy - 0.7 * h) < 0.15 * h)
        img[box] = (30, 200, 60)
        out[i] = np.clip(img + rng.normal(0, 6, img.shape), 0, 255)
    return out


def _vp(**kwargs) -> VideoPredictor:
    model, params = _model()
    return VideoPredictor(model, params, progress=False, **kwargs)


def _propagate(vp, state, **kwargs) -> dict[int, np.ndarray]:
    return {f: logits for f, _, logits in vp.propagate_in_video(state, **kwargs)}


DISC = [[0.3 * W, 0.4 * H]]
BOX = [0.65 * W, 0.55 * H, 0.85 * W, 0.85 * H]


def test_several_objects_in_one_call_equal_one_call_each():
    """obj_id a list: ragged per-object points (a list), a box for one object only, masks
    (K, H, W); outputs and propagation equal one call per object."""
    video = _video()
    mask = np.zeros((H, W), bool)
    mask[40:60, 60:85] = True
    vp = _vp()
    one, each = vp.init_state(video), vp.init_state(video)

    _, ids, joint = vp.add_new_points_or_box(
        one,
        0,
        [1, 2, 3],
        points=[DISC, None, [[10, 10], [30, 20]]],
        labels=[[1], None, [0, 1]],
        box=[None, BOX, None],
    )
    _, ids_m, joint_m = vp.add_new_mask(one, 2, [4, 5], np.stack([mask, ~mask]))
    vp.add_new_points_or_box(each, 0, 1, DISC, [1])
    vp.add_new_points_or_box(each, 0, 2, box=BOX)
    _, ids_e, sep = vp.add_new_points_or_box(each, 0, 3, [[10, 10], [30, 20]], [0, 1])
    vp.add_new_mask(each, 2, 4, mask)
    _, _, sep_m = vp.add_new_mask(each, 2, 5, ~mask)
    assert ids == [1, 2, 3] == ids_e and ids_m == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(joint, sep)
    np.testing.assert_array_equal(joint_m, sep_m)
    assert (joint > 0).any(axis=(1, 2)).all()  # every object got a mask

    a, b = _propagate(vp, one), _propagate(vp, each)
    assert list(a) == list(b) == list(range(5))
    for f in a:
        np.testing.assert_array_equal(a[f], b[f])

    # an array with a leading axis K is split the same way
    arr = vp.init_state(video)
    pts = np.array([DISC[0], [0.75 * W, 0.7 * H]])[:, None]  # (K=2, N=1, 2)
    _, _, by_array = vp.add_new_points_or_box(arr, 0, [1, 2], pts, np.ones((2, 1)))
    ref = vp.init_state(video)
    vp.add_new_points_or_box(ref, 0, 1, pts[0], [1])
    np.testing.assert_array_equal(by_array, vp.add_new_points_or_box(ref, 0, 2, pts[1], [1])[2])


def test_several_objects_errors_leave_the_state_unchanged():
    vp = _vp()
    state = vp.init_state(_video(3))
    with pytest.raises(ValueError, match="one entry per object: 2 objects, 3 entries"):
        vp.add_new_points_or_box(state, 0, [1, 2], points=[DISC, DISC, DISC])
    with pytest.raises(ValueError, match="more than once"):
        vp.add_new_points_or_box(state, 0, [1, 1], points=[DISC, DISC])
    with pytest.raises(ValueError, match="object 2: give points"):
        vp.add_new_points_or_box(state, 0, [1, 2], points=[DISC, None])
    with pytest.raises(ValueError, match="object 2: labels must have one label per point"):
        vp.add_new_points_or_box(state, 0, [1, 2], points=[DISC, DISC], labels=[[1], [1, 0]])
    with pytest.raises(ValueError, match=r"object 3: mask must be \(H, W\)"):
        vp.add_new_mask(state, 0, [2, 3], [np.ones((H, W)), np.ones((4, 4))])
    with pytest.raises(ValueError, match="empty list"):
        vp.add_new_points_or_box(state, 0, [], points=[])
    assert state.obj_ids == []  # nothing applied, not even for the valid objects


def test_normalize_coords_false_takes_fractions_of_the_frame():
    """normalize_coords=False: x as a fraction of the width, y of the height (Meta's
    meaning) give the pixel prompt's masks, on a non-square (letterboxed) frame."""
    vp = _vp()
    state, other = vp.init_state(_video(2)), vp.init_state(_video(2))  # no previous mask
    pts = np.array([[0.3 * W, 0.4 * H], [0.1 * W, 0.9 * H]])
    frac = pts / np.array([W, H])
    box_frac = (np.array(BOX).reshape(2, 2) / np.array([W, H])).ravel()
    _, _, pix = vp.add_new_points_or_box(state, 0, [1, 2], [pts, None], [[1, 0], None], [None, BOX])
    _, _, rel = vp.add_new_points_or_box(
        other, 0, [1, 2], [frac, None], [[1, 0], None], [None, box_frac], normalize_coords=False
    )
    np.testing.assert_allclose(rel, pix, rtol=0, atol=1e-3)
    assert (pix > 0).any(axis=(1, 2)).all()
    coords, labels = state.tracks[2].points[0]
    assert labels.tolist() == [2, 3]
    np.testing.assert_allclose(coords.ravel(), np.array(BOX) * state.ratio, rtol=1e-5)


def test_clear_all_prompts_in_frame():
    """Meta's semantics: a conditioning frame is downgraded to a non-conditioning output
    (same mask, frame no longer counted as tracked); a kept correction is tracked again
    by the next propagation; an unfiled prompt is dropped; need_output=False returns
    None; an unknown id is not created."""
    vp = _vp()
    state = vp.init_state(_video())
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])
    vp.add_new_points_or_box(state, 1, 2, box=BOX)
    before = _propagate(vp, state)
    vp.add_new_points_or_box(state, 3, 2, [[0.8 * W, 0.7 * H]], [1])  # a correction
    _propagate(vp, state, start_frame_idx=3, max_frame_num_to_track=0)
    tr1, tr2 = state.tracks[1], state.tracks[2]
    assert tr2.prompted == {3} and set(tr1.cond) == {0}

    f, ids, logits = vp.clear_all_prompts_in_frame(state, 0, 1)
    assert (f, ids) == (0, [1, 2])
    np.testing.assert_array_equal(logits, before[0])  # the output stays
    assert not tr1.cond and 0 not in tr1.points and 0 not in tr1.tracked
    assert state.history.has(tr1.key, 0)
    with pytest.raises(RuntimeError, match="object 1 has no conditioning frame"):
        vp.propagate_in_video_preflight(state)
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])  # not tracked now: conditioning again
    assert tr1.temp[0].is_cond

    correction = state.history.low_res(tr2.key, 3).copy()
    assert vp.clear_all_prompts_in_frame(state, 3, 2, need_output=False) is None
    assert not tr2.prompted and 3 not in tr2.points
    np.testing.assert_array_equal(state.history.low_res(tr2.key, 3), correction)  # kept
    vp.add_new_points_or_box(state, 2, 3, [[5, 5]], [1])
    _, ids, logits = vp.clear_all_prompts_in_frame(state, 2, 3)  # an unfiled prompt
    assert ids == [1, 2, 3] and not state.tracks[3].temp and (logits[2] < -100).all()
    vp.remove_object(state, 3)
    _, ids, _ = vp.clear_all_prompts_in_frame(state, 2, 99)
    assert ids == [1, 2]
    _propagate(vp, state)  # frame 3 of object 2 is tracked again, no longer kept
    assert state.history.has(tr2.key, 3)
    assert not np.allclose(state.history.low_res(tr2.key, 3), correction, atol=1e-3)


def test_remove_object_returns_ids_and_updated_frames():
    vp = _vp()
    state = vp.init_state(_video())
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])
    vp.add_new_points_or_box(state, 0, 2, box=BOX)
    vp.add_new_points_or_box(state, 2, 2, [[0.7 * W, 0.7 * H]], [1])
    vp.add_new_points_or_box(state, 1, 3, [[10, 50]], [1])
    out = _propagate(vp, state)

    ids, updated = vp.remove_object(state, 2)
    assert ids == [1, 3] == state.obj_ids
    assert [f for f, _ in updated] == [0, 2]
    for f, logits in updated:
        assert logits.shape == (2, H, W)
        np.testing.assert_array_equal(logits, out[f][[0, 2]])
    assert vp.remove_object(state, 2) == ([1, 3], [])
    with pytest.raises(RuntimeError, match="no object id 2"):
        vp.remove_object(state, 2, strict=True)
    assert vp.remove_object(state, 3, need_output=False) == ([1], [])
    assert vp.remove_object(state, 1) == ([], [])  # the last one: the session is reset
    assert state.obj_ids == [] and not state.history.keys()


def test_propagate_in_video_preflight_files_prompts():
    vp = _vp()
    state = vp.init_state(_video(3))
    with pytest.raises(RuntimeError, match="no objects"):
        vp.propagate_in_video_preflight(state)
    vp.add_new_points_or_box(state, 1, 1, DISC, [1])
    assert 1 in state.tracks[1].temp and not state.tracks[1].cond
    vp.propagate_in_video_preflight(state)
    tr = state.tracks[1]
    assert not tr.temp and set(tr.cond) == {1} and tr.cond[1].maskmem is not None
    assert tr.cond[1].maskmem.shape == (vp.grid, vp.grid, vp.config.mem_dim)


def test_closed_state_is_refused():
    vp = _vp()
    state = vp.init_state(_video(3), history="disk")
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])
    list(vp.propagate_in_video(state))
    vp.close(state)
    vp.close(state)  # closing twice is harmless
    calls = {
        "add_new_points_or_box": lambda: vp.add_new_points_or_box(state, 0, 1, DISC, [1]),
        "add_new_mask": lambda: vp.add_new_mask(state, 0, 1, np.ones((H, W), bool)),
        "propagate_in_video": lambda: vp.propagate_in_video(state),  # refused when called
        "propagate_in_video_preflight": lambda: vp.propagate_in_video_preflight(state),
        "clear_all_prompts_in_frame": lambda: vp.clear_all_prompts_in_frame(state, 0, 1),
        "remove_object": lambda: vp.remove_object(state, 1),
        "reset_state": lambda: vp.reset_state(state),
        "memory_state": lambda: vp.memory_state(state, 1),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="state was closed"):
            call()
            pytest.fail(name)
