"""The concept video predictor's session state, outputs and prompt parsing
(sam_jax.predictors.concept_video)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from sam_jax.predictors.concept_video_assoc import MaskletBook
from sam_jax.video_io import FrameSource

REMOVED_SCORE = -1e4  # the reference's score of a removed object (below any conf)


class ConceptFrame(NamedTuple):
    """One frame's objects, by increasing id."""

    frame_idx: int
    obj_ids: np.ndarray  # (N,) int64
    masks: np.ndarray  # (N, H, W) bool at the original frame size
    scores: np.ndarray  # (N,) float32, each object's first detection score


class FrameDetails(NamedTuple):
    """What `ConceptFrame` was made from: every candidate object of the frame (the tracked
    ones, removed ones included, then the new ones), by increasing id."""

    obj_ids: np.ndarray  # (n,) int64
    low_res: Any  # (n, m, m) float32 mask logits (tracker's / new detection's), a jax.Array
    scores: np.ndarray  # (n,) first detection scores (REMOVED_SCORE if removed here)
    tracker_scores: np.ndarray  # (n,) sigmoid of the tracker's object score (new: det score)
    classes: np.ndarray  # (n,) int64 caption index of each object's first detection
    removed_ids: np.ndarray  # ids removed on this frame
    unconfirmed_ids: np.ndarray  # live ids not confirmed yet


@dataclasses.dataclass
class ConceptVideoState:
    """One session: frames, prompts, live objects and their memory bank, bookkeeping."""

    frames: FrameSource
    num_frames: int
    video_hw: tuple[int, int]
    book: MaskletBook
    names: list[str] = dataclasses.field(default_factory=list)
    use_text: bool = False
    text: Any = None  # encode_text's dict for `names`
    boxes: dict = dataclasses.field(default_factory=dict)  # frame -> (boxes, labels)
    next_frame: int | None = None  # the next frame to process (None: not prompted yet)
    bank: Any = None  # MemoryBank on the device, rows = obj_ids then padding
    obj_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    max_obj_id: int = -1
    first_scores: dict = dataclasses.field(default_factory=dict)  # id -> det score
    classes: dict = dataclasses.field(default_factory=dict)  # id -> caption index
    status: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    streak: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    pending: ConceptFrame | None = None  # the prompted frame's output, not yet yielded
    details: FrameDetails | None = None  # of the last processed frame


def parse_captions(text: Any, box: Any) -> tuple[list[str], bool]:
    """The prompt's captions and whether they are text (else ["visual"] for boxes alone)."""
    if isinstance(text, str):
        text = [text]
    if text is not None and (not text or not all(isinstance(t, str) for t in text)):
        raise ValueError(f"text must be a caption or a non-empty list of captions; got {text!r}")
    if text is None and box is None:
        raise ValueError("give text=..., exemplar boxes box=..., or both")
    if text is not None and box is not None and len(text) > 1:
        raise ValueError("exemplar boxes go with one caption at most")
    return (list(text), True) if text is not None else (["visual"], False)
