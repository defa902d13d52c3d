"""Host-side bookkeeping of concept tracking: which detections are new objects, which
masklets are matched, kept alive, removed or confirmed (numpy, no model calls).

These are the heuristics of ultralytics' SAM3VideoSemanticPredictor with its defaults:

* association: a detection matches a masklet when their binarised masks overlap with IoU
  >= `assoc_iou_thresh`; a detection matching none (and scoring >= `new_det_thresh`)
  starts a new object; a masklet with a non-empty mask is "unmatched" when no detection
  reaches IoU `trk_assoc_iou_thresh` with it, "empty" when its mask is empty;
* keep-alive: a new object starts at `init_trk_keep_alive`; each frame a matched masklet
  gains 1 (up to `max_trk_keep_alive`), an unmatched or empty one loses 1 (down to
  `min_trk_keep_alive`; empty ones only with `decrease_trk_keep_alive_for_empty_masklets`);
  a masklet that has been unmatched at least once is removed once its count is <= 0;
* hot start (off by default, `hotstart_delay` 0): within `hotstart_delay` frames of its
  first appearance a masklet is removed after `hotstart_unmatch_thresh` unmatched frames,
  or after `hotstart_dup_thresh` frames matched by the same detection as an older one;
* confirmation: a masklet is confirmed once matched (or newly detected) on
  `confirm_after` consecutive frames; the status is reported, it suppresses nothing.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple

import numpy as np

UNCONFIRMED, CONFIRMED = 1, 2


class Association(NamedTuple):
    """One frame's detections (N) against its masklets (M)."""

    new_dets: np.ndarray  # (k,) int64 indices of detections that start new objects
    unmatched_ids: np.ndarray  # object ids of non-empty masklets no detection matches
    matched_ids: list[np.ndarray]  # per detection, the ids of the masklets it matches
    empty_ids: np.ndarray  # object ids of masklets with an empty mask


def associate(
    ious: np.ndarray,
    det_scores: np.ndarray,
    trk_ids: np.ndarray,
    trk_nonempty: np.ndarray,
    assoc_iou_thresh: float,
    trk_assoc_iou_thresh: float,
    new_det_thresh: float,
) -> Association:
    """ious (N, M) mask IoU of detections against masklets `trk_ids` (M,), det_scores (N,),
    trk_nonempty (M,) bool. See the module docstring."""
    n, m = ious.shape
    no_ids = np.zeros(0, trk_ids.dtype)
    if m == 0:  # no masklet yet: every detection is new (no score check, as the reference)
        return Association(np.arange(n), no_ids, [no_ids] * n, no_ids)
    if n == 0:
        return Association(np.zeros(0, np.int64), trk_ids[trk_nonempty], [], trk_ids[~trk_nonempty])
    trk_matched = (ious >= trk_assoc_iou_thresh).any(axis=0)
    hits = ious >= assoc_iou_thresh
    is_new = (det_scores >= new_det_thresh) & ~hits.any(axis=1)
    return Association(
        new_dets=np.flatnonzero(is_new),
        unmatched_ids=trk_ids[trk_nonempty & ~trk_matched],
        matched_ids=[trk_ids[row] for row in hits],
        empty_ids=trk_ids[~trk_nonempty],
    )


