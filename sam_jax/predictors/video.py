"""SAM 2 video predictor: prompts on any frame, propagation as scanned chunks.

vp = sam_jax.VideoPredictor(model, params)
state = vp.init_state(frames)        # (T, H, W, 3) uint8 RGB, a folder of frames, a video file
frame_idx, obj_ids, logits = vp.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                                      points=[[210, 350]], labels=[1])
for frame_idx, obj_ids, logits in vp.propagate_in_video(state):
    masks = logits > 0              # (num_objects, H, W) at the original size

Semantics are those of Meta's SAM 2 video predictor with per-object tracking: each object
keeps its own conditioning frames and history, so objects may be added at any time, also
after propagation. A prompt on a frame the object was not tracked on makes a conditioning
frame (no memory used); a prompt on a tracked frame is a correction (memory and the
previous logits used), stored as a non-conditioning output, or as a conditioning one with
`add_all_frames_to_correct_as_cond=True` (and, unlike Meta's code, which would drop it,
when the frame already is one of the object's conditioning frames: it replaces it).
Point-prompted masks are binarised for the memory. Full history, up to 16 object pointers,
float32 memory; no non-overlap constraint unless `non_overlap_masks=True`. Prompted frames
(conditioning or corrections) keep their prompted output during propagation. Preprocessing
is the image predictor's (letterbox to S, top-left, pad 114). Also Meta's:
`clear_all_prompts_in_frame`, `remove_object` (-> (obj_ids, updated_frames)),
`propagate_in_video_preflight`, `normalize_coords=False` (prompts as fractions of the
frame); beyond: one call may prompt several objects (obj_id a list), a closed state is
refused (ValueError), and `sam_jax.StreamTracker` runs a session on frames fed one by one.

Compute. Propagation runs chunks of `chunk_size` frames, each one jit-compiled `lax.scan`
of the pure `track_step` over a fixed-size `MemoryBank` (sam_jax.tracking). Compiled shapes
depend on bucketed counts only (objects, conditioning frames per object, stored
corrections per chunk: powers of two) and on the number of points of a prompt; prompt
values, frame indices and video length never recompile. Memory stays flat: the bank is
fixed-size, only one chunk of frames and features is alive, outputs are yielded and
dropped, and the per-frame history (needed to resume or re-propagate from any frame) lives
in a `FrameHistory` store, in RAM or in disk files (sam_jax.predictors.history). By default
the image encoder runs ahead of each chunk, one frame per call; `encode_in_scan=True` runs
it inside the scan body instead (same results to float rounding). Frames where every
object is prompted run no network at all.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.convert.hf_reader import is_image_only
from sam_jax.predictors import video_compiled as compiled
from sam_jax.predictors import video_propagation as vprop
from sam_jax.predictors.history import HISTORY_KINDS, make_history
from sam_jax.predictors.video_prompts import mask_prompt, object_calls, point_prompt
from sam_jax.predictors.video_state import ObjectTrack, PromptOutput, VideoState
from sam_jax.tracking.memory_bank import MemoryBank, bank_from_history, bucket, empty_bank
from sam_jax.tracking.track_step import NO_OBJ_SCORE
from sam_jax.video_io import open_frames


class VideoPredictor:
    """Interactive video segmentation and tracking with a SAM 2 / 2.1 model (see the module
    docstring). All jitted functions count their traces in `trace_counts`.

    Options: chunk_size frames per compiled scan; encode_in_scan (image encoder inside the
    scan, else ahead of each chunk, encode_batch frames per call); non_overlap_masks
    (outputs: each pixel kept by the highest-scoring object only); non_overlap_for_memory
    (the same on the masks that are encoded into memory, across the objects tracked
    together); add_all_frames_to_correct_as_cond; history ("auto", "ram" or "disk": where
    the per-frame memories of tracked frames live; "auto" uses disk once one object's full
    history, (g * g * mem_dim + m * m) float32 per frame, would exceed history_ram_limit
    bytes: 8 MiB by default, about 6 frames at 1024 px and 100 at 256 px with mem_dim 64);
    history_dir (parent folder of the disk files, default the system temp dir);
    feature_cache_size (frames whose features prompts reuse); progress (tqdm bar while
    propagating).
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        *,
        chunk_size: int = 8,
        encode_in_scan: bool = False,
        encode_batch: int = 1,
        non_overlap_masks: bool = False,
        non_overlap_for_memory: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        history: str = "auto",
        history_ram_limit: int = 8 << 20,
        history_dir: str | None = None,
        feature_cache_size: int = 4,
        progress: bool = True,
    ) -> None:
        cfg = model.config
        if not hasattr(cfg, "num_maskmem"):
            raise ValueError("VideoPredictor needs a SAM 2 / SAM 2.1 model")
        if is_image_only(params):
            raise ValueError(
                "these SAM 2 variables come from an image-only file (a transformers Sam2Model: "
                "no memory path); track with a Sam2VideoModel or Meta checkpoint"
            )
        if history not in HISTORY_KINDS:
            raise ValueError(f"history must be 'auto', 'ram' or 'disk', got {history!r}")
        self.model, self.params, self.config = model, params, cfg
        self.image_size = int(cfg.image_size)
        self.grid = cfg.embed_size
        self.mask_size = cfg.mask_input_size
        # a mask prompt's output grid: S/4 as in the reference (4g for SAM 2, < 4g for SAM 3)
        self.mask_output_size = self.image_size // 4
        self.chunk_size = int(chunk_size)
        self.encode_in_scan = encode_in_scan
        self.encode_batch = max(1, int(encode_batch))
        self.non_overlap_masks = non_overlap_masks
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.history, self.history_ram_limit = history, history_ram_limit
        self.history_dir = history_dir
        self.feature_cache_size = max(1, int(feature_cache_size))
        self.progress = progress
        self.non_overlap_for_memory = non_overlap_for_memory
        self._bank_dims = {
            "grid": self.grid,
            "mem_dim": cfg.mem_dim,
            "ptr_dim": cfg.d_model,
            "num_recent": cfg.num_maskmem - 1,
            "num_ptr": cfg.max_obj_ptrs_in_encoder - 1,
        }
        m, p = model, params
        self._encode = functools.partial(compiled.encode_frames, m, p)
        self._prompt = functools.partial(compiled.prompt_frame, m, p)
        self._mask_prompt = functools.partial(compiled.mask_prompt, m, p)
        self._prompt_memory = functools.partial(compiled.prompt_memory, m, p)
        self._scan = lambda bank, chunk, table: compiled.scan_chunk(
            m, p, bank, chunk, table, non_overlap_for_memory
        )

    @property
    def trace_counts(self) -> collections.Counter:
        """How many times each jitted function was traced (compiled), process-wide: the
        compiled functions are shared by every predictor of an equal model."""
        return compiled.TRACE_COUNTS

    # ------------------------------------------------------------------ state

    def init_state(self, frames: Any, *, history: str | None = None) -> VideoState:
        """A new session over `frames`: a (T, H, W, 3) uint8 RGB array (used as is), a list
        of (H, W, 3) frames, a folder of JPEG/PNG images or a video file (needs OpenCV,
        imageio or PyAV). Frames are read and encoded on demand. history overrides the
        predictor's choice of history store for this session."""
        src = open_frames(frames)
        cfg = self.config
        hist = make_history(
            history or self.history,
            len(src),
            self.grid,
            self.mask_size,
            cfg.mem_dim,
            cfg.d_model,
            ram_limit=self.history_ram_limit,
            directory=self.history_dir,
        )
        return VideoState(src, self.image_size, hist)

    def reset_state(self, state: VideoState) -> None:
        """Forget every object, prompt and result (the frames stay)."""
        state.check_open()
        state.tracks.clear()
        state.history.clear()
        state.features.clear()

    def remove_object(
        self, state: VideoState, obj_id: Any, strict: bool = False, need_output: bool = True
    ) -> tuple[list, list[tuple[int, np.ndarray]]]:
        """Drop an object, its prompts and results (Meta's `remove_object`). Returns
        (remaining obj_ids, updated_frames): with need_output, (frame_idx, logits
        (num_remaining, H, W)) for every frame the object had prompts on, else []; removing
        the last object resets the session and returns ([], []). An unknown id raises
        RuntimeError with strict, else changes nothing."""
        state.check_open()
        tr = state.tracks.get(obj_id)
        if tr is None:
            if strict:
                raise RuntimeError(f"no object id {obj_id}; existing ids: {state.obj_ids}")
            return state.obj_ids, []
        if len(state.tracks) == 1:
            self.reset_state(state)
            return [], []
        frames = sorted(set(tr.points) | set(tr.masks))
        del state.tracks[obj_id]
        state.history.remove(tr.key)
        updated = [(f, self._frame_logits(state, f)[2]) for f in frames] if need_output else []
        return state.obj_ids, updated

    def clear_all_prompts_in_frame(
        self, state: VideoState, frame_idx: int, obj_id: Any, need_output: bool = True
    ) -> tuple[int, list, np.ndarray] | None:
        """Remove object `obj_id`'s points or mask on `frame_idx` (Meta's
        `clear_all_prompts_in_frame`, see `ObjectTrack.clear_prompts`): a conditioning frame
        there becomes a non-conditioning output. Returns (frame_idx, obj_ids, logits
        (num_objects, H, W)) on that frame with need_output, else None. An unknown id
        changes nothing (Meta's code would add an object without prompts)."""
        state.check_open()
        f = state.frame_index(frame_idx)
        if obj_id in state.tracks:
            state.tracks[obj_id].clear_prompts(f, state.history)
        return self._frame_logits(state, f) if need_output else None

    def close(self, state: VideoState) -> None:
        """Release a session's disk history, cached features and frame source; every
        method refuses the state afterwards (ValueError). Closing twice is a no-op."""
        if state.closed:
            return
        self.reset_state(state)
        state.history.close()
        state.frames.close()
        state.closed = True

    # ------------------------------------------------------------------ features

    def _features(self, state: VideoState, f: int):
        cache = state.features
        if f in cache:
            cache.move_to_end(f)
            return cache[f]
        vis, h0, h1 = self._encode(jnp.asarray(state.letterboxed(f))[None])
        cache[f] = (vis[0], h0[0], h1[0])
        while len(cache) > self.feature_cache_size:
            cache.popitem(last=False)
        return cache[f]

    # ------------------------------------------------------------------ memory bank

    def _bank(
        self, state: VideoState, tracks: list[ObjectTrack], f: int, reverse: bool, o: int, c: int
    ) -> MemoryBank:
        """The bank of `tracks` (o object rows, c conditioning slots) for tracking frame f."""
        keys, cond = [tr.key for tr in tracks], [tr.cond_memories() for tr in tracks]
        sizes = {"num_frames": state.num_frames, "num_objects": o, "num_cond": c}
        return bank_from_history(
            state.history, keys, cond, f, reverse=reverse, **sizes, **self._bank_dims
        )

    def memory_state(self, state: VideoState, frame_idx: int, reverse: bool = False) -> MemoryBank:
        """The fixed-shape memory bank every object would attend to when tracking
        `frame_idx` (numpy arrays): its size depends only on the bucketed numbers of
        objects and conditioning frames, never on the video length."""
        state.check_open()
        f = state.frame_index(frame_idx)
        tracks = list(state.tracks.values())
        c = bucket(max((len(tr.cond) for tr in tracks), default=1))
        return self._bank(state, tracks, f, reverse, bucket(len(tracks)), c)

    # ------------------------------------------------------------------ outputs

    def _video_logits(self, state: VideoState, low_res: Sequence[np.ndarray]) -> np.ndarray:
        """Per object (k, k) low-res logits (k = m, or S/4 for a mask prompt's output: an
        (n, m, m) array or a list) -> (n, H, W) float32 logits at the video's size."""
        sizes = {self.mask_size, *(a.shape[-1] for a in low_res)}
        taps = {k: state.video_taps(k) for k in sizes}
        return compiled.video_logits(low_res, taps, self.non_overlap_masks)

    def _frame_logits(self, state: VideoState, f: int) -> tuple[int, list, np.ndarray]:
        """(f, obj_ids, logits (num_objects, H, W)): every object's current output on f."""
        absent = np.full((self.mask_size, self.mask_size), NO_OBJ_SCORE, np.float32)
        low = [tr.current_low_res(state.history, f) for tr in state.tracks.values()]
        low = [absent if x is None else x for x in low]
        return f, state.obj_ids, self._video_logits(state, low)

    # ------------------------------------------------------------------ prompts

    def add_new_points_or_box(
        self,
        state: VideoState,
        frame_idx: int = 0,
        obj_id: Any = 1,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> tuple[int, list, np.ndarray]:
        """Click points (N, 2) (x, y pixels of the original frame) with labels (N,) (1
        foreground, 0 background; all 1 if omitted) and/or a box (4,) x0, y0, x1, y1 for
        object `obj_id` on `frame_idx`. The box goes first, as two corner points.
        clear_old_points=False adds the points to the frame's earlier ones (no box then).
        normalize_coords=False: points and box are fractions of the frame's width and
        height in [0, 1] instead of pixels (Meta's meaning).

        Several objects in one call: obj_id a list of K distinct ids, and points, labels
        and box each None, a list of K entries (entry i is obj_id[i]'s, None allowed) or
        an array with a leading axis of K ((K, N, 2), (K, N), (K, 4)). The same as K calls,
        one per object; every prompt is checked before any is applied.

        Returns (frame_idx, obj_ids, logits (num_objects, H, W) float32) for every object
        on that frame. Recompiles only for a new number of points.
        """
        state.check_open()
        f = state.frame_index(frame_idx)
        opts = {"clear_old_points": clear_old_points, "normalize_coords": normalize_coords}
        calls = object_calls(obj_id, points=points, labels=labels, box=box)
        prompts = [(oid, point_prompt(state, **a, **opts, where=w)) for oid, a, w in calls]
        for oid, (coords, labs) in prompts:
            self._prompt_points(state, f, oid, coords, labs, clear_old_points)
        return self._frame_logits(state, f)

    def _prompt_points(
        self,
        state: VideoState,
        f: int,
        obj_id: Any,
        coords: np.ndarray,
        labs: np.ndarray,
        clear_old_points: bool,
    ) -> None:
        """Run one object's points (model pixels) on frame f; keep the output as a prompt."""
        tr = state.track(obj_id)
        if not clear_old_points and f in tr.points:
            old_c, old_l = tr.points[f]
            coords, labs = np.concatenate([old_c, coords]), np.concatenate([old_l, labs])
        tr.points[f] = (coords, labs)
        tr.masks.pop(f, None)

        is_init, reverse, is_cond = tr.prompt_kind(f, self.add_all_frames_to_correct_as_cond)
        prev = tr.current_low_res(state.history, f)
        vis, h0, h1 = self._features(state, f)
        if is_init:  # no memory is used: an empty bank of the smallest shape
            bank = empty_bank(1, 1, **self._bank_dims)
        else:
            bank = self._bank(state, [tr], f, reverse, 1, bucket(len(tr.cond)))
        low, ptr, score = self._prompt(
            jax.tree_util.tree_map(jnp.asarray, bank),
            jnp.int32(f),
            vis,
            h0,
            h1,
            jnp.asarray(coords)[None],
            jnp.asarray(labs)[None],
            None if prev is None else jnp.asarray(prev, jnp.float32)[None],
            is_init=is_init,
            multimask=coords.shape[0] <= 1
            and (is_init or self.config.multimask_output_for_tracking),
        )
        tr.temp[f] = PromptOutput(np.asarray(low[0]), np.asarray(ptr[0]), float(score[0]), is_cond)

    def add_new_mask(
        self, state: VideoState, frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list, np.ndarray]:
        """A mask (H, W) bool for object `obj_id` on `frame_idx`, used as that frame's
        output (letterboxed with nearest-neighbour resizing, then S/4 wide low-res logits,
        as the reference's; for SAM 3 that is less than the SAM heads' 4g).
        Several objects: obj_id a list of K ids and mask (K, H, W) or a list of K masks.
        Returns (frame_idx, obj_ids, logits (num_objects, H, W))."""
        state.check_open()
        f = state.frame_index(frame_idx)
        calls = object_calls(obj_id, mask=mask)
        boxed = [(oid, mask_prompt(state, a["mask"], where=w)) for oid, a, w in calls]
        for oid, mk in boxed:
            tr = state.track(oid)
            tr.masks[f] = mk
            tr.points.pop(f, None)
            _, _, is_cond = tr.prompt_kind(f, self.add_all_frames_to_correct_as_cond)
            vis, h0, h1 = self._features(state, f)
            low, ptr, score = self._mask_prompt(
                vis, h0, h1, jnp.asarray(mk)[None], low_size=self.mask_output_size
            )
            out = PromptOutput(np.asarray(low[0]), np.asarray(ptr[0]), float(score[0]), is_cond)
            tr.temp[f] = out
        return self._frame_logits(state, f)

    # ------------------------------------------------------------------ propagation

    def _encode_memory(self, state: VideoState, f: int, out: PromptOutput) -> np.ndarray:
        """(g, g, mem_dim) spatial memory of a prompted output on frame f."""
        vis, _, _ = self._features(state, f)
        low = jnp.asarray(out.low_res)[None]
        mem = self._prompt_memory(vis, low, jnp.asarray([out.score], jnp.float32))
        return np.asarray(mem[0])

    def propagate_in_video_preflight(self, state: VideoState) -> None:
        """Encode the memories of the frames prompted since the last propagation and file
        them (Meta's `propagate_in_video_preflight`; `propagate_in_video` runs it first).
        RuntimeError if there is no object or an object has no conditioning frame."""
        state.check_open()
        vprop.file_prompt_outputs(state, functools.partial(self._encode_memory, state))

    def propagate_in_video(
        self,
        state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list, np.ndarray]]:
        """Track every object from `start_frame_idx` (default: the earliest conditioning
        frame) over up to `max_frame_num_to_track` more frames, forward or in reverse.
        Yields (frame_idx, obj_ids, logits (num_objects, H, W) float32) per frame."""
        state.check_open()  # now, not at the first frame
        return vprop.propagate(self, state, start_frame_idx, max_frame_num_to_track, reverse)


__all__ = ["VideoPredictor", "VideoState"]
