"""SAM 2 tracking of a stream: frames that arrive one at a time, their number unknown.

tracker = sam_jax.StreamTracker(model, params)
frame_idx, obj_ids, logits = tracker.add_frame(frame)      # (H, W, 3) uint8 RGB
tracker.add_new_points_or_box(frame_idx, obj_id=1, points=[[210, 350]], labels=[1])
for frame in camera:
    frame_idx, obj_ids, logits = tracker.add_frame(frame)  # (num_objects, H, W) logits

The tracker is a `VideoPredictor` session whose video grows by one frame per `add_frame`:
prompts, memory encoding and the scanned `track_step` are the predictor's (one frame per
scan), so prompts on frame k followed by frames fed one by one give the masks that
`VideoPredictor.propagate_in_video` gives from frame k on the same frames. A prompt (or
`clear_all_prompts_in_frame`) on a held frame before the latest one is a prompt in the
past: the next `add_frame` first re-tracks the held frames from there, as re-propagating
from that frame would, then tracks the new frame.

What it holds is bounded whatever the number of frames:
* the fixed-shape memory bank (`sam_jax.tracking.MemoryBank`) for the next frame, carried
  from frame to frame and rebuilt only after a prompt or a removal;
* the last `window` frames and their encoder features (prompts go on those);
* per object, a `RingHistory` of the outputs of its last
  window + max(num_maskmem - 1, max_obj_ptrs_in_encoder - 1) frames, from which the bank
  is rebuilt;
* per object, the outputs of its conditioning frames (one per frame prompted before it
  was tracked there: they grow with prompts, never with frames, as Meta's predictor keeps
  every conditioning frame).

Object pointers are placed at distances scaled by min(num_frames, 16) - 1 (SAM 2); a
stream of unknown length counts as a long video (16 frames or more). Give `num_frames`
to announce the length instead: the results then equal VideoPredictor's on a video of
that many frames, and no more frames are accepted.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.predictors import video_propagation as vprop
from sam_jax.predictors.ring_history import RingHistory
from sam_jax.predictors.video import VideoPredictor
from sam_jax.predictors.video_state import VideoState
from sam_jax.tracking.memory_bank import MemoryBank, bank_nbytes, bucket
from sam_jax.video_io import FrameSource

UNBOUNDED = 2**31 - 1  # the length of a stream of unknown length (frame indices are int32)


class _HeldFrames(FrameSource):
    """The frames a stream still holds (frame index -> (H, W, 3) uint8); its length is the
    stream's bound."""

    def __init__(self, hw: tuple[int, int], length: int) -> None:
        self.held: dict[int, np.ndarray] = {}
        self._hw, self._length = hw, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> np.ndarray:
        return self.held[i]

    @property
    def hw(self) -> tuple[int, int]:
        return self._hw


class _StreamState(VideoState):
    """A session whose frames are those held, first..latest."""

    def __init__(self, frames: _HeldFrames, image_size: int, history: RingHistory) -> None:
        super().__init__(frames, image_size, history)
        self.first, self.latest = 0, -1

    def frame_index(self, frame_idx: int) -> int:
        """frame_idx as an int; ValueError unless the frame is held."""
        f = int(frame_idx)
        if not self.first <= f <= self.latest:
            raise ValueError(
                f"frame {frame_idx} is not held: the tracker holds frames "
                f"{self.first}..{self.latest} (the last `window` frames added)"
            )
        return f


def _check_frame(frame: Any) -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"a frame must be (H, W, 3) uint8 RGB; got {a.shape} {a.dtype}")
    return a


