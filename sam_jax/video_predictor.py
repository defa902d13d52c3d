"""SAM 2 video predictor: prompts on any frame, propagation as scanned chunks.

vp = sam_jax.VideoPredictor(model, params)
state = vp.init_state(frames)        # (T, H, W, 3) uint8 RGB, a folder of frames, a video file
frame_idx, obj_ids, logits = vp.add_new_points_or_box(state, frame_idx=0, obj_id=1,
                                                      points=[[210, 350]], labels=[1])
for frame_idx, obj_ids, logits in vp.propagate_in_video(state):
    masks = logits > 0              # (num_objects, H, W) at the original size

Semantics follow Meta's SAM 2 video predictor with per-object tracking (REFERENCE.md):
each object keeps its own conditioning frames and history, so objects may be added at any
time, also after propagation; a prompt on a frame the object was not tracked on makes a
conditioning frame (no memory used); a prompt on a tracked frame is a correction (memory
and the previous logits used) stored as a non-conditioning output, or as a conditioning
one with `add_all_frames_to_correct_as_cond=True` (and, unlike Meta's code, which would
drop it, when the frame already is one of the object's conditioning frames: it replaces
it); point-prompted masks are binarised for the memory;
full history, up to 16 object pointers, float32 memory; no non-overlap constraint unless
`non_overlap_masks=True`. Prompted frames (conditioning or corrections) keep their
prompted output during propagation, as the reference predictors do for consolidated
frames. Preprocessing is the image predictor's (letterbox to S, top-left, pad 114).

Compute. Propagation runs chunks of `chunk_size` frames, each ONE jit-compiled
`lax.scan` of the pure `track_step` over a fixed-size `MemoryBank` (sam_jax.tracking).
Compiled shapes depend on bucketed counts only (objects, conditioning frames per object,
stored corrections per chunk: powers of two) and on the number of points of a prompt;
prompt values, frame indices and video length never recompile. Memory stays flat: the
bank is fixed-size, only one chunk of frames/features is alive, outputs are yielded and
dropped, and the per-frame history (needed to resume or re-propagate from any frame, as
the reference does) is kept in RAM for short videos and spilled to disk files for long
ones (`history="auto"`, see `_History`); on disk, only a pointer and a score per frame
stay in RAM.

Where the image encoder runs, measured (2 shared CPU cores, sam2.1_t, after compilation):
at 512 px, 2 objects, 16 frames, chunks of 8, two alternating runs per variant: inside the
scan body 1.85 / 1.90 s per frame; ahead of each chunk, 1 frame per encoder call
1.91 / 1.89 s, 2 frames per call 2.06 / 1.91 s - the same within noise (batching frames
does not make the CPU encoder faster). At 256 px, 1 object, 50 frames, alternating runs:
inside 8.1 / 8.1 s, ahead 9.2 / 8.1 s; peak RSS inside 1305 / 1314 MB, ahead 1106 /
1112 MB (each encoder call is waited for: several in flight at once held their buffers
together and peaked at 1675 MB). Ahead also compiles less: the encoder compiled for prompts
is reused, and each new scan shape (another bucket of objects or conditioning frames)
compiles without it (first propagation at 512 px: 10.2 s vs 12.9 s). Default: ahead, one
frame per call (`encode_in_scan=False, encode_batch=1`); `encode_in_scan=True` remains an
option (the tests check both give the same results). Frames where every object is
prompted run no network at all. (These were measured before the memory attention learnt
to weight the 64-d memory before projecting it, which took it from 2.55 to 1.45 s per
object and frame at 1024 px with 7 memory frames.)

Propagation speed against the ultralytics `track_step` loop (full history, same weights,
same process, chunks of 8 frames run in turn so that load from other jobs on the shared
CPUs hits both alike; benchmarks/bench_video.py), sam2.1_t at 1024 px, 1 object, 32
frames: 0.325 vs 0.215 frames/s, x1.51 (x1.59 once all 6 recent-memory slots are in use:
the reference attends to fewer memories on the first frames, this bank always to all its
slots, masked). Sequential runs swung from x1.04 to x1.69 with the load of other jobs.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sam_jax.predictor import _lerp, _unletterbox_taps
from sam_jax.tracking.memory_bank import MemoryBank, bucket, empty_bank
from sam_jax.tracking.propagate import Chunk, StoredTable, propagate_chunk
from sam_jax.tracking.track_step import (
    COND,
    NO_OBJ_SCORE,
    STORED,
    TRACK,
    apply_non_overlapping_constraints,
    encode_frames_impl,
    mask_prompt_impl,
    prompt_frame_impl,
    prompt_memory_impl,
)
from sam_jax.transforms import letterbox, letterbox_geometry
from sam_jax.video_io import FrameSource, open_frames

_LABELS = (0, 1, 2, 3)


# Compiled functions are module-level with the model static, so every predictor of an
# equal model (same config) shares them; TRACE_COUNTS counts their traces.
TRACE_COUNTS: collections.Counter = collections.Counter()


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_jit(model, params, images):
    TRACE_COUNTS["encode"] += 1
    return model.apply(params, images, method=encode_frames_impl)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("is_init", "multimask"))
def _prompt_jit(model, params, *args, is_init, multimask):
    TRACE_COUNTS["prompt"] += 1
    return model.apply(params, *args, is_init, multimask, method=prompt_frame_impl)


@functools.partial(jax.jit, static_argnums=(0,))
def _mask_prompt_jit(model, params, *args):
    TRACE_COUNTS["mask_prompt"] += 1
    return model.apply(params, *args, method=mask_prompt_impl)


@functools.partial(jax.jit, static_argnums=(0,))
def _prompt_memory_jit(model, params, *args):
    TRACE_COUNTS["prompt_memory"] += 1
    return model.apply(params, *args, method=prompt_memory_impl)


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(2,))
def _scan_jit(model, params, bank, chunk, table, non_overlap_for_memory):
    TRACE_COUNTS["propagate_chunk"] += 1
    return propagate_chunk(model, params, bank, chunk, table, non_overlap_for_memory)


@functools.partial(jax.jit, static_argnums=(3,))
def _to_video_jit(low_res, valid, taps, non_overlap):
    """(O, m, m) low-res logits -> (O, H, W) at the video's size (crop + bilinear)."""
    TRACE_COUNTS["to_video"] += 1
    x = _lerp(low_res, taps[1], axis=2)
    x = _lerp(x, taps[0], axis=1)
    if non_overlap:
        x = apply_non_overlapping_constraints(x, valid)
    return x


