"""Concept tracking in video with SAM 3: every instance of a caption, found and followed.

    vp = ConceptVideoPredictor(concept_model, concept_params, tracker_model, tracker_params)
    state = vp.init_state(frames)            # (T, H, W, 3) uint8 RGB, a folder, a video file
    vp.add_prompt(state, frame_idx=0, text="a red car")
    for frame_idx, obj_ids, masks, scores in vp.propagate_in_video(state):
        ...                                  # masks (N, H, W) bool at the original size

`concept_model` is `sam3_semantic`, `tracker_model` is `sam3`, both loaded from one SAM 3
checkpoint. This reproduces ultralytics' SAM3VideoSemanticPredictor with its constructor
defaults, frame by frame and forward only. On each frame:

1. the frame is stretched to S x S and scaled to [-1, 1]; one pass of the ViT trunk feeds
   the detector's neck and the tracker's neck (the concept model's trunk weights);
2. the detector runs the caption(s) (and the frame's exemplar boxes, if any): queries with
   sigmoid(logit) > `score_threshold_detection` are this frame's detections (no NMS, no
   presence factor); without a caption only a frame with exemplar boxes detects;
3. the tracker propagates every live object from its memory (`track`);
4. detections and masklets are associated by mask IoU and the lifetime rules of
   `concept_video_assoc` decide new objects, removals and confirmation;
5. the tracked objects' memories are encoded from their masks (shrinking masks suppressed,
   scores by mask area, half-precision memory); removed objects leave the bank; each new
   detection becomes an object whose conditioning frame is its detection mask;
6. outputs, by increasing object id: tracked objects' masks and new objects' detection
   masks, bilinear to the frame size, > 0; objects whose first detection score is not above
   `conf` (removed ones) or whose mask is empty are left out; with several left, each pixel
   goes to the object with the highest tracker score (new objects: their detection score),
   which may leave an object listed with an empty mask, as in the reference. `scores` are
   each object's first detection score.

Object pointers reach back num_maskmem + 1 = 8 frames (the reference prunes older
non-conditioning outputs). `state.details` holds the last frame's candidates (removed ones
included) with their low-res logits and tracker scores, and the unconfirmed ids.
Compute: one trunk pass, one detector pass and one tracker pass per frame, each a
jit-compiled call with object counts padded to powers of two (sam_jax.tracking.bucket).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from sam_jax.predictors import concept_video_compiled as compiled
from sam_jax.predictors.concept import is_concept_model, parse_boxes
from sam_jax.predictors.concept_video_assoc import (
    UNCONFIRMED,
    KeepAliveOptions,
    MaskletBook,
    associate,
    cap_new_objects,
    update_confirmation,
)
from sam_jax.predictors.concept_video_state import (
    REMOVED_SCORE,
    ConceptFrame,
    ConceptVideoState,
    FrameDetails,
    parse_captions,
)
from sam_jax.text import CLIPTokenizer
from sam_jax.tracking.memory_bank import bucket
from sam_jax.transforms import resize_bilinear_u8
from sam_jax.video_io import open_frames

__all__ = ["ConceptFrame", "ConceptVideoPredictor", "ConceptVideoState", "FrameDetails"]


class ConceptVideoPredictor:
    """Concept segmentation and tracking in video with SAM 3 (see the module docstring).

    Options are the reference's constructor settings that its default path reads:
    score_threshold_detection, assoc_iou_thresh, trk_assoc_iou_thresh, new_det_thresh,
    the keep-alive and hot-start counters (`KeepAliveOptions`), max_num_objects (-1: no
    limit), masklet_confirmation_consecutive_det_thresh; conf is the output score
    threshold (the reference's `conf`, 0.25).
    """

    def __init__(
        self,
        concept_model: Any,
        concept_params: Any,
        tracker_model: Any,
        tracker_params: Any,
        *,
        score_threshold_detection: float = 0.5,
        assoc_iou_thresh: float = 0.5,
        trk_assoc_iou_thresh: float = 0.5,
        new_det_thresh: float = 0.0,
        max_num_objects: int = -1,
        masklet_confirmation_consecutive_det_thresh: int = 3,
        conf: float = 0.25,
        **keep_alive: Any,
    ) -> None:
        if not is_concept_model(concept_model):
            raise ValueError(
                "concept_model must be SAM 3's concept model (variant 'sam3_semantic')"
            )
        if not hasattr(tracker_model.config, "num_maskmem"):
            raise ValueError("tracker_model must be SAM 3's tracker (variant 'sam3')")
        compiled.dual_neck_config(concept_model, tracker_model)  # raises if they differ
        tcfg = tracker_model.config
        if concept_model.config.embed_size * 4 != tcfg.mask_input_size:
            raise ValueError("the detector's and the tracker's mask sizes differ")
        self.concept_model, self.concept_params = concept_model, concept_params
        self.tracker_model, self.tracker_params = tracker_model, tracker_params
        self.neck_params = compiled.dual_neck_params(concept_params, tracker_params)
        self.score_threshold_detection = score_threshold_detection
        self.assoc_iou_thresh, self.trk_assoc_iou_thresh = assoc_iou_thresh, trk_assoc_iou_thresh
        self.new_det_thresh = new_det_thresh
        self.max_num_objects = max_num_objects if max_num_objects > 0 else 10000
        self.confirm_after = masklet_confirmation_consecutive_det_thresh
        self.conf = conf
        self.keep_alive = KeepAliveOptions.from_kwargs(keep_alive)
        self.tokenizer = CLIPTokenizer()
        # The reference prunes non-conditioning outputs older than num_maskmem frames, so
        # pointers reach num_maskmem + 1 frames back (at most max_obj_ptrs - 1).
        self._bank_dims = {
            "grid": tcfg.embed_size,
            "mem_dim": tcfg.mem_dim,
            "ptr_dim": tcfg.d_model,
            "num_recent": tcfg.num_maskmem - 1,
            "num_ptr": min(tcfg.num_maskmem + 1, tcfg.max_obj_ptrs_in_encoder - 1),
        }

    @property
    def trace_counts(self) -> collections.Counter:
        """How often each jitted function was traced, process-wide."""
        return compiled.TRACE_COUNTS

    # ------------------------------------------------------------------------- session

    def init_state(self, video: Any) -> ConceptVideoState:
        """A session over `video`: (T, H, W, 3) uint8 RGB frames, a folder of images or a
        video file (as VideoPredictor.init_state)."""
        frames = open_frames(video)
        if len(frames) == 0:
            raise ValueError("the video has no frames")
        return ConceptVideoState(
            frames, len(frames), tuple(frames.hw), MaskletBook(self.keep_alive)
        )

    def add_prompt(
        self,
        state: ConceptVideoState,
        frame_idx: int = 0,
        text: str | list[str] | None = None,
        box: Any = None,
        box_labels: Any = None,
    ) -> ConceptFrame:
        """Prompt the session and process frame `frame_idx` (the first frame to track, or
        the next unprocessed one once tracking runs). `text`: caption(s), which hold for
        every later frame; `box` (K, 4) xyxy pixel exemplars with `box_labels` (K,) 1 / 0
        (all positive by default) hold for this frame only, with the caption (one at most)
        or "visual". As in the reference, a prompt without text turns caption detection off
        for later frames. Returns the frame's output (also yielded first by
        `propagate_in_video`)."""
        if state.next_frame is not None and frame_idx != state.next_frame:
            raise ValueError(
                f"prompts apply to the next frame to process ({state.next_frame}); "
                f"got frame_idx={frame_idx}"
            )
        if not 0 <= frame_idx < state.num_frames:
            raise ValueError(f"frame_idx {frame_idx} out of range for {state.num_frames} frames")
        names, use_text = parse_captions(text, box)
        boxes = parse_boxes(box, box_labels, state.video_hw)
        if names != state.names:
            ids = jnp.asarray(self.tokenizer(names, self.concept_model.config.text.context_length))
            state.text = compiled.encode_text(self.concept_model, self.concept_params, ids)
            state.names = names
        state.use_text = use_text
        if boxes is not None:
            state.boxes[frame_idx] = boxes
        state.next_frame = frame_idx
        state.pending = self._step(state)
        return state.pending

    def propagate_in_video(
        self, state: ConceptVideoState, max_frame_num_to_track: int | None = None
    ) -> Iterator[ConceptFrame]:
        """Yield the prompted frame's output (if not yielded yet), then process and yield
        the following frames in order, up to the video's end or `max_frame_num_to_track`
        more frames."""
        if state.next_frame is None:
            raise ValueError("no prompt: call add_prompt(state, text=...) first")
        if state.pending is not None:
            out, state.pending = state.pending, None
            yield out
        end = state.num_frames
        if max_frame_num_to_track is not None:
            end = min(end, state.next_frame + max(0, int(max_frame_num_to_track)))
        while state.next_frame < end:
            yield self._step(state)

    # ------------------------------------------------------------------------ one frame

    def _perceive(self, state: ConceptVideoState, f: int):
        cfg = self.concept_model.config
        s = cfg.image_size
        x = resize_bilinear_u8(state.frames[f], s, s).astype(np.float32)
        x = (x - np.float32(cfg.pixel_mean)) / np.float32(cfg.pixel_std)
        return compiled.perceive(
            self.concept_model, self.tracker_model, self.neck_params, self.concept_params,
            self.tracker_params, jnp.asarray(x[None]),
        )  # fmt: skip

    def _detections(self, state: ConceptVideoState, f: int, features):
        """-> (device mask logits (T * Q, m, m) or None, kept query indices, their scores)."""
        if not (state.use_text or f in state.boxes):
            return None, np.zeros(0, np.int64), np.zeros(0, np.float32)
        # Without exemplars the reference still passes an empty box prompt: the geometry
        # encoder's CLS token joins the caption's tokens on every frame.
        t = len(state.names)
        empty = (jnp.zeros((t, 0, 4), jnp.float32), jnp.zeros((t, 0), jnp.int32))
        boxes, labels = state.boxes.get(f, empty)
        probs, masks = compiled.detect(
            self.concept_model, self.concept_params, features, state.text, boxes, labels
        )
        flat = np.asarray(probs).reshape(-1)
        keep = np.flatnonzero(flat > self.score_threshold_detection)
        return masks, keep, flat[keep]

    def _step(self, state: ConceptVideoState) -> ConceptFrame:
        f = state.next_frame
        features, (vision, h0, h1) = self._perceive(state, f)
        det_masks, det_idx, det_scores = self._detections(state, f, features)
        q = self.concept_model.config.detector.num_queries
        live = state.obj_ids
        n = len(live)
        trk_low, ious, nonempty, tscores = None, np.zeros((len(det_idx), n), np.float32), [], []
        if n:
            trk_low, ptrs, tscores = compiled.track(
                self.tracker_model, self.tracker_params, state.bank, f, vision, h0, h1
            )
            tscores = np.asarray(tscores)[:n]
            src = det_masks if det_masks is not None else trk_low[:1]
            iou_all, nonempty = compiled.match(src, trk_low)
            nonempty = np.asarray(nonempty)[:n]
            if len(det_idx):
                ious = np.asarray(iou_all)[det_idx][:, :n]
        assoc = associate(
            ious, det_scores, live, np.asarray(nonempty, bool), self.assoc_iou_thresh,
            self.trk_assoc_iou_thresh, self.new_det_thresh,
        )  # fmt: skip
        new = cap_new_objects(assoc.new_dets, det_scores, self.max_num_objects - n)
        new_ids = state.max_obj_id + 1 + np.arange(len(new), dtype=np.int64)
        removed = state.book.update(f, assoc, new_ids)
        if n:
            valid = np.arange(state.bank.num_objects) < n
            state.bank = compiled.file_tracked(
                self.tracker_model, self.tracker_params, state.bank, f, vision, trk_low,
                ptrs, jnp.asarray(valid),
            )  # fmt: skip
        for i, k in zip(new_ids.tolist(), new.tolist(), strict=True):
            state.first_scores[i] = float(det_scores[k])
            state.classes[i] = int(det_idx[k] // q)
        state.max_obj_id += len(new)
        out = self._outputs(state, f, trk_low, det_masks, det_idx[new], det_scores[new],
                            new_ids, np.asarray(tscores, np.float32), removed)  # fmt: skip
        self._update_objects(state, f, assoc, new_ids, removed, vision, h0, h1, det_masks,
                             det_idx[new])  # fmt: skip
        state.next_frame = f + 1
        return out

    def _outputs(self, state, f, trk_low, det_masks, new_rows, new_scores, new_ids, tscores,
                 removed) -> ConceptFrame:  # fmt: skip
        """The frame's output from the tracked objects' logits and the new detections'."""
        live = state.obj_ids
        ids = np.concatenate([live, new_ids])
        scores = np.array(
            [REMOVED_SCORE if i in removed else state.first_scores[i] for i in ids.tolist()],
            np.float32,
        )
        track_scores = np.concatenate([tscores, new_scores]).astype(np.float32)
        m = self.tracker_model.config.mask_input_size
        trk = trk_low if trk_low is not None else jnp.zeros((1, m, m), jnp.float32)
        det = det_masks if det_masks is not None else jnp.zeros((1, m, m), jnp.float32)
        nb = bucket(len(ids))
        idx = np.zeros(nb, np.int32)
        idx[: len(live)] = np.arange(len(live))
        idx[len(live) : len(ids)] = trk.shape[0] + new_rows
        keep, sc = np.zeros(nb, bool), np.zeros(nb, np.float32)
        keep[: len(ids)], sc[: len(ids)] = scores > self.conf, track_scores
        h, w = state.video_hw
        low, masks, shown = compiled.frame_masks(
            trk, det, jnp.asarray(idx), jnp.asarray(keep), jnp.asarray(sc), int(h), int(w)
        )
        masks, shown = np.asarray(masks)[: len(ids)], np.asarray(shown)[: len(ids)]
        state.details = FrameDetails(
            obj_ids=ids,
            low_res=low[: len(ids)],  # left on the device until read
            scores=scores,
            tracker_scores=track_scores,
            classes=np.array([state.classes[i] for i in ids.tolist()], np.int64),
            removed_ids=np.array(sorted(removed), np.int64),
            unconfirmed_ids=np.zeros(0, np.int64),
        )
        return ConceptFrame(f, ids[shown], masks[shown], scores[shown])

    def _update_objects(self, state, f, assoc, new_ids, removed, vision, h0, h1, det_masks,
                        new_rows) -> None:  # fmt: skip
        """Drop removed objects from the bank, add the new ones, update confirmation."""
        prev = state.obj_ids
        survivors = np.flatnonzero(~np.isin(prev, list(removed)))
        added = np.flatnonzero(~np.isin(new_ids, list(removed)))
        ids = np.concatenate([prev[survivors], new_ids[added]])
        state.status, state.streak = update_confirmation(
            state.status, state.streak, prev, ids, assoc, new_ids, self.confirm_after
        )
        state.details = state.details._replace(unconfirmed_ids=ids[state.status == UNCONFIRMED])
        cap = bucket(len(ids))
        k = len(added)
        if state.bank is None:
            state.bank = compiled.empty_memory(cap, num_frames=state.num_frames, **self._bank_dims)
        elif len(survivors) < len(prev) or cap != state.bank.num_objects:
            idx = np.zeros(cap, np.int32)
            idx[: len(survivors)] = survivors
            keep = np.arange(cap) < len(survivors)
            state.bank = compiled.take_rows(state.bank, jnp.asarray(idx), jnp.asarray(keep))
        if k:
            kb = bucket(k)
            rows = np.full(kb, cap, np.int32)  # out of range: dropped
            rows[:k] = len(survivors) + np.arange(k)
            det_rows = np.zeros(kb, np.int32)
            det_rows[:k] = new_rows[added]
            state.bank = compiled.add_objects(
                self.tracker_model, self.tracker_params, state.bank, jnp.asarray(rows), f,
                vision, h0, h1, det_masks, jnp.asarray(det_rows),
            )  # fmt: skip
        state.obj_ids = ids
