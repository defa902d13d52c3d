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
is the image predictor's (letterbox to S, top-left, pad 114).

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
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sam_jax.predictors import video_compiled as compiled
from sam_jax.predictors import video_propagation as vprop
from sam_jax.predictors.history import HISTORY_KINDS, make_history
from sam_jax.predictors.prompts import check_prompts
from sam_jax.predictors.resample import unletterbox_taps
from sam_jax.predictors.video_state import ObjectTrack, PromptOutput, VideoState
from sam_jax.tracking.memory_bank import MemoryBank, bank_from_history, bucket, empty_bank
from sam_jax.tracking.track_step import NO_OBJ_SCORE
from sam_jax.transforms import letterbox_geometry
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
        if history not in HISTORY_KINDS:
            raise ValueError(f"history must be 'auto', 'ram' or 'disk', got {history!r}")
        self.model, self.params, self.config = model, params, cfg
        self.image_size = int(cfg.image_size)
        self.grid = cfg.embed_size
        self.mask_size = cfg.mask_input_size
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
        state.tracks.clear()
        state.history.clear()
        state.features.clear()

    def remove_object(self, state: VideoState, obj_id: Any, strict: bool = False) -> list:
        """Drop an object, its prompts and results; returns the remaining object ids."""
        track = state.tracks.pop(obj_id, None)
        if track is None:
            if strict:
                raise RuntimeError(f"no object id {obj_id}; existing ids: {state.obj_ids}")
        else:
            state.history.remove(track.key)
        return state.obj_ids

    def close(self, state: VideoState) -> None:
        """Release a session's disk history and cached features."""
        self.reset_state(state)
        state.history.close()
        state.frames.close()

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
        f = state.frame_index(frame_idx)
        tracks = list(state.tracks.values())
        c = bucket(max((len(tr.cond) for tr in tracks), default=1))
        return self._bank(state, tracks, f, reverse, bucket(len(tracks)), c)

    # ------------------------------------------------------------------ outputs

    def _video_logits(self, state: VideoState, low_res: np.ndarray) -> np.ndarray:
        """(n, m, m) low-res logits -> (n, H, W) float32 logits at the video's size."""
        if state.taps is None:
            state.taps = unletterbox_taps(
                state.video_height, state.video_width, self.image_size, self.mask_size
            )
        return compiled.video_logits(low_res, state.taps, self.non_overlap_masks)

    def _frame_logits(self, state: VideoState, f: int) -> tuple[int, list, np.ndarray]:
        """(f, obj_ids, logits (num_objects, H, W)): every object's current output on f."""
        low = np.full((len(state.tracks), self.mask_size, self.mask_size), NO_OBJ_SCORE)
        for i, tr in enumerate(state.tracks.values()):
            cur = tr.current_low_res(state.history, f)
            if cur is not None:
                low[i] = cur
        return f, state.obj_ids, self._video_logits(state, low.astype(np.float32))

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
    ) -> tuple[int, list, np.ndarray]:
        """Click points (N, 2) (x, y pixels of the original frame) with labels (N,) (1
        foreground, 0 background; all 1 if omitted) and/or a box (4,) x0, y0, x1, y1 for
        object `obj_id` on `frame_idx`. The box goes first, as two corner points.
        clear_old_points=False adds the points to the frame's earlier ones (no box then).

        Returns (frame_idx, obj_ids, logits (num_objects, H, W) float32) for every object
        on that frame. Recompiles only for a new number of points.
        """
        f = state.frame_index(frame_idx)
        if points is None and box is None:
            raise ValueError("give points (with labels) and/or a box")
        if box is not None and not clear_old_points:
            raise ValueError("a box replaces the frame's points: use clear_old_points=True")
        p = check_prompts(
            points,
            labels,
            box,
            allow_batch=False,
            allow_padding=False,
            coords_name="points",
            labels_name="labels",
        )
        ratio = np.float32(state.ratio)
        coords = np.zeros((0, 2), np.float32)
        labs = np.zeros((0,), np.int32)
        if p.coords is not None:
            coords, labs = p.coords[0].astype(np.float32) * ratio, p.labels[0]
        if p.boxes is not None:  # the box goes first, as its two corners
            corners = p.boxes[0].astype(np.float32).reshape(2, 2) * ratio
            coords = np.concatenate([corners, coords])
            labs = np.concatenate([np.array([2, 3], np.int32), labs])
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
        return self._frame_logits(state, f)

    def add_new_mask(
        self, state: VideoState, frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list, np.ndarray]:
        """A mask (H, W) bool for object `obj_id` on `frame_idx`, used as that frame's
        output (letterboxed with nearest-neighbour resizing, as the reference prompts are).
        Returns (frame_idx, obj_ids, logits (num_objects, H, W))."""
        f = state.frame_index(frame_idx)
        mk = np.asarray(mask)
        if mk.shape != (state.video_height, state.video_width):
            raise ValueError(
                f"mask must be (H, W) = ({state.video_height}, {state.video_width}); got {mk.shape}"
            )
        s = self.image_size
        _, nh, nw = letterbox_geometry(state.video_height, state.video_width, s)
        rows = np.minimum((np.arange(nh) * (mk.shape[0] / nh)).astype(np.int64), mk.shape[0] - 1)
        cols = np.minimum((np.arange(nw) * (mk.shape[1] / nw)).astype(np.int64), mk.shape[1] - 1)
        boxed = np.zeros((s, s), np.float32)
        boxed[:nh, :nw] = (mk[rows][:, cols] > 0).astype(np.float32)
        tr = state.track(obj_id)
        tr.masks[f] = boxed
        tr.points.pop(f, None)
        _, _, is_cond = tr.prompt_kind(f, self.add_all_frames_to_correct_as_cond)
        vis, h0, h1 = self._features(state, f)
        low, ptr, score = self._mask_prompt(vis, h0, h1, jnp.asarray(boxed)[None])
        tr.temp[f] = PromptOutput(np.asarray(low[0]), np.asarray(ptr[0]), float(score[0]), is_cond)
        return self._frame_logits(state, f)

    # ------------------------------------------------------------------ propagation

    def _encode_memory(self, state: VideoState, f: int, out: PromptOutput) -> np.ndarray:
        """(g, g, mem_dim) spatial memory of a prompted output on frame f."""
        vis, _, _ = self._features(state, f)
        low = jnp.asarray(out.low_res)[None]
        mem = self._prompt_memory(vis, low, jnp.asarray([out.score], jnp.float32))
        return np.asarray(mem[0])

    def _launch(
        self, state: VideoState, tracks: list[ObjectTrack], frames: list[int], o: int, bank
    ) -> tuple[MemoryBank, tuple]:
        """Dispatch the scan over `frames` (not waited for): (next bank, (frames, kinds,
        outputs)). The bank passed in is donated."""
        chunk, table, kind = vprop.chunk_inputs(
            state.history,
            tracks,
            frames,
            o,
            length=self.chunk_size,
            letterboxed=state.letterboxed,
            encode=None if self.encode_in_scan else self._encode,
            size=self.image_size,
            d_model=self.config.d_model,
            batch=self.encode_batch,
        )
        bank, outs = self._scan(bank, chunk, table)
        return bank, (frames, kind, outs)

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
        vprop.file_prompt_outputs(state, functools.partial(self._encode_memory, state))
        tracks = list(state.tracks.values())
        obj_ids = state.obj_ids
        if start_frame_idx is None:
            start_frame_idx = min(min(tr.cond) for tr in tracks)
        start = state.frame_index(start_frame_idx)
        t = state.num_frames
        n_max = t if max_frame_num_to_track is None else int(max_frame_num_to_track)
        order = vprop.propagation_order(start, n_max, t, reverse)
        if not order:
            return
        o = bucket(len(tracks))
        c = bucket(max(len(tr.cond) for tr in tracks))
        bank = jax.tree_util.tree_map(jnp.asarray, self._bank(state, tracks, start, reverse, o, c))
        chunks = [order[a : a + self.chunk_size] for a in range(0, len(order), self.chunk_size)]
        bar = tqdm(total=len(order), desc="propagate in video", disable=not self.progress)
        pending = None
        try:
            for idx in range(len(chunks) + 1):
                launched = None
                if idx < len(chunks):  # dispatch the next chunk before reading this one
                    bank, launched = self._launch(state, tracks, chunks[idx], o, bank)
                if pending is not None:
                    frames, kind, outs = pending
                    history = state.history
                    for f, low in vprop.file_chunk_outputs(
                        history, tracks, frames, kind, outs, reverse
                    ):
                        bar.update(1)
                        yield f, obj_ids, self._video_logits(state, low)
                pending = launched
        finally:
            bar.close()


__all__ = ["VideoPredictor", "VideoState"]
