"""Host side of video propagation: which frames to run, the inputs of each scanned chunk,
and filing each chunk's outputs into the session.

Per chunk of L frames and O (bucketed) object rows, every (frame, object) pair is COND (a
conditioning frame: its prompted output is used, nothing is tracked), STORED (a correction
kept as a non-conditioning output: its memory and pointer come from the history through
the chunk's `StoredTable`) or TRACK. Padding object rows are COND, so they record nothing.
Tracked outputs go to the history as they are emitted; prompted frames keep their prompted
output. `propagate` is the body of `VideoPredictor.propagate_in_video`: chunks dispatched
one ahead of the one whose outputs are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sam_jax.predictors.history import FrameHistory
from sam_jax.predictors.video_state import ObjectTrack, PromptOutput, VideoState
from sam_jax.tracking.memory_bank import MemoryBank, bucket
from sam_jax.tracking.propagate import Chunk, StoredTable
from sam_jax.tracking.track_step import COND, STORED, TRACK


def propagation_order(start: int, max_frames: int, num_frames: int, reverse: bool) -> list[int]:
    """Frames to track from `start` over up to `max_frames` more, in processing order."""
    if reverse:
        end = max(start - max_frames, 0)
        return list(range(start, end - 1, -1)) if start > 0 else []
    end = min(start + max_frames, num_frames - 1)
    return list(range(start, end + 1))


def file_prompt_outputs(
    state: VideoState, encode_memory: Callable[[int, PromptOutput], np.ndarray]
) -> None:
    """Encode the memory of every frame prompted since the last propagation
    (`encode_memory(frame, output) -> (g, g, mem_dim)`) and file it as a conditioning frame
    or, for a kept correction, in the history. Raises RuntimeError for an object without a
    conditioning frame."""
    if not state.tracks:
        raise RuntimeError("no objects: add points, a box or a mask first")
    hist = state.history
    for obj_id, tr in state.tracks.items():
        for f, out in sorted(tr.temp.items(), key=lambda kv: kv[0]):
            out.maskmem = encode_memory(f, out)
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


def chunk_plan(
    history: FrameHistory,
    tracks: Sequence[ObjectTrack],
    frames: Sequence[int],
    num_objects: int,
    length: int,
) -> tuple[Chunk, StoredTable, np.ndarray, list[int]]:
    """A chunk of `length` steps over `frames` (len <= length) without frame inputs, its
    stored table (K, a bucketed count, stored entries per object row), the kinds (length,
    num_objects) and the chunk positions where some object is tracked (the others run no
    network)."""
    n = len(frames)
    frame_idx = np.zeros(length, np.int32)
    frame_idx[:n] = frames
    kind = np.full((length, num_objects), COND, np.int32)
    stored_idx = np.zeros((length, num_objects), np.int32)
    stored: list[list[int]] = [[] for _ in range(num_objects)]
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
    g = history.grid
    feats = np.zeros((num_objects, k, g, g, history.mem_dim), np.float32)
    ptrs = np.zeros((num_objects, k, history.ptr_dim), np.float32)
    for j, fs in enumerate(stored):
        for r, f in enumerate(fs):
            feats[j, r] = history.maskmem(tracks[j].key, f)
            ptrs[j, r] = history.ptr(tracks[j].key, f)
    chunk = Chunk(
        frame_idx=jnp.asarray(frame_idx),
        active=jnp.asarray(np.arange(length) < n),
        kind=jnp.asarray(kind),
        stored_idx=jnp.asarray(stored_idx),
    )
    needed = [i for i in range(n) if (kind[i, : len(tracks)] == TRACK).any()]
    return chunk, StoredTable(jnp.asarray(feats), jnp.asarray(ptrs)), kind, needed


def chunk_inputs(
    history: FrameHistory,
    tracks: Sequence[ObjectTrack],
    frames: Sequence[int],
    num_objects: int,
    *,
    length: int,
    letterboxed: Callable[[int], np.ndarray],
    encode: Callable[[jnp.ndarray], tuple] | None,
    size: int,
    d_model: int,
    batch: int = 1,
    features: Callable[[int], tuple] | None = None,
) -> tuple[Chunk, StoredTable, np.ndarray]:
    """(chunk, stored table, kinds (length, num_objects)) of one scan call over `frames`.

    letterboxed(frame) gives a frame's (S, S, 3) uint8 model input, S = size. With
    `features` (frame -> its (vision, high_res_0, high_res_1), e.g. held ones) or `encode`
    (run ahead on `batch` frames per call) the chunk carries the features: vision
    (L, g, g, D), high_res_0 (L, 4g, 4g, D/8), high_res_1 (L, 2g, 2g, D/4), D = d_model;
    with both None, the images (L, S, S, 3) for the encoder inside the scan. Steps where
    no object is tracked get zeros.
    """
    chunk, table, kind, needed = chunk_plan(history, tracks, frames, num_objects, length)
    if encode is None and features is None:
        images = np.zeros((length, size, size, 3), np.uint8)
        for i in needed:
            images[i] = letterboxed(frames[i])
        return chunk.replace(images=jnp.asarray(images)), table, kind
    g, d = history.grid, d_model
    vis = [jnp.zeros((g, g, d))] * length
    h0 = [jnp.zeros((4 * g, 4 * g, d // 8))] * length
    h1 = [jnp.zeros((2 * g, 2 * g, d // 4))] * length
    if features is not None:
        for i in needed:
            vis[i], h0[i], h1[i] = features(frames[i])
    else:
        for a in range(0, len(needed), batch):
            idx = needed[a : a + batch]
            images = np.zeros((batch, size, size, 3), np.uint8)
            for r, i in enumerate(idx):
                images[r] = letterboxed(frames[i])
            # waited for: encoder calls in flight at once would each hold their buffers
            out = jax.block_until_ready(encode(jnp.asarray(images)))
            for r, i in enumerate(idx):
                vis[i], h0[i], h1[i] = out[0][r], out[1][r], out[2][r]
    chunk = chunk.replace(vision=jnp.stack(vis), high_res_0=jnp.stack(h0), high_res_1=jnp.stack(h1))
    return chunk, table, kind


def file_chunk_outputs(
    history: FrameHistory,
    tracks: Sequence[ObjectTrack],
    frames: Sequence[int],
    kind: np.ndarray,
    outs,
    reverse: bool,
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Per frame of a finished chunk, in order: file the tracked outputs in the history,
    mark the frame tracked, and yield (frame, per track its (k, k) low-res logits), with
    the prompted output where the frame is a conditioning or stored one (k = m, or S/4 for
    a mask prompt's output)."""
    outs = jax.device_get(outs)
    for i, f in enumerate(frames):
        low = []
        for j, tr in enumerate(tracks):
            if kind[i, j] == COND:
                low.append(tr.cond[f].low_res)
            elif kind[i, j] == STORED:
                low.append(history.low_res(tr.key, f))
            else:
                low.append(outs.low_res_masks[i, j])
                history.put(
                    tr.key,
                    f,
                    outs.maskmem[i, j],
                    outs.low_res_masks[i, j],
                    outs.obj_ptr[i, j],
                    outs.object_score_logits[i, j],
                )
            tr.tracked[f] = reverse
        yield f, low


