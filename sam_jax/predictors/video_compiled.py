"""The video predictor's jit-compiled functions.

They are module-level with the model as a static argument, so every predictor of an equal
model (same config) shares the compiled code; `TRACE_COUNTS` counts how often each one was
traced. Arguments after (model, params) are those of the `sam_jax.tracking` functions they
wrap.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.predictors.resample import Taps, resample
from sam_jax.tracking.memory_bank import bucket
from sam_jax.tracking.propagate import propagate_chunk
from sam_jax.tracking.track_step import (
    NO_OBJ_SCORE,
    apply_non_overlapping_constraints,
    encode_frames_impl,
    mask_prompt_impl,
    prompt_frame_impl,
    prompt_memory_impl,
)

TRACE_COUNTS: collections.Counter = collections.Counter()


@functools.partial(jax.jit, static_argnums=(0,))
def encode_frames(model, params, images):
    """(B, S, S, 3) uint8 letterboxed frames -> (vision, high_res_0, high_res_1) features."""
    TRACE_COUNTS["encode"] += 1
    return model.apply(params, images, method=encode_frames_impl)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("is_init", "multimask"))
def prompt_frame(model, params, *args, is_init, multimask):
    """Points on a frame -> (low-res logits, pointer, object score) (`prompt_frame_impl`)."""
    TRACE_COUNTS["prompt"] += 1
    return model.apply(params, *args, is_init, multimask, method=prompt_frame_impl)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("low_size",))
def mask_prompt(model, params, *args, low_size):
    """A mask on a frame -> (low-res logits (1, low_size, low_size), pointer, object score)
    (`mask_prompt_impl`)."""
    TRACE_COUNTS["mask_prompt"] += 1
    return model.apply(params, *args, low_size, method=mask_prompt_impl)


@functools.partial(jax.jit, static_argnums=(0,))
def prompt_memory(model, params, *args):
    """A prompted output's spatial memory (`prompt_memory_impl`)."""
    TRACE_COUNTS["prompt_memory"] += 1
    return model.apply(params, *args, method=prompt_memory_impl)


@functools.partial(jax.jit, static_argnums=(0, 5), donate_argnums=(2,))
def scan_chunk(model, params, bank, chunk, table, non_overlap_for_memory):
    """One chunk of propagation (`propagate_chunk`); the input bank is donated."""
    TRACE_COUNTS["propagate_chunk"] += 1
    return propagate_chunk(model, params, bank, chunk, table, non_overlap_for_memory)


@functools.partial(jax.jit, static_argnums=(4,))
def _to_video(low_res, valid, grid, tap_sets, non_overlap):
    """low_res (n, M, M): row i holds its map top-left, read by tap_sets[grid[i]]."""
    TRACE_COUNTS["to_video"] += 1
    x = resample(low_res, *tap_sets[0])
    for i, taps in enumerate(tap_sets[1:], 1):  # rows of a smaller grid (SAM 3 mask prompts)
        x = jnp.where((grid == i)[:, None, None], resample(low_res, *taps), x)
    if non_overlap:
        x = apply_non_overlapping_constraints(x, valid)
    return x


def video_logits(
    low_res: Sequence[np.ndarray], taps: Mapping[int, tuple[Taps, Taps]], non_overlap: bool
) -> np.ndarray:
    """Per object (k, k) low-res logits (an (n, m, m) array, or a list whose k may differ)
    -> (n, H, W) float32 logits at the video's size, with taps[k] from `unletterbox_taps`
    for each k present (any one entry when n = 0); non_overlap keeps each pixel for the
    highest-scoring object only, after the resize. Compiled per bucketed n and set of
    sizes."""
    n = len(low_res)
    if n == 0:
        th, tw = next(iter(taps.values()))
        return np.zeros((0, th[0].shape[0], tw[0].shape[0]), np.float32)
    sizes = sorted({a.shape[-1] for a in low_res}, reverse=True)
    nb, m = bucket(n), sizes[0]
    x = np.full((nb, m, m), NO_OBJ_SCORE, np.float32)
    grid = np.zeros((nb,), np.int32)
    for i, a in enumerate(low_res):
        k = a.shape[-1]
        x[i, :k, :k], grid[i] = a, sizes.index(k)
    valid = np.arange(nb) < n
    tap_sets = tuple(taps[k] for k in sizes)
    out = _to_video(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(grid), tap_sets, non_overlap)
    return np.asarray(out)[:n]
