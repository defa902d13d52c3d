"""SAM 2's memory bank as a fixed-shape pytree, and the memory tokens a frame attends to.

The reference (`_prepare_memory_conditioned_features`) keeps every past output in dicts and
concatenates, for frame `idx` tracked in direction d (+1 forward, -1 reverse):

* every conditioning frame's spatial memory, temporal position t_pos 0;
* the non-conditioning outputs of frames idx - d*k, k = 1..6, at t_pos 7 - k (a missing
  frame, or a conditioning frame, leaves its place empty);
* object pointers: those of the conditioning frames with d * (idx - t) >= 0, at distance
  idx - t (times d when signed, SAM 2.1; absolute in SAM 2.0), then those of the
  non-conditioning outputs at distance k = 1 .. P - 1, P = min(num_frames, 16).

Here the same selection is a function of a fixed-shape bank. Per object (leading axis O):

* `cond_*`: C conditioning slots (C a bucketed static count), each with its spatial memory,
  pointer, frame index and validity;
* `recent_*`: R = num_maskmem - 1 = 6 slots; frame f lives in slot f % R. While frames are
  tracked consecutively (either direction), writing frame f overwrites frame f -/+ R,
  the first one no longer in reach, so the ring always holds the window;
* `ptr_*`: Q = max_obj_ptrs - 1 = 15 pointer slots, frame f in slot f % Q, likewise.

A slot only counts if it is valid AND its frame lies at the right distance from the current
frame (computed from the stored frame indices), so stale entries are harmless. Empty slots
are masked in the memory attention (`MemoryAttention(memory_mask=...)`), which then equals
the reference fed only the valid memories. The bank's size never depends on the video
length: O * (C + R) spatial memories + O * (C + Q) pointers.

Token layout (the sequence axis given to MemoryAttention):
    [C cond frames * HW | R recent frames * HW | (C + Q) pointers * 4 tokens of 64]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Protocol

import flax.struct
import jax.numpy as jnp
import numpy as np

from sam_jax.config import check_conditioning_memory
from sam_jax.models.position_encoding import sine_position_encoding


@flax.struct.dataclass
class MemoryBank:
    """Fixed-shape tracking memory of O objects (see the module docstring).

    g = S/16 feature grid, m = memory width (64), D = pointer width (256).
    """

    cond_feats: jnp.ndarray  # (O, C, g, g, m) float32
    cond_ptrs: jnp.ndarray  # (O, C, D)
    cond_frames: jnp.ndarray  # (O, C) int32
    cond_valid: jnp.ndarray  # (O, C) bool
    recent_feats: jnp.ndarray  # (O, R, g, g, m); frame f in slot f % R
    recent_frames: jnp.ndarray  # (O, R) int32
    recent_valid: jnp.ndarray  # (O, R) bool
    ptr_vals: jnp.ndarray  # (O, Q, D); frame f in slot f % Q
    ptr_frames: jnp.ndarray  # (O, Q) int32
    ptr_valid: jnp.ndarray  # (O, Q) bool
    num_frames: jnp.ndarray  # () int32, the video length (pointer encodings depend on it)
    reverse: jnp.ndarray  # () bool, tracking direction

    @property
    def num_objects(self) -> int:
        return self.cond_valid.shape[0]

    @property
    def num_cond_slots(self) -> int:
        return self.cond_valid.shape[1]


def ring_slot(frame_idx, num_slots: int):
    """The ring slot of frame `frame_idx` among `num_slots` (int, numpy or jnp alike): the
    one rule by which `push` and `bank_from_history` place recent memories and pointers."""
    return frame_idx % num_slots


def bucket(n: int, minimum: int = 1) -> int:
    """Static size for a count: the next power of two (so few distinct shapes compile)."""
    n = max(int(n), minimum, 1)
    return 1 << math.ceil(math.log2(n))


def empty_bank(
    num_objects: int,
    num_cond: int,
    grid: int,
    mem_dim: int = 64,
    ptr_dim: int = 256,
    num_recent: int = 6,
    num_ptr: int = 15,
    num_frames: int = 1,
    reverse: bool = False,
    xp=np,
) -> MemoryBank:
    """An all-empty bank (numpy arrays by default; xp=jnp for device arrays)."""
    o, c, g = num_objects, num_cond, grid
    f32 = xp.float32
    return MemoryBank(
        cond_feats=xp.zeros((o, c, g, g, mem_dim), f32),
        cond_ptrs=xp.zeros((o, c, ptr_dim), f32),
        cond_frames=xp.zeros((o, c), xp.int32),
        cond_valid=xp.zeros((o, c), bool),
        recent_feats=xp.zeros((o, num_recent, g, g, mem_dim), f32),
        recent_frames=xp.zeros((o, num_recent), xp.int32),
        recent_valid=xp.zeros((o, num_recent), bool),
        ptr_vals=xp.zeros((o, num_ptr, ptr_dim), f32),
        ptr_frames=xp.zeros((o, num_ptr), xp.int32),
        ptr_valid=xp.zeros((o, num_ptr), bool),
        num_frames=xp.asarray(num_frames, xp.int32),
        reverse=xp.asarray(reverse, bool),
    )


def sine_1d(pos: jnp.ndarray, dim: int, temperature: float = 10000.0) -> jnp.ndarray:
    """(...,) positions -> (..., dim): [sin(pos / t_k), cos(pos / t_k)], the reference's 1-D
    sine encoding with t_k = temperature ** (2 * (k // 2) / (dim / 2)), k < dim / 2."""
    half = dim // 2
    k = np.arange(half, dtype=np.float32)
    dim_t = np.power(np.float32(temperature), 2 * (k // 2) / np.float32(half)).astype(np.float32)
    a = pos[..., None] / jnp.asarray(dim_t)
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)


def memory_tokens(
    bank: MemoryBank,
    frame_idx: jnp.ndarray,
    maskmem_tpos_enc: jnp.ndarray,
    ptr_tpos: Callable[[jnp.ndarray], jnp.ndarray],
    signed_ptr_tpos: bool,
    max_obj_ptrs: int = 16,
    conditioning_memory: str = "always",
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, int]:
    """The memory a frame attends to, in fixed shape.

    maskmem_tpos_enc: (num_maskmem, m) temporal encodings of spatial memories;
    ptr_tpos: maps (..., ) float normalised pointer distances to (..., m) encodings (1-D
    sine, projected in SAM 2.1); signed_ptr_tpos: signed distances of conditioning frames'
    pointers (`Sam2Config.use_signed_tpos_enc_to_obj_ptrs`);
    conditioning_memory: "always", every frame attends to the conditioning frames' spatial
    memory, or "in_window", only frames within R of one, or holding no recent memory, do
    (`Sam2Config.conditioning_memory`).
    Returns memory (O, M, m), memory_pos (O, M, m), mask (O, M) bool and the static
    number of pointer tokens, M = (C + R) * g * g + (C + Q) * (D // m).
    """
    o, c, g, _, m = bank.cond_feats.shape
    r = bank.recent_feats.shape[1]
    d_ptr = bank.cond_ptrs.shape[-1]
    split = d_ptr // m
    hw = g * g
    num_maskmem = maskmem_tpos_enc.shape[0]
    if r != num_maskmem - 1:
        raise ValueError(f"{r} recent slots for num_maskmem={num_maskmem}")
    d = jnp.where(bank.reverse, -1, 1).astype(jnp.int32)
    frame_idx = jnp.asarray(frame_idx, jnp.int32)
    spatial_pos = jnp.asarray(sine_position_encoding(g, g, m).reshape(hw, m))

    # Spatial memories: conditioning frames at t_pos 0, recent frame at distance k at
    # t_pos num_maskmem - k, whose temporal table row is num_maskmem - t_pos - 1 = k - 1.
    cond_pos = spatial_pos + maskmem_tpos_enc[num_maskmem - 1]  # (hw, m)
    cond_pos = jnp.broadcast_to(cond_pos, (o, c, hw, m))
    dist = d * (frame_idx - bank.recent_frames)  # (O, R)
    recent_ok = bank.recent_valid & (dist >= 1) & (dist <= r)
    rows = jnp.clip(dist - 1, 0, r - 1)
    recent_pos = spatial_pos[None, None] + maskmem_tpos_enc[rows][:, :, None, :]
    frames = jnp.concatenate(
        [bank.cond_feats.reshape(o, c * hw, m), bank.recent_feats.reshape(o, r * hw, m)], 1
    )
    frames_pos = jnp.concatenate([cond_pos.reshape(o, c * hw, m), recent_pos.reshape(o, -1, m)], 1)
    cond_ok = bank.cond_valid
    check_conditioning_memory(conditioning_memory)
    if conditioning_memory == "in_window":
        near = jnp.abs(frame_idx - bank.cond_frames) <= r
        cond_ok = cond_ok & (near | ~recent_ok.any(axis=1, keepdims=True))
    frames_ok = jnp.concatenate(
        [jnp.repeat(cond_ok, hw, axis=1), jnp.repeat(recent_ok, hw, axis=1)], 1
    )

    # Object pointers: past (or, in reverse, future) conditioning frames, then recent
    # non-conditioning frames within P - 1 frames, P = min(num_frames, max_obj_ptrs).
    p_eff = jnp.minimum(bank.num_frames, max_obj_ptrs)
    cdiff = frame_idx - bank.cond_frames  # (O, C)
    cond_ptr_ok = bank.cond_valid & (d * cdiff >= 0)
    cond_ptr_pos = d * cdiff if signed_ptr_tpos else jnp.abs(cdiff)
    pdist = d * (frame_idx - bank.ptr_frames)  # (O, Q)
    ptr_ok = bank.ptr_valid & (pdist >= 1) & (pdist <= p_eff - 1)
    ptr_pos = jnp.concatenate([cond_ptr_pos, pdist], axis=1).astype(jnp.float32)
    # (guarded for one-frame videos, where the reference would divide by zero)
    ptr_pos = ptr_pos / jnp.maximum(p_eff - 1, 1).astype(jnp.float32)
    ptr_enc = ptr_tpos(ptr_pos)  # (O, C + Q, m)
    ptrs = jnp.concatenate([bank.cond_ptrs, bank.ptr_vals], axis=1)  # (O, C + Q, D)
    n_ptr = ptrs.shape[1]
    ptr_tokens = ptrs.reshape(o, n_ptr * split, m)
    ptr_tokens_pos = jnp.repeat(ptr_enc, split, axis=1)
    ptr_tokens_ok = jnp.repeat(jnp.concatenate([cond_ptr_ok, ptr_ok], axis=1), split, axis=1)

    memory = jnp.concatenate([frames, ptr_tokens], axis=1)
    memory_pos = jnp.concatenate([frames_pos, ptr_tokens_pos], axis=1)
    mask = jnp.concatenate([frames_ok, ptr_tokens_ok], axis=1)
    return memory, memory_pos, mask, n_ptr * split


def push(
    bank: MemoryBank,
    frame_idx: jnp.ndarray,
    write: jnp.ndarray,
    feats: jnp.ndarray,
    ptrs: jnp.ndarray,
) -> MemoryBank:
    """Record frame `frame_idx`'s outputs in the ring slots of every object.

    write (O,) bool: True stores the non-conditioning memory feats (O, g, g, m) and pointer
    ptrs (O, D); False marks the slots empty (the frame is a conditioning frame of that
    object, already in its cond slots, or nothing to record). Either way the slot that held
    the frame R (Q) frames back is overwritten.
    """
    r = bank.recent_feats.shape[1]
    q = bank.ptr_vals.shape[1]
    f = jnp.asarray(frame_idx, jnp.int32)
    rs, qs = ring_slot(f, r), ring_slot(f, q)
    return bank.replace(
        recent_feats=bank.recent_feats.at[:, rs].set(feats.astype(bank.recent_feats.dtype)),
        recent_frames=bank.recent_frames.at[:, rs].set(f),
        recent_valid=bank.recent_valid.at[:, rs].set(write),
        ptr_vals=bank.ptr_vals.at[:, qs].set(ptrs.astype(bank.ptr_vals.dtype)),
        ptr_frames=bank.ptr_frames.at[:, qs].set(f),
        ptr_valid=bank.ptr_valid.at[:, qs].set(write),
    )


def bank_nbytes(bank: MemoryBank) -> int:
    """Total bytes of the bank's arrays."""
    import jax

    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(bank))


class HistoryReader(Protocol):
    """Per-object, per-frame non-conditioning outputs (e.g. a video predictor's history)."""

    def has(self, key: Hashable, frame: int) -> bool: ...

    def maskmem(self, key: Hashable, frame: int) -> np.ndarray: ...  # (g, g, m)

    def ptr(self, key: Hashable, frame: int) -> np.ndarray: ...  # (D,)


def bank_from_history(
    history: HistoryReader,
    keys: Sequence[Hashable],
    cond: Sequence[Mapping[int, tuple[np.ndarray, np.ndarray]]],
    frame_idx: int,
    *,
    num_frames: int,
    reverse: bool,
    num_objects: int,
    num_cond: int,
    grid: int,
    mem_dim: int,
    ptr_dim: int,
    num_recent: int,
    num_ptr: int,
) -> MemoryBank:
    """The bank (numpy arrays) with which frame `frame_idx` is tracked, from a full history.

    Object i (row i < num_objects, padding rows empty) has history key `keys[i]` and
    conditioning frames `cond[i]`: frame -> (spatial memory (g, g, mem_dim), pointer
    (ptr_dim,)), filed in the cond slots in frame order (at most num_cond). The history's
    entries of the num_recent (num_ptr) frames before `frame_idx` (after it in reverse),
    except conditioning frames, fill the ring slots by `ring_slot`. Every valid slot equals
    what `push` leaves after tracking those frames one by one up to `frame_idx`; the
    other slots are empty (invalid, ignored by `memory_tokens`).
    """
    bank = empty_bank(
        num_objects,
        num_cond,
        grid,
        mem_dim,
        ptr_dim,
        num_recent=num_recent,
        num_ptr=num_ptr,
        num_frames=num_frames,
        reverse=reverse,
    )
    d = -1 if reverse else 1
    for i, (key, frames) in enumerate(zip(keys, cond, strict=True)):
        for j, (cf, (feats, ptr)) in enumerate(sorted(frames.items(), key=lambda kv: kv[0])):
            bank.cond_feats[i, j], bank.cond_ptrs[i, j] = feats, ptr
            bank.cond_frames[i, j], bank.cond_valid[i, j] = cf, True
        for k in range(1, max(num_recent, num_ptr) + 1):
            f = frame_idx - d * k
            if not 0 <= f < num_frames or f in frames or not history.has(key, f):
                continue
            if k <= num_recent:
                s = ring_slot(f, num_recent)
                bank.recent_feats[i, s] = history.maskmem(key, f)
                bank.recent_frames[i, s], bank.recent_valid[i, s] = f, True
            if k <= num_ptr:
                s = ring_slot(f, num_ptr)
                bank.ptr_vals[i, s] = history.ptr(key, f)
                bank.ptr_frames[i, s], bank.ptr_valid[i, s] = f, True
    return bank
