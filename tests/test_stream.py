"""`StreamTracker` with the bundled `sam2_tiny_shapes` model: frames fed one at a time
give `VideoPredictor.propagate_in_video`'s masks on the same frames and prompts (an
announced length, and an unknown one on a 30-frame clip), the bytes it holds stop growing
once its window is full, prompts and removals on held frames before the latest one equal
re-propagating from there, and bad calls are refused with clear errors. The bundled
model's memory cross-attention has zero query and key projections (its attention is
uniform), so where memories are placed is checked with a random tiny model."""

from __future__ import annotations

import flax
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config
from sam_jax.predictors.stream import StreamTracker
from sam_jax.predictors.video import VideoPredictor
from tests.test_video_api import BOX, DISC, H, W, _model, _propagate, _video, _vp
from tests.tiny_configs import TINY2, random_variables

# One frame per scan here, chunks of 8 there: the same math, other fusion. Over 30 frames
# of a random model's memory the rounding differences reach about 1e-5 of the logits'
# magnitude (up to 2e-4 at logits of about 20); the masks' signs must agree exactly.
ATOL = 5e-4


def _stream(**kwargs) -> StreamTracker:
    model, params = _model()
    return sam_jax.StreamTracker(model, params, **kwargs)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(a > 0, b > 0)


def test_stream_equals_video_predictor_on_an_announced_length():
    """Two objects prompted on frame 0 (a click, a box), frames fed one by one."""
    video = _video(5)
    vp = _vp()
    state = vp.init_state(video)
    _, _, prompted = vp.add_new_points_or_box(state, 0, [1, 2], [DISC, None], None, [None, BOX])
    expected = _propagate(vp, state)

    tracker = _stream(num_frames=5)
    f, ids, logits = tracker.add_frame(video[0])
    assert (f, ids, logits.shape) == (0, [], (0, H, W))
    f, ids, logits = tracker.add_new_points_or_box(0, [1, 2], [DISC, None], None, [None, BOX])
    assert (f, ids) == (0, [1, 2])
    np.testing.assert_array_equal(logits, prompted)
    for i in range(1, 5):
        f, ids, logits = tracker.add_frame(video[i])
        assert (f, ids, logits.shape) == (i, [1, 2], (2, H, W))
        _close(logits, expected[i])
    assert all((expected[i] > 0).any() for i in range(5))
    with pytest.raises(ValueError, match="num_frames=5"):
        tracker.add_frame(video[0])


def test_announced_length_sets_the_pointer_positions():
    """A random model whose pointer temporal encodings weigh (projection x 100): the
    stream announced as 5 frames equals VideoPredictor on 5 frames; unannounced, the
    pointers sit at other positions (scaled for 16 frames) and the logits differ."""
    model = build_from_config(TINY2)
    flat = flax.traverse_util.flatten_dict(random_variables(model, seed=3))
    flat["params", "sam_mask_decoder", "pred_obj_score_head", "layers_2", "bias"] += 3.0
    flat["params", "obj_ptr_tpos_proj", "kernel"] *= 100.0
    params = flax.traverse_util.unflatten_dict(flat)
    video = _video(5, 48, 64)
    points = [[[20, 20]], [[50, 30]]]
    vp = VideoPredictor(model, params, progress=False)
    state = vp.init_state(video)
    vp.add_new_points_or_box(state, 0, [1, 2], points)
    expected = _propagate(vp, state)
    errors = {}
    for num_frames in (5, None):
        tracker = StreamTracker(model, params, num_frames=num_frames)
        tracker.add_frame(video[0])
        tracker.add_new_points_or_box(0, [1, 2], points)
        out = [tracker.add_frame(video[i])[2] for i in range(1, 5)]
        errors[num_frames] = max(np.abs(o - expected[i + 1]).max() for i, o in enumerate(out))
    assert errors[5] <= ATOL and errors[None] > 100 * ATOL, errors
    assert all((expected[i] > 0).any() for i in range(5))