@dataclass
class _Out:
    """A prompted frame's output for one object (maskmem set once encoded)."""

    low_res: np.ndarray  # (m, m) logits
    ptr: np.ndarray  # (D,)
    score: float
    is_cond: bool
    maskmem: np.ndarray | None = None  # (g, g, 64)


@dataclass
class _Track:
    """Prompts, outputs and history bookkeeping of one object."""

    key: int
    points: dict = field(default_factory=dict)  # frame -> (coords (N, 2) model px, labels)
    masks: dict = field(default_factory=dict)  # frame -> (S, S) 0/1 mask
    temp: dict = field(default_factory=dict)  # frame -> _Out, prompted since last propagation
    cond: dict = field(default_factory=dict)  # frame -> _Out, conditioning frames
    prompted: set = field(default_factory=set)  # frames holding a kept non-cond correction
    tracked: dict = field(default_factory=dict)  # frame -> tracked in reverse?


def _remove_files(directory: str, objs: dict) -> None:
    for o in objs.values():
        for key in ("fd_mem", "fd_low"):
            if key in o:
                os.close(o[key])
    objs.clear()
    shutil.rmtree(directory, ignore_errors=True)


class _History:
    """Non-conditioning outputs of every tracked frame, per object: pointer and score in
    RAM (a few hundred bytes per frame), spatial memory (g*g*64 floats) and low-res logits
    (m*m floats) in RAM or in disk files (fixed-size records, pread/pwrite, nothing mapped
    into the process), so a long video's history does not grow the process memory."""

    def __init__(self, num_frames: int, grid: int, mask_size: int, backend: str, directory):
        self.t, self.g, self.m = num_frames, grid, mask_size
        self.backend = backend
        self._dir = None
        self._objs: dict[int, dict] = {}
        if backend == "disk":
            self._dir = tempfile.mkdtemp(prefix="sam_jax_video_", dir=directory)
            self._finalizer = weakref.finalize(self, _remove_files, self._dir, self._objs)

    def _obj(self, key: int) -> dict:
        if key not in self._objs:
            o = {
                "ptr": np.zeros((self.t, 256), np.float32),
                "score": np.zeros((self.t,), np.float32),
                "has": np.zeros((self.t,), bool),
            }
            if self.backend == "disk":
                base = os.path.join(self._dir, str(key))
                o["fd_mem"] = os.open(base + ".mem", os.O_RDWR | os.O_CREAT, 0o600)
                o["fd_low"] = os.open(base + ".low", os.O_RDWR | os.O_CREAT, 0o600)
            else:
                o["mem"], o["low"] = {}, {}
            self._objs[key] = o
        return self._objs[key]

    def put(self, key, f, maskmem, low_res, ptr, score) -> None:
        o = self._obj(key)
        o["ptr"][f], o["score"][f], o["has"][f] = ptr, score, True
        maskmem = np.ascontiguousarray(maskmem, np.float32)
        low_res = np.ascontiguousarray(low_res, np.float32)
        if self.backend == "disk":
            os.pwrite(o["fd_mem"], maskmem.tobytes(), f * maskmem.nbytes)
            os.pwrite(o["fd_low"], low_res.tobytes(), f * low_res.nbytes)
        else:
            o["mem"][f], o["low"][f] = maskmem.copy(), low_res.copy()

    def has(self, key, f) -> bool:
        return key in self._objs and 0 <= f < self.t and bool(self._objs[key]["has"][f])

    def drop(self, key, f) -> None:
        if key in self._objs:
            o = self._objs[key]
            o["has"][f] = False
            if self.backend == "ram":
                o["mem"].pop(f, None)
                o["low"].pop(f, None)

    def ptr(self, key, f) -> np.ndarray:
        return self._objs[key]["ptr"][f]

    def _read(self, fd, f, shape) -> np.ndarray:
        n = int(np.prod(shape)) * 4
        return np.frombuffer(os.pread(fd, n, f * n), np.float32).reshape(shape)

    def maskmem(self, key, f) -> np.ndarray:
        o = self._objs[key]
        if self.backend == "disk":
            return self._read(o["fd_mem"], f, (self.g, self.g, 64))
        return o["mem"][f]

    def low_res(self, key, f) -> np.ndarray:
        o = self._objs[key]
        if self.backend == "disk":
            return self._read(o["fd_low"], f, (self.m, self.m))
        return o["low"][f]

    def remove(self, key) -> None:
        o = self._objs.pop(key, None)
        if o is not None and self.backend == "disk":
            os.close(o["fd_mem"])
            os.close(o["fd_low"])
            base = os.path.join(self._dir, str(key))
            for suffix in (".mem", ".low"):
                if os.path.exists(base + suffix):
                    os.remove(base + suffix)

    def clear(self) -> None:
        for key in list(self._objs):
            self.remove(key)

    def ram_bytes(self) -> int:
        total = 0
        for o in self._objs.values():
            total += o["ptr"].nbytes + o["score"].nbytes + o["has"].nbytes
            if self.backend == "ram":
                total += sum(a.nbytes for a in o["mem"].values())
                total += sum(a.nbytes for a in o["low"].values())
        return total

    def close(self) -> None:
        self.clear()
        if self._dir is not None:
            self._finalizer()