class StreamTracker:
    """Tracks prompted objects through frames fed one at a time (see the module docstring).

    window: how many recent frames (and their features) are held, so accept prompts;
    num_frames: the stream's length, if known (see the module docstring); the other
    options are `VideoPredictor`'s. Frame indices count from 0 in the order frames came.
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        *,
        window: int = 4,
        num_frames: int | None = None,
        non_overlap_masks: bool = False,
        non_overlap_for_memory: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
    ) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        if num_frames is not None and not 1 <= int(num_frames) <= UNBOUNDED:
            raise ValueError(f"num_frames must be None or in [1, {UNBOUNDED}], got {num_frames}")
        self.window = int(window)
        self.num_frames = None if num_frames is None else int(num_frames)
        self._vp = VideoPredictor(
            model,
            params,
            chunk_size=1,
            feature_cache_size=self.window,
            non_overlap_masks=non_overlap_masks,
            non_overlap_for_memory=non_overlap_for_memory,
            add_all_frames_to_correct_as_cond=add_all_frames_to_correct_as_cond,
            progress=False,
        )
        cfg = self._vp.config
        reach = max(cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder - 1)
        self._history_size = self.window + reach  # what rebuilding the bank may read
        self._state: _StreamState | None = None
        self._bank: MemoryBank | None = None  # for the frame after the latest
        self._changed_from: int | None = None  # earliest frame prompted since the bank

    # ------------------------------------------------------------------ what is held

    @property
    def obj_ids(self) -> list:
        """Object ids in the order they were added (the row order of every output)."""
        return [] if self._state is None else self._state.obj_ids

    @property
    def frames_held(self) -> range:
        """The frames prompts may go on: the last `window` frames added."""
        st = self._state
        return range(0) if st is None else range(st.first, st.latest + 1)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held: memory bank, held frames and features, the objects'
        recent outputs, prompts and conditioning outputs. Bounded: it stops changing once
        `window` frames were added, unless objects, prompts or their frames change."""
        st = self._state
        if st is None:
            return 0
        arrays = [*st.frames.held.values()]
        arrays += [x for feats in st.features.values() for x in feats]
        for tr in st.tracks.values():
            arrays += [a for pts in tr.points.values() for a in pts] + list(tr.masks.values())
            for out in [*tr.cond.values(), *tr.temp.values()]:
                arrays += [out.low_res, out.ptr]
                if out.maskmem is not None:
                    arrays.append(out.maskmem)
        bank = 0 if self._bank is None else bank_nbytes(self._bank)
        return sum(int(a.nbytes) for a in arrays) + st.history.ram_bytes() + bank

    def _held(self) -> _StreamState:
        if self._state is None:
            raise ValueError("no frame yet: call add_frame first")
        return self._state

    # ------------------------------------------------------------------ frames

    def add_frame(self, frame: Any) -> tuple[int, list, np.ndarray]:
        """Add the next frame, (H, W, 3) uint8 RGB (every frame the size of the first; it
        is copied), and track the current objects on it. Returns (frame_idx, obj_ids,
        logits (num_objects, H, W) float32 at the frame's size); no objects: (0, H, W).
        RuntimeError if an object has no conditioning frame (its prompts were cleared)."""
        a = _check_frame(frame)
        st = self._state or self._start(a.shape[:2])
        if a.shape[:2] != (st.video_height, st.video_width):
            raise ValueError(
                f"frames must all be {st.video_height}x{st.video_width} like the first; "
                f"got {a.shape[0]}x{a.shape[1]}"
            )
        if st.latest + 1 >= st.num_frames:
            raise ValueError(f"the stream was announced as num_frames={st.num_frames} frames")
        self._catch_up()
        f = st.latest + 1
        st.frames.held[f] = a.copy()  # the caller may reuse its buffer for the next frame
        st.latest = f
        self._forget_before(f - self.window + 1)
        if not st.tracks:
            return f, [], np.zeros((0, st.video_height, st.video_width), np.float32)
        return f, st.obj_ids, self._vp._video_logits(st, self._track(f))

    def _start(self, hw: tuple[int, int]) -> _StreamState:
        vp, cfg = self._vp, self._vp.config
        history = RingHistory(self._history_size, vp.grid, vp.mask_size, cfg.mem_dim, cfg.d_model)
        frames = _HeldFrames(hw, UNBOUNDED if self.num_frames is None else self.num_frames)
        self._state = _StreamState(frames, vp.image_size, history)
        return self._state

    def _track(self, f: int) -> np.ndarray:
        """Track held frame f with the carried bank -> low-res logits (num_objects, m, m)."""
        st = self._state
        tracks = list(st.tracks.values())
        features = functools.partial(self._vp._features, st)
        o = self._bank.num_objects
        self._bank, out = vprop.launch(self._vp, st, tracks, [f], o, self._bank, features)
        ((_, low),) = list(vprop.file_chunk_outputs(st.history, tracks, *out, reverse=False))
        return low

    def _catch_up(self) -> None:
        """After prompts or removals: file the prompts, rebuild the bank at the earliest
        frame they changed and re-track the held frames from there."""
        st = self._state
        if not st.tracks:
            self._bank, self._changed_from = None, None
            return
        if self._bank is not None and self._changed_from is None:
            return
        self._vp.propagate_in_video_preflight(st)
        start = st.latest + 1 if self._changed_from is None else self._changed_from
        tracks = list(st.tracks.values())
        o, c = bucket(len(tracks)), bucket(max(len(tr.cond) for tr in tracks))
        bank = self._vp._bank(st, tracks, start, False, o, c)
        self._bank, self._changed_from = jax.tree_util.tree_map(jnp.asarray, bank), None
        for f in range(start, st.latest + 1):
            self._track(f)

    def _forget_before(self, first: int) -> None:
        """Drop the frames before `first`, their features and their prompts."""
        st = self._state
        if first <= st.first:
            return
        st.first = first
        for store in (st.frames.held, st.features):
            for f in [f for f in store if f < first]:
                del store[f]
        for tr in st.tracks.values():
            for store in (tr.points, tr.masks, tr.tracked, tr.temp):
                for f in [f for f in store if f < first]:
                    del store[f]
            tr.prompted = {f for f in tr.prompted if f >= first}

    # ------------------------------------------------------------------ prompts

    def _changed(self, f: int) -> None:
        self._changed_from = f if self._changed_from is None else min(self._changed_from, f)

    def add_new_points_or_box(
        self,
        frame_idx: int,
        obj_id: Any,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> tuple[int, list, np.ndarray]:
        """`VideoPredictor.add_new_points_or_box` on a held frame (several objects at once
        included). Returns (frame_idx, obj_ids, logits (num_objects, H, W))."""
        st = self._held()
        out = self._vp.add_new_points_or_box(
            st, frame_idx, obj_id, points, labels, box, clear_old_points, normalize_coords
        )
        self._changed(out[0])
        return out

    def add_new_mask(self, frame_idx: int, obj_id: Any, mask: Any) -> tuple[int, list, np.ndarray]:
        """`VideoPredictor.add_new_mask` on a held frame: mask (H, W) (or (K, H, W) for a
        list of K ids). Returns (frame_idx, obj_ids, logits (num_objects, H, W))."""
        out = self._vp.add_new_mask(self._held(), frame_idx, obj_id, mask)
        self._changed(out[0])
        return out

    def clear_all_prompts_in_frame(
        self, frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> tuple[int, list, np.ndarray] | None:
        """`VideoPredictor.clear_all_prompts_in_frame` on a held frame."""
        st = self._held()
        out = self._vp.clear_all_prompts_in_frame(st, frame_idx, obj_id, need_output)
        self._changed(st.frame_index(frame_idx))
        return out

    def remove_object(
        self, obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list, list[tuple[int, np.ndarray]]]:
        """`VideoPredictor.remove_object`: (remaining obj_ids, [(frame_idx, logits)] for the
        held frames the object had prompts on)."""
        if self._state is None:
            if strict:
                raise RuntimeError(f"no object id {obj_id}; existing ids: []")
            return [], []
        out = self._vp.remove_object(self._state, obj_id, strict, need_output)
        self._bank = None  # other rows now: rebuilt before the next frame
        return out

    def reset(self) -> None:
        """Forget every object and prompt; the held frames stay."""
        if self._state is not None:
            self._vp.reset_state(self._state)
        self._bank, self._changed_from = None, None


__all__ = ["StreamTracker"]
