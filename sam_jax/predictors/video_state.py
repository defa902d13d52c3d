"""The state of one video session: frames, objects with their prompts and outputs, history.

A `VideoState` is created by `VideoPredictor.init_state` and passed to the predictor's
methods; the predictor keeps nothing per session itself. Per object, an `ObjectTrack`
holds its prompts, the outputs of its prompted frames (`PromptOutput`) and which frames it
was tracked on; the non-conditioning outputs of tracked frames live in the session's
`FrameHistory`, under the track's integer key.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_jax.predictors.history import FrameHistory
from sam_jax.predictors.resample import unletterbox_taps
from sam_jax.transforms import letterbox, letterbox_geometry
from sam_jax.video_io import FrameSource


@dataclass
class PromptOutput:
    """A prompted frame's output for one object; `maskmem` is set once it is encoded into
    memory (at the start of the next propagation)."""

    low_res: np.ndarray  # (k, k) float32 logits: k = m, or S/4 (< m for SAM 3) for a mask
    ptr: np.ndarray  # (d_model,) object pointer
    score: float  # object score logit
    is_cond: bool  # a conditioning frame (else a correction kept as non-conditioning)
    maskmem: np.ndarray | None = None  # (g, g, mem_dim)


@dataclass
class ObjectTrack:
    """Prompts, prompted outputs and tracking bookkeeping of one object.

    key: the object's key in the history; points: frame -> (coords (N, 2) in model pixels,
    labels (N,)); masks: frame -> (S, S) 0/1 letterboxed mask prompt; temp: frame ->
    PromptOutput prompted since the last propagation; cond: frame -> PromptOutput of the
    conditioning frames; prompted: frames whose correction is kept in the history as a
    non-conditioning output; tracked: frame -> whether it was last tracked in reverse.
    """

    key: int
    points: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    temp: dict = field(default_factory=dict)
    cond: dict = field(default_factory=dict)
    prompted: set = field(default_factory=set)
    tracked: dict = field(default_factory=dict)

    def prompt_kind(self, f: int, correct_as_cond: bool) -> tuple[bool, bool, bool]:
        """(is_init_cond_frame, reverse, is_cond) of a prompt on frame f: a frame not yet
        tracked starts a conditioning frame; a correction is one only if `correct_as_cond`
        or the frame already is one."""
        is_init = f not in self.tracked
        reverse = False if is_init else self.tracked[f]
        return is_init, reverse, is_init or correct_as_cond or f in self.cond

    def current_low_res(self, history: FrameHistory, f: int) -> np.ndarray | None:
        """The newest (k, k) logits on frame f (see `PromptOutput.low_res`): a prompt's
        since the last propagation, a conditioning frame's, else the history's; None if
        the object has none there."""
        if f in self.temp:
            return self.temp[f].low_res
        if f in self.cond:
            return self.cond[f].low_res
        if history.has(self.key, f):
            return history.low_res(self.key, f)
        return None

    def clear_prompts(self, f: int, history: FrameHistory) -> None:
        """Forget this object's points, mask and unfiled prompted output on frame f (Meta's
        `clear_all_prompts_in_frame`): a conditioning frame there becomes a
        non-conditioning output in the history and the frame counts as not tracked (a new
        prompt there starts a conditioning frame again); a kept correction there is
        tracked again by the next propagation."""
        self.points.pop(f, None)
        self.masks.pop(f, None)
        self.temp.pop(f, None)
        out = self.cond.pop(f, None)
        if out is not None:
            history.put(self.key, f, out.maskmem, out.low_res, out.ptr, out.score)
            self.tracked.pop(f, None)
        self.prompted.discard(f)

    def cond_memories(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Conditioning frame -> (spatial memory, pointer), as `bank_from_history` takes."""
        return {f: (out.maskmem, out.ptr) for f, out in self.cond.items()}


class VideoState:
    """Everything about one video session (frames, objects, prompts, history). Create it
    with `VideoPredictor.init_state`; pass it to the predictor's methods.

    frames: the frame source; num_frames, video_height, video_width: the video's size;
    image_size: the model's input size S; ratio: the letterbox scale from video to model
    pixels; tracks: obj_id -> ObjectTrack in the order objects were added; history: the
    tracked frames' outputs; features: a small LRU cache frame -> encoder features; taps:
    grid size k -> `video_taps(k)`; closed: set by `VideoPredictor.close`, after which
    every predictor method refuses the state.
    """

    def __init__(self, frames: FrameSource, image_size: int, history: FrameHistory) -> None:
        self.frames = frames
        self.num_frames = len(frames)
        self.video_height, self.video_width = (int(x) for x in frames.hw)
        self.image_size = image_size
        self.ratio = letterbox_geometry(self.video_height, self.video_width, image_size)[0]
        self.tracks: dict[Any, ObjectTrack] = {}
        self.history = history
        self.features: collections.OrderedDict = collections.OrderedDict()
        self.taps: dict[int, tuple] = {}
        self.closed = False
        self._next_key = 0

    def video_taps(self, k: int) -> tuple:
        """(taps_h, taps_w) resampling (k, k) low-res logits over the letterboxed frame to
        the video's size (`unletterbox_taps`), made on first use."""
        if k not in self.taps:
            hw = (self.video_height, self.video_width)
            self.taps[k] = unletterbox_taps(*hw, self.image_size, k)
        return self.taps[k]

    def check_open(self) -> None:
        """ValueError if the session was closed."""
        if self.closed:
            raise ValueError(
                "this video state was closed (VideoPredictor.close released its history "
                "and frames); start a new session with init_state"
            )

    @property
    def obj_ids(self) -> list:
        """Object ids in the order they were added (the row order of every output)."""
        return list(self.tracks)

    def frame_index(self, frame_idx: int) -> int:
        """frame_idx as an int; IndexError outside [0, num_frames)."""
        f = int(frame_idx)
        if not 0 <= f < self.num_frames:
            raise IndexError(f"frame_idx {frame_idx} outside [0, {self.num_frames})")
        return f

    def letterboxed(self, f: int) -> np.ndarray:
        """Frame f as the model's (S, S, 3) uint8 input (letterboxed, top-left, pad 114)."""
        return letterbox(self.frames[f], self.image_size)

    def track(self, obj_id: Any) -> ObjectTrack:
        """The object's track, created (with a fresh history key) on first use."""
        if obj_id not in self.tracks:
            self.tracks[obj_id] = ObjectTrack(key=self._next_key)
            self._next_key += 1
        return self.tracks[obj_id]
