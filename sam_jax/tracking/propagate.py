"""Propagation: one jit-compiled `lax.scan` of `track_step` over a chunk of frames.

`propagate_chunk(model, params, memory, chunk, table)` scans L frames (forward or reverse:
the frames come in processing order and `memory.reverse` says which way). A long video is
streamed as a sequence of such chunks, each one compiled call whose carry is the
fixed-size `MemoryBank`; shapes depend only on (objects O, conditioning slots C, chunk
length L, stored-table size K), all bucketed, so prompts, frame indices and video length
never recompile.

Per step, each object's frame kind says: TRACK (run the tracker), COND (a conditioning
frame of that object: its output was computed when prompted), or STORED (a prompted
correction kept as a non-conditioning output: its memory and pointer come from `table`,
indexed by `chunk.stored_idx`). A frame with nothing to track (every object COND or
STORED) only files the stored entries, without running any network; padding steps
(`active` False) leave the bank untouched.

Where the image encoder runs is up to the chunk: with `images` (letterboxed uint8 frames)
it runs inside the scan body; with `vision`/`high_res_*` the features were computed ahead
(`encode_frames`). `sam_jax.predictors.video.VideoPredictor` encodes ahead.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sam_jax.tracking.memory_bank import MemoryBank, push
from sam_jax.tracking.track_step import (
    STORED,
    TRACK,
    FrameInput,
    TrackOutput,
    encode_frames_impl,
    track_step_impl,
)


@flax.struct.dataclass
class Chunk:
    """L frames in processing order.

    frame_idx (L,) int32; active (L,) bool; kind (L, O) int32; stored_idx (L, O) int32
    (row of `table` for STORED entries); and either images (L, S, S, 3) uint8 or
    features: vision (L, g, g, D), high_res_0 (L, 4g, 4g, D/8), high_res_1 (L, 2g, 2g, D/4)
    (the unused ones are None).
    """

    frame_idx: jnp.ndarray
    active: jnp.ndarray
    kind: jnp.ndarray
    stored_idx: jnp.ndarray
    images: jnp.ndarray | None = None
    vision: jnp.ndarray | None = None
    high_res_0: jnp.ndarray | None = None
    high_res_1: jnp.ndarray | None = None


@flax.struct.dataclass
class StoredTable:
    """Memories and pointers of prompted non-conditioning frames in a chunk:
    feats (O, K, g, g, m), ptrs (O, K, D)."""

    feats: jnp.ndarray
    ptrs: jnp.ndarray


def _zeros_output(bank: MemoryBank, m: int) -> TrackOutput:
    o, _, g, _, mem = bank.cond_feats.shape
    d = bank.cond_ptrs.shape[-1]
    return TrackOutput(
        low_res_masks=jnp.zeros((o, m, m), jnp.float32),
        obj_ptr=jnp.zeros((o, d), jnp.float32),
        object_score_logits=jnp.zeros((o,), jnp.float32),
        maskmem=jnp.zeros((o, g, g, mem), jnp.float32),
    )


def propagate_chunk(
    model,
    params,
    memory: MemoryBank,
    chunk: Chunk,
    table: StoredTable,
    non_overlap_for_memory: bool = False,
) -> tuple[MemoryBank, TrackOutput]:
    """Scan the tracker over a chunk; returns the final bank and per-step outputs stacked
    on a leading L axis (zeros at inactive steps). Pure; jit with model static."""
    o = memory.num_objects
    mask_size = model.config.mask_input_size
    rows = jnp.arange(o)

    def step(bank: MemoryBank, x: Chunk):
        k = jnp.clip(x.stored_idx, 0, table.feats.shape[1] - 1)
        stored_feats, stored_ptrs = table.feats[rows, k], table.ptrs[rows, k]

        def run(bank):
            if x.images is not None:
                vis, h0, h1 = model.apply(params, x.images[None], method=encode_frames_impl)
                vis, h0, h1 = vis[0], h0[0], h1[0]
            else:
                vis, h0, h1 = x.vision, x.high_res_0, x.high_res_1
            frame = FrameInput(
                frame_idx=x.frame_idx,
                vision_features=vis,
                high_res_0=h0,
                high_res_1=h1,
                kind=x.kind,
                stored_feats=stored_feats,
                stored_ptrs=stored_ptrs,
            )
            return model.apply(params, bank, frame, non_overlap_for_memory, method=track_step_impl)

        def record(bank):  # no object to track here: only file the stored outputs
            bank = push(bank, x.frame_idx, x.kind == STORED, stored_feats, stored_ptrs)
            return bank, _zeros_output(bank, mask_size)

        def skip(bank):
            return bank, _zeros_output(bank, mask_size)

        branch = jnp.where(x.active, jnp.where(jnp.any(x.kind == TRACK), 2, 1), 0)
        return jax.lax.switch(branch, (skip, record, run), bank)

    return jax.lax.scan(step, memory, chunk)


def make_propagate_chunk(model, non_overlap_for_memory: bool = False):
    """jit-compiled `fn(params, memory, chunk, table) -> (memory, outputs)`; the incoming
    memory buffers are donated (reused for the outgoing bank)."""

    def fn(params, memory, chunk, table):
        return propagate_chunk(model, params, memory, chunk, table, non_overlap_for_memory)

    return jax.jit(fn, donate_argnums=(1,))


def make_encode_frames(model):
    """jit-compiled `fn(params, images_u8 (B, S, S, 3)) -> (vision, high_res_0, high_res_1)`."""
    return jax.jit(lambda params, images: model.apply(params, images, method=encode_frames_impl))