class VideoState:
    """Everything about one video session (frames, objects, prompts, history). Create it
    with `VideoPredictor.init_state`; pass it to the predictor's methods."""

    def __init__(self, frames: FrameSource, image_size: int, history: _History) -> None:
        self.frames = frames
        self.num_frames = len(frames)
        self.video_height, self.video_width = (int(x) for x in frames.hw)
        self.ratio = letterbox_geometry(self.video_height, self.video_width, image_size)[0]
        self.tracks: dict[Any, _Track] = {}
        self.history = history
        self.features: collections.OrderedDict = collections.OrderedDict()
        self.taps = None  # resampling of low-res logits to the video's size
        self._next_key = 0

    @property
    def obj_ids(self) -> list:
        return list(self.tracks)


class VideoPredictor:
    """Interactive video segmentation and tracking with a SAM 2 / 2.1 model (see the module
    docstring). All jitted functions count their traces in `trace_counts`.

    Options: chunk_size frames per compiled scan; encode_in_scan (image encoder inside the
    scan, else ahead of each chunk, encode_batch frames per call); non_overlap_masks (outputs: each pixel kept
    by the highest-scoring object only); non_overlap_for_memory (the same on the masks
    that are encoded into memory, across the objects tracked together);
    add_all_frames_to_correct_as_cond; history ("auto", "ram" or "disk": where per-frame
    memories of tracked frames live; "auto" uses disk once one object's full history would
    exceed history_ram_limit bytes, 8 MiB by default: about 6 frames at 1024 px, 100 at
    256 px; disk costs a 1.25 MB write per tracked frame and object at 1024 px); history_dir (parent folder of the disk files, default
    the system temp dir); feature_cache_size (frames whose features prompts reuse);
    progress (tqdm bar while propagating).
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
        if history not in ("auto", "ram", "disk"):
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
        self.history, self.history_ram_limit, self.history_dir = (
            history,
            history_ram_limit,
            history_dir,
        )
        self.feature_cache_size = max(1, int(feature_cache_size))
        self.progress = progress
        self.non_overlap_for_memory = non_overlap_for_memory
        self._num_recent = cfg.num_maskmem - 1
        self._num_ptr = cfg.max_obj_ptrs_in_encoder - 1
        m, p = model, params
        self._encode = lambda x: _encode_jit(m, p, x)
        self._prompt = functools.partial(_prompt_jit, m, p)
        self._mask_prompt = functools.partial(_mask_prompt_jit, m, p)
        self._prompt_memory = functools.partial(_prompt_memory_jit, m, p)
        self._scan = lambda bank, chunk, table: _scan_jit(
            m, p, bank, chunk, table, non_overlap_for_memory
        )

    @property
    def trace_counts(self) -> collections.Counter:
        """How many times each jitted function was traced (compiled), process-wide: the
        compiled functions are shared by every predictor of an equal model."""
        return TRACE_COUNTS

    # ------------------------------------------------------------------ state

    def init_state(self, frames: Any, *, history: str | None = None) -> VideoState:
        """A new session over `frames`: a (T, H, W, 3) uint8 RGB array (used as is), a list
        of (H, W, 3) frames, a folder of JPEG/PNG images or a video file (needs OpenCV,
        imageio or PyAV). Frames are read and encoded on demand."""
        src = open_frames(frames)
        backend = history or self.history
        if backend == "auto":
            per_frame = 4 * (self.grid * self.grid * 64 + self.mask_size**2)
            backend = "disk" if len(src) * per_frame > self.history_ram_limit else "ram"
        hist = _History(len(src), self.grid, self.mask_size, backend, self.history_dir)
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

    def _track(self, state: VideoState, obj_id: Any) -> _Track:
        if obj_id not in state.tracks:
            state.tracks[obj_id] = _Track(key=state._next_key)
            state._next_key += 1
        return state.tracks[obj_id]

    def _check_frame_idx(self, state: VideoState, frame_idx: int) -> int:
        f = int(frame_idx)
        if not 0 <= f < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx} outside [0, {state.num_frames})")
        return f

    # ------------------------------------------------------------------ features

    def _letterboxed(self, state: VideoState, f: int) -> np.ndarray:
        return letterbox(state.frames[f], self.image_size)

    def _features(self, state: VideoState, f: int):
        cache = state.features
        if f in cache:
            cache.move_to_end(f)
            return cache[f]
        vis, h0, h1 = self._encode(jnp.asarray(self._letterboxed(state, f))[None])
        cache[f] = (vis[0], h0[0], h1[0])
        while len(cache) > self.feature_cache_size:
            cache.popitem(last=False)
        return cache[f]

    # ------------------------------------------------------------------ memory bank

    def _bank(
        self, state: VideoState, tracks: list[_Track], f: int, reverse: bool, o: int, c: int
    ) -> MemoryBank:
        """The fixed-shape bank of `tracks` for tracking frame f, built from the history:
        every conditioning frame, the non-conditioning outputs of the R (Q) frames before f
        (after f in reverse) in their ring slots."""
        t = state.num_frames
        bank = empty_bank(
            o,
            c,
            self.grid,
            num_recent=self._num_recent,
            num_ptr=self._num_ptr,
            num_frames=t,
            reverse=reverse,
        )
        d = -1 if reverse else 1
        hist = state.history
        for i, tr in enumerate(tracks):
            for j, (cf, out) in enumerate(sorted(tr.cond.items())):
                bank.cond_feats[i, j] = out.maskmem
                bank.cond_ptrs[i, j] = out.ptr
                bank.cond_frames[i, j] = cf
                bank.cond_valid[i, j] = True
            for k in range(1, max(self._num_recent, self._num_ptr) + 1):
                ff = f - d * k
                if not 0 <= ff < t or ff in tr.cond or not hist.has(tr.key, ff):
                    continue
                if k <= self._num_recent:
                    s = ff % self._num_recent
                    bank.recent_feats[i, s] = hist.maskmem(tr.key, ff)
                    bank.recent_frames[i, s] = ff
                    bank.recent_valid[i, s] = True
                if k <= self._num_ptr:
                    s = ff % self._num_ptr
                    bank.ptr_vals[i, s] = hist.ptr(tr.key, ff)
                    bank.ptr_frames[i, s] = ff
                    bank.ptr_valid[i, s] = True
        return bank

    def memory_state(self, state: VideoState, frame_idx: int, reverse: bool = False) -> MemoryBank:
        """The fixed-shape memory bank every object would attend to when tracking
        `frame_idx` (numpy arrays): its size depends only on the bucketed numbers of
        objects and conditioning frames, never on the video length."""
        f = self._check_frame_idx(state, frame_idx)
        tracks = list(state.tracks.values())
        c = bucket(max((len(tr.cond) for tr in tracks), default=1))
        return self._bank(state, tracks, f, reverse, bucket(len(tracks)), c)

    # ------------------------------------------------------------------ outputs

    def _video_logits(self, state: VideoState, low_res: np.ndarray) -> np.ndarray:
        """(n, m, m) low-res logits -> (n, H, W) float32 logits at the video's size."""
        n = low_res.shape[0]
        if n == 0:
            return np.zeros((0, state.video_height, state.video_width), np.float32)
        nb = bucket(n)
        x = np.full((nb, self.mask_size, self.mask_size), NO_OBJ_SCORE, np.float32)
        x[:n] = low_res
        if state.taps is None:
            state.taps = _unletterbox_taps(
                state.video_height, state.video_width, self.image_size, self.mask_size
            )
        valid = np.arange(nb) < n
        out = _to_video_jit(jnp.asarray(x), jnp.asarray(valid), state.taps, self.non_overlap_masks)
        return np.asarray(out)[:n]

    def _frame_low_res(self, state: VideoState, f: int) -> np.ndarray:
        """Each object's current logits on frame f (newest prompt output first)."""
        out = np.full((len(state.tracks), self.mask_size, self.mask_size), NO_OBJ_SCORE)
        for i, tr in enumerate(state.tracks.values()):
            if f in tr.temp:
                out[i] = tr.temp[f].low_res
            elif f in tr.cond:
                out[i] = tr.cond[f].low_res
            elif state.history.has(tr.key, f):
                out[i] = state.history.low_res(tr.key, f)
        return out.astype(np.float32)

    # ------------------------------------------------------------------ prompts

    def _prompt_kind(self, tr: _Track, f: int) -> tuple[bool, bool, bool]:
        """(is_init_cond_frame, reverse, is_cond) of a prompt on frame f."""
        is_init = f not in tr.tracked
        reverse = False if is_init else tr.tracked[f]
        is_cond = is_init or self.add_all_frames_to_correct_as_cond or f in tr.cond
        return is_init, reverse, is_cond

    def _previous_low_res(self, state: VideoState, tr: _Track, f: int) -> np.ndarray | None:
        if f in tr.temp:
            return tr.temp[f].low_res
        if f in tr.cond:
            return tr.cond[f].low_res
        if state.history.has(tr.key, f):
            return state.history.low_res(tr.key, f)
        return None

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
        f = self._check_frame_idx(state, frame_idx)
        if points is None and box is None:
            raise ValueError("give points (with labels) and/or a box")
        coords = np.zeros((0, 2), np.float32)
        labs = np.zeros((0,), np.int32)
        if points is not None:
            coords = np.asarray(points, np.float64).reshape(-1, 2)
            if coords.shape[0] == 0 or not np.all(np.isfinite(coords)):
                raise ValueError("points must be a non-empty (N, 2) array of finite pixels")
            if labels is None:
                labs = np.ones(coords.shape[0], np.int32)
            else:
                labs = np.asarray(labels).reshape(-1)
                if labs.shape[0] != coords.shape[0]:
                    raise ValueError(f"{coords.shape[0]} points but {labs.shape[0]} labels")
                if not np.isin(labs, _LABELS).all():
                    raise ValueError("labels must be 1 (foreground) or 0 (background)")
                labs = labs.astype(np.int32)
            coords = coords.astype(np.float32) * np.float32(state.ratio)
        tr = self._track(state, obj_id)
        if box is not None:
            b = np.asarray(box, np.float64).reshape(-1)
            if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] < b[0] or b[3] < b[1]:
                raise ValueError(f"box must be x0, y0, x1, y1 with x1 >= x0, y1 >= y0; got {box}")
            if not clear_old_points:
                raise ValueError("a box replaces the frame's points: use clear_old_points=True")
            corners = b.astype(np.float32).reshape(2, 2) * np.float32(state.ratio)
            coords = np.concatenate([corners, coords])
            labs = np.concatenate([np.array([2, 3], np.int32), labs])
        if not clear_old_points and f in tr.points:
            old_c, old_l = tr.points[f]
            coords, labs = np.concatenate([old_c, coords]), np.concatenate([old_l, labs])
        tr.points[f] = (coords, labs)
        tr.masks.pop(f, None)

        is_init, reverse, is_cond = self._prompt_kind(tr, f)
        prev = self._previous_low_res(state, tr, f)
        vis, h0, h1 = self._features(state, f)
        if is_init:
            bank = empty_bank(1, 1, self.grid, num_recent=self._num_recent, num_ptr=self._num_ptr)
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
        tr.temp[f] = _Out(np.asarray(low[0]), np.asarray(ptr[0]), float(score[0]), is_cond)
        return f, state.obj_ids, self._video_logits(state, self._frame_low_res(state, f))

    def add_new_mask(
        self, state: VideoState, frame_idx: int, obj_id: Any, mask: Any
    ) -> tuple[int, list, np.ndarray]:
        """A mask (H, W) bool for object `obj_id` on `frame_idx`, used as that frame's
        output (letterboxed with nearest-neighbour resizing, as the reference prompts are).
        Returns (frame_idx, obj_ids, logits (num_objects, H, W))."""
        f = self._check_frame_idx(state, frame_idx)
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
        tr = self._track(state, obj_id)
        tr.masks[f] = boxed
        tr.points.pop(f, None)
        _, _, is_cond = self._prompt_kind(tr, f)
        vis, h0, h1 = self._features(state, f)
        low, ptr, score = self._mask_prompt(vis, h0, h1, jnp.asarray(boxed)[None])
        tr.temp[f] = _Out(np.asarray(low[0]), np.asarray(ptr[0]), float(score[0]), is_cond)
        return f, state.obj_ids, self._video_logits(state, self._frame_low_res(state, f))

    # ------------------------------------------------------------------ propagation

    def _preflight(self, state: VideoState) -> None:
        """Encode the memories of newly prompted frames and file them as conditioning
        frames or kept corrections."""
        if not state.tracks:
            raise RuntimeError("no objects: add points, a box or a mask first")
        hist = state.history
        for obj_id, tr in state.tracks.items():
            for f, out in sorted(tr.temp.items()):
                vis, _, _ = self._features(state, f)
                mem = self._prompt_memory(
                    vis,
                    jnp.asarray(out.low_res)[None],
                    jnp.asarray([out.score], jnp.float32),
                )
                out.maskmem = np.asarray(mem[0])
                if out.is_cond:
                    tr.cond[f] = out
                else:
                    hist.put(tr.key, f, out.maskmem, out.low_res, out.ptr, out.score)
                    tr.prompted.add(f)
            tr.temp.clear()
            if not tr.cond:
                raise RuntimeError(
                    f"object {obj_id} has no conditioning frame: prompt it on a frame it was "
                    "not tracked on first"
                )
            for f in tr.cond:  # a conditioning frame is never also a non-cond output
                hist.drop(tr.key, f)
                tr.prompted.discard(f)

    def _chunk(self, state, tracks, frames, o, reverse):
        """Host-side inputs of one scan call."""
        length = self.chunk_size
        n = len(frames)
        frame_idx = np.zeros(length, np.int32)
        frame_idx[:n] = frames
        kind = np.full((length, o), COND, np.int32)  # padding objects record nothing
        stored_idx = np.zeros((length, o), np.int32)
        stored: list[list[int]] = [[] for _ in range(o)]
        for j, tr in enumerate(tracks):
            for i, f in enumerate(frames):
                if f in tr.cond:
                    kind[i, j] = COND
                elif f in tr.prompted:
                    kind[i, j] = STORED
                    stored_idx[i, j] = len(stored[j])
                    stored[j].append(f)
                else:
                    kind[i, j] = TRACK
        k = bucket(max(len(s) for s in stored))
        g = self.grid
        feats = np.zeros((o, k, g, g, 64), np.float32)
        ptrs = np.zeros((o, k, 256), np.float32)
        for j, fs in enumerate(stored):
            for r, f in enumerate(fs):
                feats[j, r] = state.history.maskmem(tracks[j].key, f)
                ptrs[j, r] = state.history.ptr(tracks[j].key, f)
        s = self.image_size
        table = StoredTable(jnp.asarray(feats), jnp.asarray(ptrs))
        # frames where some object is tracked (the others run no network)
        needed = [i for i in range(n) if (kind[i, : len(tracks)] == TRACK).any()]
        chunk = Chunk(
            frame_idx=jnp.asarray(frame_idx),
            active=jnp.asarray(np.arange(length) < n),
            kind=jnp.asarray(kind),
            stored_idx=jnp.asarray(stored_idx),
        )
        if self.encode_in_scan:
            images = np.zeros((length, s, s, 3), np.uint8)
            for i in needed:
                images[i] = self._letterboxed(state, frames[i])
            return chunk.replace(images=jnp.asarray(images)), table, kind
        # features computed ahead, `encode_batch` frames per call, zeros where unused
        g, d = self.grid, self.config.d_model
        vis = [jnp.zeros((g, g, d))] * length
        h0 = [jnp.zeros((4 * g, 4 * g, d // 8))] * length
        h1 = [jnp.zeros((2 * g, 2 * g, d // 4))] * length
        for a in range(0, len(needed), self.encode_batch):
            idx = needed[a : a + self.encode_batch]
            batch = np.zeros((self.encode_batch, s, s, 3), np.uint8)
            for r, i in enumerate(idx):
                batch[r] = self._letterboxed(state, frames[i])
            # waited for: encoder calls in flight at once would each hold their buffers
            out = jax.block_until_ready(self._encode(jnp.asarray(batch)))
            for r, i in enumerate(idx):
                vis[i], h0[i], h1[i] = out[0][r], out[1][r], out[2][r]
        chunk = chunk.replace(
            vision=jnp.stack(vis), high_res_0=jnp.stack(h0), high_res_1=jnp.stack(h1)
        )
        return chunk, table, kind

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
        self._preflight(state)
        t = state.num_frames
        tracks = list(state.tracks.values())
        obj_ids = state.obj_ids
        if start_frame_idx is None:
            start_frame_idx = min(min(tr.cond) for tr in tracks)
        start = self._check_frame_idx(state, start_frame_idx)
        n_max = t if max_frame_num_to_track is None else int(max_frame_num_to_track)
        if reverse:
            end = max(start - n_max, 0)
            order = list(range(start, end - 1, -1)) if start > 0 else []
        else:
            end = min(start + n_max, t - 1)
            order = list(range(start, end + 1))
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
                    chunk, table, kind = self._chunk(state, tracks, chunks[idx], o, reverse)
                    bank, outs = self._scan(bank, chunk, table)
                    launched = (chunks[idx], kind, outs)
                if pending is not None:
                    yield from self._emit(state, tracks, obj_ids, reverse, *pending, bar)
                pending = launched
        finally:
            bar.close()

    def _emit(self, state, tracks, obj_ids, reverse, frames, kind, outs, bar):
        outs = jax.device_get(outs)
        hist = state.history
        for i, f in enumerate(frames):
            low = np.empty((len(tracks), self.mask_size, self.mask_size), np.float32)
            for j, tr in enumerate(tracks):
                if kind[i, j] == COND:
                    low[j] = tr.cond[f].low_res
                elif kind[i, j] == STORED:
                    low[j] = hist.low_res(tr.key, f)
                else:
                    low[j] = outs.low_res_masks[i, j]
                    hist.put(
                        tr.key,
                        f,
                        outs.maskmem[i, j],
                        outs.low_res_masks[i, j],
                        outs.obj_ptr[i, j],
                        outs.object_score_logits[i, j],
                    )
                tr.tracked[f] = reverse
            bar.update(1)
            yield f, obj_ids, self._video_logits(state, low)

    def close(self, state: VideoState) -> None:
        """Release a session's disk history and cached features."""
        self.reset_state(state)
        state.history.close()
        state.frames.close()


__all__ = ["VideoPredictor", "VideoState", "TRACK", "COND", "STORED"]