def test_unknown_length_equals_a_long_video_and_memory_is_bounded():
    """No announced length: a 30-frame clip gives VideoPredictor's masks (over 16 frames,
    the pointer scale is the same), while the bytes held after 3 frames equal those
    after 30 (window 2: every held array is full by then)."""
    video = _video(30)
    vp = _vp()
    state = vp.init_state(video)
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])
    vp.add_new_points_or_box(state, 0, 2, box=BOX)
    expected = _propagate(vp, state)

    tracker = _stream(window=2)
    tracker.add_frame(video[0])
    tracker.add_new_points_or_box(0, 1, DISC, [1])
    tracker.add_new_points_or_box(0, 2, box=BOX)
    sizes = {}
    for i in range(1, 30):
        _, _, logits = tracker.add_frame(video[i])
        _close(logits, expected[i])
        sizes[i + 1] = tracker.nbytes
    assert tracker.frames_held == range(28, 30)
    assert sizes[3] == sizes[30] > 0, sizes
    assert len(set(list(sizes.values())[1:])) == 1  # constant from frame 3 on
    st = tracker._state
    assert sorted(st.features) == [28, 29] and sorted(st.frames.held) == [28, 29]
    assert all(len(tr.tracked) <= 2 and not tr.points for tr in st.tracks.values())


def test_prompts_and_removal_on_held_frames_equal_re_propagating():
    """At frame 4 (window 4: frames 1..4 held), a new object on frame 2 and a correction
    on frame 3 are made; the next frames equal VideoPredictor re-propagating from frame 2
    then going on. Then an object is removed between two frames."""
    video = _video(8)
    vp = _vp()
    state = vp.init_state(video)
    vp.add_new_points_or_box(state, 0, 1, DISC, [1])
    _propagate(vp, state, max_frame_num_to_track=4)
    _, _, new_obj = vp.add_new_points_or_box(state, 2, 2, box=BOX)
    _, _, corrected = vp.add_new_points_or_box(state, 3, 1, [[0.4 * W, 0.4 * H]], [1])
    _propagate(vp, state, start_frame_idx=2, max_frame_num_to_track=2)
    expected = _propagate(vp, state, start_frame_idx=5, max_frame_num_to_track=1)
    vp.remove_object(state, 1)
    expected.update(_propagate(vp, state, start_frame_idx=7))

    tracker = _stream(window=4, num_frames=8)
    tracker.add_frame(video[0])
    tracker.add_new_points_or_box(0, 1, DISC, [1])
    for i in range(1, 5):
        tracker.add_frame(video[i])
    with pytest.raises(ValueError, match=r"frame 0 is not held: the tracker holds frames 1\.\.4"):
        tracker.add_new_points_or_box(0, 2, box=BOX)
    _close(tracker.add_new_points_or_box(2, 2, box=BOX)[2], new_obj)
    _close(tracker.add_new_points_or_box(3, 1, [[0.4 * W, 0.4 * H]], [1])[2], corrected)
    for i in (5, 6):
        _, ids, logits = tracker.add_frame(video[i])
        assert ids == [1, 2]
        _close(logits, expected[i])
    ids, updated = tracker.remove_object(1)
    assert ids == [2] and [f for f, _ in updated] == [3]  # its prompts still held
    _, ids, logits = tracker.add_frame(video[7])
    assert ids == [2]
    _close(logits, expected[7])


def test_stream_errors_and_reset():
    video = _video(3)
    tracker = _stream(window=1)
    with pytest.raises(ValueError, match="no frame yet"):
        tracker.add_new_points_or_box(0, 1, DISC, [1])
    assert tracker.remove_object(1) == ([], [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        tracker.add_frame(video[0].astype(np.float32))
    tracker.add_frame(video[0])
    with pytest.raises(ValueError, match="like the first"):
        tracker.add_frame(video[1][:, :50])
    tracker.add_new_points_or_box(0, 1, DISC, [1])
    tracker.clear_all_prompts_in_frame(0, 1)  # object 1 is left without a prompt
    with pytest.raises(RuntimeError, match="no conditioning frame"):
        tracker.add_frame(video[1])
    tracker.reset()
    assert tracker.obj_ids == [] and tracker.add_frame(video[1])[1] == []
    tracker.add_new_mask(1, 3, video[1][..., 0] > 150)
    f, ids, logits = tracker.add_frame(video[2])
    assert (f, ids) == (2, [3]) and (logits > 0).any()
    for bad in ({"window": 0}, {"num_frames": 0}):
        with pytest.raises(ValueError):
            _stream(**bad)
