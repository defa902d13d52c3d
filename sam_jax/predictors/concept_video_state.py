"""The concept video predictor's session state, outputs and prompt parsing
(sam_jax.predictors.concept_video)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
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


def parse_boxes(
    box: Any, box_labels: Any, hw: tuple[int, int]
) -> tuple[jnp.ndarray, jnp.ndarray] | None:
    """xyxy pixels (K, 4) -> ((1, K, 4) cxcywh in [0, 1], (1, K) labels)."""
    if box is None:
        if box_labels is not None:
            raise ValueError("box_labels given without box")
        return None
    b = np.asarray(box, np.float32)
    b = b[None] if b.ndim == 1 else b
    if b.ndim != 2 or b.shape[-1] != 4 or not len(b):
        raise ValueError(f"box must be (4,) or (K, 4) x0, y0, x1, y1; got shape {b.shape}")
    lab = np.ones(len(b), np.int32) if box_labels is None else np.asarray(box_labels)
    if lab.shape != (len(b),) or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"box_labels must be {len(b)} values of 1 / 0; got {box_labels!r}")
    h, w = hw
    cxcywh = np.stack(
        [(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
         (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=-1,
    )  # fmt: skip
    return jnp.asarray(cxcywh[None]), jnp.asarray(lab[None].astype(np.int32))