def launch(
    vp: Any,
    state: VideoState,
    tracks: list[ObjectTrack],
    frames: list[int],
    num_objects: int,
    bank: MemoryBank,
    features: Callable[[int], tuple] | None = None,
) -> tuple[MemoryBank, tuple]:
    """Dispatch `vp`'s (a VideoPredictor) scan over `frames` (at most vp.chunk_size), not
    waited for: (next bank, (frames, kinds, outputs)). The bank passed in is donated.
    features: see `chunk_inputs`; None encodes as the predictor's options say."""
    chunk, table, kind = chunk_inputs(
        state.history,
        tracks,
        frames,
        num_objects,
        length=vp.chunk_size,
        letterboxed=state.letterboxed,
        encode=None if vp.encode_in_scan else vp._encode,
        size=vp.image_size,
        d_model=vp.config.d_model,
        batch=vp.encode_batch,
        features=features,
    )
    bank, outs = vp._scan(bank, chunk, table)
    return bank, (frames, kind, outs)


def propagate(
    vp: Any,
    state: VideoState,
    start_frame_idx: int | None,
    max_frame_num_to_track: int | None,
    reverse: bool,
) -> Iterator[tuple[int, list, np.ndarray]]:
    """`VideoPredictor.propagate_in_video` of `vp`: the preflight, then the frames in
    chunks, each dispatched before the previous one's outputs are filed and yielded."""
    vp.propagate_in_video_preflight(state)
    tracks = list(state.tracks.values())
    obj_ids = state.obj_ids
    if start_frame_idx is None:
        start_frame_idx = min(min(tr.cond) for tr in tracks)
    start = state.frame_index(start_frame_idx)
    t = state.num_frames
    n_max = t if max_frame_num_to_track is None else int(max_frame_num_to_track)
    order = propagation_order(start, n_max, t, reverse)
    if not order:
        return
    o = bucket(len(tracks))
    c = bucket(max(len(tr.cond) for tr in tracks))
    bank = jax.tree_util.tree_map(jnp.asarray, vp._bank(state, tracks, start, reverse, o, c))
    size = vp.chunk_size
    chunks = [order[a : a + size] for a in range(0, len(order), size)]
    bar = tqdm(total=len(order), desc="propagate in video", disable=not vp.progress)
    pending = None
    try:
        for idx in range(len(chunks) + 1):
            launched = None
            if idx < len(chunks):  # dispatch the next chunk before reading this one
                bank, launched = launch(vp, state, tracks, chunks[idx], o, bank)
            if pending is not None:
                frames, kind, outs = pending
                for f, low in file_chunk_outputs(
                    state.history, tracks, frames, kind, outs, reverse
                ):
                    bar.update(1)
                    yield f, obj_ids, vp._video_logits(state, low)
            pending = launched
    finally:
        bar.close()