def cap_new_objects(new_dets: np.ndarray, det_scores: np.ndarray, room: int) -> np.ndarray:
    """At most `room` new detections: all of them if they fit, else the best-scoring ones,
    by decreasing score."""
    room = max(room, 0)
    if len(new_dets) <= room:
        return new_dets
    order = np.argsort(det_scores[new_dets], kind="stable")[::-1]
    return new_dets[order[:room]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeepAliveOptions:
    """The reference's masklet lifetime settings (its constructor defaults)."""

    init_trk_keep_alive: int = 10
    max_trk_keep_alive: int = 10
    min_trk_keep_alive: int = -4
    decrease_trk_keep_alive_for_empty_masklets: bool = True
    hotstart_delay: int = 0
    hotstart_unmatch_thresh: int = 3
    hotstart_dup_thresh: int = 3

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> KeepAliveOptions:
        """The options named in kwargs, the defaults for the others; ValueError on an
        unknown name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(names)}")
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if (
            self.hotstart_delay > 0
            and max(self.hotstart_unmatch_thresh, self.hotstart_dup_thresh) > self.hotstart_delay
        ):
            raise ValueError(
                "hotstart_unmatch_thresh and hotstart_dup_thresh must be <= hotstart_delay "
                f"({self.hotstart_delay}); got {self.hotstart_unmatch_thresh}, "
                f"{self.hotstart_dup_thresh}"
            )


@dataclasses.dataclass
class MaskletBook:
    """Per-object lifetime records of one session (forward tracking)."""

    options: KeepAliveOptions
    first_frame: dict = dataclasses.field(default_factory=dict)
    unmatched_frames: dict = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )
    keep_alive: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    overlap_frames: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    removed: set = dataclasses.field(default_factory=set)

    def update(self, frame_idx: int, assoc: Association, new_ids: np.ndarray) -> set[int]:
        """Record frame `frame_idx` and return the ids to remove on it."""
        opt = self.options
        for i in new_ids.tolist():
            self.first_frame.setdefault(i, frame_idx)
            self.keep_alive[i] = opt.init_trk_keep_alive
        matched = set().union(*(ids.tolist() for ids in assoc.matched_ids))
        for i in matched:
            self.keep_alive[i] = min(opt.max_trk_keep_alive, self.keep_alive[i] + 1)
        losing = assoc.unmatched_ids.tolist()
        for i in losing:
            self.unmatched_frames[i].append(frame_idx)
        if opt.decrease_trk_keep_alive_for_empty_masklets:
            losing = losing + assoc.empty_ids.tolist()
        for i in losing:
            self.keep_alive[i] = max(opt.min_trk_keep_alive, self.keep_alive[i] - 1)

        gone: set[int] = set()
        hot_from = frame_idx - opt.hotstart_delay
        for i, frames in self.unmatched_frames.items():
            if i in self.removed or i in gone:
                continue
            young = self.first_frame[i] > hot_from
            if (young and len(frames) >= opt.hotstart_unmatch_thresh) or self.keep_alive[i] <= 0:
                gone.add(i)
        self._record_duplicates(frame_idx, assoc)
        for (_, i), frames in self.overlap_frames.items():
            if i in self.removed or i in gone:
                continue
            if self.first_frame[i] > hot_from and len(frames) >= opt.hotstart_dup_thresh:
                gone.add(i)
        self.removed |= gone
        return gone

    def _record_duplicates(self, frame_idx: int, assoc: Association) -> None:
        """Masklets matched by one detection: each later one overlaps the earliest."""
        for ids in assoc.matched_ids:
            if len(ids) < 2:
                continue
            first = min(ids.tolist(), key=lambda i: self.first_frame[i])
            for i in ids.tolist():
                if i != first:
                    self.overlap_frames[(first, i)].append(frame_idx)


def update_confirmation(
    status: np.ndarray,
    streak: np.ndarray,
    prev_ids: np.ndarray,
    ids: np.ndarray,
    assoc: Association,
    new_ids: np.ndarray,
    confirm_after: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Carry (status, consecutive-detection streak), aligned with prev_ids, over to `ids`
    (new objects start UNCONFIRMED with streak 0), then count this frame: matched or new
    objects extend their streak, the others restart at 0; a streak of `confirm_after`
    confirms."""
    where = {i: k for k, i in enumerate(prev_ids.tolist())}
    carried = [where.get(i) for i in ids.tolist()]
    new_status = np.array([UNCONFIRMED if k is None else status[k] for k in carried], np.int64)
    new_streak = np.array([0 if k is None else streak[k] for k in carried], np.int64)
    hit = np.isin(ids, new_ids)
    for matched in assoc.matched_ids:
        hit |= np.isin(ids, matched)
    new_streak = np.where(hit, new_streak + 1, 0)
    new_status[new_streak >= confirm_after] = CONFIRMED
    return new_status, new_streak
