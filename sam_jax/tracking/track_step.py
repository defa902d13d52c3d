"""SAM 2's per-frame tracking step and its pieces, as pure functions of (params, arrays).

Every `*_impl(m, ...)` below takes the bound `Sam2` module first and is run through
`model.apply(params, ..., method=...)`; the public wrappers (`track_step`, `prompt_frame`,
...) do that, so they are pure functions of the parameters and arrays and can be jitted,
scanned and vmapped. Shapes: S image size, g = S/16, D = 256, m = 64 (memory width),
O objects, all sharing one frame's image features.

Semantics (those of ultralytics' `SAM2Model`; docs/reference.md):

* tracking a frame: memory attention over the bank (`memory_bank.memory_tokens`), then the
  SAM heads with no prompt and multimask output (best IoU kept; the single-mask output
  where `multimask_output_for_tracking` is False), then the memory encoder
  on the sigmoid of the upsampled mask logits, x20 - 10; with the config's
  `no_obj_embed_spatial` (SAM 2.1) a learned embedding is added to the memory where the
  object score is <= 0;
* a prompted frame: an initial conditioning frame uses no memory (the features plus
  `no_mem_embed`); a correction on a tracked frame attends to the bank; the previous mask
  logits (clamped to +-32) may be fed as the mask prompt; multimask output iff at most one
  point (box corners count as points) and, past the initial conditioning frame,
  `multimask_output_for_tracking`;
* a mask prompt is used as the output directly (`use_mask_input_as_output_without_sam`):
  logits +-10, downsampled with antialiasing (to a quarter of the mask's side in the
  reference, `mask_prompt_impl`'s low_size); the pointer comes from the SAM heads fed the
  mask through `mask_downsample`; object present iff the mask has a positive pixel;
* memories of prompted frames are encoded from their binarised masks
  (`binarize_mask_from_pts_for_mem_enc`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.models.position_encoding import sine_position_encoding
from sam_jax.models.resize import linear_weights, resize_bilinear_antialias
from sam_jax.tracking.memory_bank import MemoryBank, memory_tokens, push, sine_1d

# Frame kinds per object, in FrameInput.kind.
TRACK = 0  # run the tracker on this frame
COND = 1  # a conditioning frame of this object: its output is stored; recent slots left empty
STORED = 2  # a prompted non-conditioning frame: its stored memory/pointer go in the bank

NO_OBJ_SCORE = -1024.0
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0  # mask prompts as output logits


@flax.struct.dataclass
class FrameInput:
    """One frame for `track_step`: its index, image features and per-object kind.

    vision_features (g, g, D), high_res_0 (4g, 4g, D/8), high_res_1 (2g, 2g, D/4): the
    frame's `encode_image` outputs (no batch axis). kind (O,) int32 (TRACK, COND, STORED);
    stored_feats (O, g, g, m) and stored_ptrs (O, D) are read where kind == STORED.
    """

    frame_idx: jnp.ndarray
    vision_features: jnp.ndarray
    high_res_0: jnp.ndarray
    high_res_1: jnp.ndarray
    kind: jnp.ndarray
    stored_feats: jnp.ndarray
    stored_ptrs: jnp.ndarray


@flax.struct.dataclass
class TrackOutput:
    """Per-object results of one tracked frame.

    low_res_masks (O, 4g, 4g) logits (-1024 where no object); obj_ptr (O, D);
    object_score_logits (O,); maskmem (O, g, g, m) the frame's new spatial memory.
    """

    low_res_masks: jnp.ndarray
    obj_ptr: jnp.ndarray
    object_score_logits: jnp.ndarray
    maskmem: jnp.ndarray


# ----------------------------------------------------------------------------- helpers


def apply_non_overlapping_constraints(
    logits: jnp.ndarray, valid: jnp.ndarray | None = None
) -> jnp.ndarray:
    """(O, ...) logits: where an object is not the highest-scoring one at a pixel, its
    logit is clamped to at most -10 (the reference's non-overlap constraint). valid (O,)
    marks real objects; others neither win nor change."""
    if valid is None:
        valid = jnp.ones(logits.shape[:1], bool)
    v = valid.reshape((-1,) + (1,) * (logits.ndim - 1))
    scored = jnp.where(v, logits, -jnp.inf)
    winner = jnp.argmax(scored, axis=0)
    idx = jnp.arange(logits.shape[0]).reshape(v.shape)
    keep = (winner[None] == idx) | ~v
    return jnp.where(keep, logits, jnp.minimum(logits, -10.0))


def _upsample_to_image(m, low: jnp.ndarray) -> jnp.ndarray:
    """(B, k, k) logits -> (B, S, S, 1), torch bilinear (align_corners=False)."""
    s = m.config.image_size
    w = jnp.asarray(linear_weights(low.shape[-1], s), low.dtype)
    return jnp.einsum("oh,bhw,pw->bop", w, low, w)[..., None]


def _ptr_tpos(m, pos: jnp.ndarray) -> jnp.ndarray:
    """Normalised pointer distances (...,) -> (..., m) temporal encodings."""
    cfg = m.config
    if cfg.proj_tpos_enc_in_obj_ptrs:  # d_model-wide sine, projected to the memory width
        return m.obj_ptr_tpos_proj(sine_1d(pos, cfg.d_model))
    return sine_1d(pos, cfg.mem_dim)


def condition_on_memory(m, bank: MemoryBank, frame_idx, vision: jnp.ndarray) -> jnp.ndarray:
    """The frame's features (g, g, D) after memory attention over each object's bank
    -> (O, g, g, D)."""
    cfg = m.config
    g, d = vision.shape[0], vision.shape[-1]
    o = bank.num_objects
    tpos = m.maskmem_tpos_enc.reshape(cfg.num_maskmem, cfg.mem_dim)
    memory, memory_pos, mask, n_ptr = memory_tokens(
        bank,
        frame_idx,
        tpos,
        lambda p: _ptr_tpos(m, p),
        signed_ptr_tpos=cfg.use_signed_tpos_enc_to_obj_ptrs,
        max_obj_ptrs=cfg.max_obj_ptrs_in_encoder,
        conditioning_memory=cfg.conditioning_memory,
    )
    curr = jnp.broadcast_to(vision.reshape(1, g * g, d), (o, g * g, d))
    pos = jnp.asarray(sine_position_encoding(g, g, d).reshape(1, g * g, d))
    out = m.memory_attention(
        curr,
        jnp.broadcast_to(pos, curr.shape),
        memory,
        memory_pos,
        num_obj_ptr_tokens=n_ptr,
        memory_mask=mask,
        feat_hw=(g, g),
    )
    return out.reshape(o, g, g, d)


def encode_memory_impl(
    m,
    pix_feat: jnp.ndarray,
    high_res_masks: jnp.ndarray,
    object_score_logits: jnp.ndarray,
    binarize: bool,
) -> jnp.ndarray:
    """The reference's `_encode_new_memory`: pix_feat (B, g, g, D) raw frame features,
    high_res_masks (B, S, S, 1) logits, object_score_logits (B,) -> (B, g, g, m)."""
    cfg = m.config
    if binarize:
        x = (high_res_masks > 0).astype(jnp.float32)
    else:
        x = jax.nn.sigmoid(high_res_masks)
    x = x * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
    feats, _ = m.memory_encoder(pix_feat, x, skip_mask_sigmoid=True)
    if cfg.no_obj_embed_spatial:
        absent = (object_score_logits <= 0).astype(feats.dtype).reshape(-1, 1, 1, 1)
        feats = feats + absent * m.no_obj_embed_spatial[0]
    return feats


# ------------------------------------------------------------------------ module methods


def encode_frames_impl(m, images_u8: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """(B, S, S, 3) uint8 letterboxed frames -> (vision (B, g, g, D), high_res_0, high_res_1)."""
    cfg = m.config
    mean = jnp.asarray(cfg.pixel_mean, jnp.float32)
    std = jnp.asarray(cfg.pixel_std, jnp.float32)
    x = (images_u8.astype(jnp.float32) - mean) / std
    f = m.encode_image(x)
    return f["vision_features"], f["high_res_features"][0], f["high_res_features"][1]


def track_step_impl(
    m, bank: MemoryBank, frame: FrameInput, non_overlap_for_memory: bool = False
) -> tuple[MemoryBank, TrackOutput]:
    """Track every object of the bank on one frame and record the frame in the bank."""
    new_bank, out, _ = track_heads_impl(m, bank, frame, non_overlap_for_memory)
    return new_bank, out


def tracked_heads(m, bank: MemoryBank, frame_idx, vision, high_res: list) -> tuple:
    """The tracker's SAM heads on a frame: vision (g, g, D) conditioned on each object's
    bank, no prompt, high_res [(O, 4g, 4g, D/8), (O, 2g, 2g, D/4)]. Returns the
    conditioned features (O, g, g, D), the heads' output and the memory features of their
    mask (O, g, g, mem_dim), encoded unbinarised as for a tracked frame."""
    pix = condition_on_memory(m, bank, frame_idx, vision)
    heads = m.forward_sam_heads(
        pix, high_res_features=high_res, multimask_output=m.config.multimask_output_for_tracking
    )
    maskmem = tracked_memory(m, vision, heads)
    return pix, heads, maskmem


def tracked_memory(m, vision: jnp.ndarray, heads: Any, high: jnp.ndarray | None = None):
    """Memory features (O, g, g, mem_dim) of the heads' chosen mask (or `high`, (O, S, S, 1)
    logits) on vision (g, g, D), unbinarised as a tracked frame's."""
    o = heads.object_score_logits.shape[0]
    high = heads.high_res_masks[:, 0, :, :, None] if high is None else high
    vis_b = jnp.broadcast_to(vision[None], (o, *vision.shape))
    return encode_memory_impl(m, vis_b, high, heads.object_score_logits[:, 0], binarize=False)


def track_heads_impl(
    m, bank: MemoryBank, frame: FrameInput, non_overlap_for_memory: bool = False
) -> tuple[MemoryBank, TrackOutput, Any]:
    """`track_step_impl` that also returns the SAM heads' full output (all candidate
    masks and predicted IoUs), which training needs."""
    o = bank.num_objects
    vision = frame.vision_features
    hr = [jnp.broadcast_to(h[None], (o, *h.shape)) for h in (frame.high_res_0, frame.high_res_1)]
    _, heads, maskmem = tracked_heads(m, bank, frame.frame_idx, vision, hr)
    score = heads.object_score_logits[:, 0]
    if non_overlap_for_memory:  # among the objects tracked (not prompted) on this frame
        tracked = bank.cond_valid.any(axis=1) & (frame.kind == TRACK)
        high = apply_non_overlapping_constraints(heads.high_res_masks[:, 0, :, :, None], tracked)
        maskmem = tracked_memory(m, vision, heads, high)

    stored = (frame.kind == STORED)[:, None]
    feats = jnp.where(stored[:, :, None, None], frame.stored_feats, maskmem)
    ptrs = jnp.where(stored, frame.stored_ptrs, heads.obj_ptr)
    new_bank = push(bank, frame.frame_idx, frame.kind != COND, feats, ptrs)
    out = TrackOutput(heads.low_res_masks[:, 0], heads.obj_ptr, score, maskmem)
    return new_bank, out, heads


def prompt_frame_impl(
    m,
    bank: MemoryBank,
    frame_idx,
    vision: jnp.ndarray,
    high_res_0: jnp.ndarray,
    high_res_1: jnp.ndarray,
    point_coords: jnp.ndarray,
    point_labels: jnp.ndarray,
    prev_mask_logits: jnp.ndarray | None,
    is_init_cond_frame: bool,
    multimask_output: bool,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Points (and box corners) on one frame for one object (bank of O = 1).

    point_coords (1, N, 2) model-input pixels, point_labels (1, N) int32; prev_mask_logits
    (1, k, k) or None (any k: resized to 4g with antialiasing, as the reference does with
    a mask prompt's S/4 output). Returns low-res logits (1, 4g, 4g), obj_ptr (1, D), score (1,).
    """
    if is_init_cond_frame:
        pix = vision[None] + m.no_mem_embed.reshape(1, 1, 1, -1)
    else:
        pix = condition_on_memory(m, bank, frame_idx, vision)
    mask_in = None
    if prev_mask_logits is not None:
        mask_in = jnp.clip(prev_mask_logits, -32.0, 32.0)[..., None]
    heads = m.forward_sam_heads(
        pix,
        point_coords,
        point_labels,
        mask_in,
        [high_res_0[None], high_res_1[None]],
        multimask_output,
    )
    return heads.low_res_masks[:, 0], heads.obj_ptr, heads.object_score_logits[:, 0]


def mask_prompt_impl(
    m,
    vision: jnp.ndarray,
    high_res_0: jnp.ndarray,
    high_res_1: jnp.ndarray,
    mask: jnp.ndarray,
    low_size: int | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """A mask (1, M, M) of 0/1 used as the output (the reference's `_use_mask_as_output`).
    Returns low-res logits (1, k, k), obj_ptr (1, D), score (1,), with k = low_size, or
    cfg.mask_input_size (4g) if None. The reference's k is M / 4: S / 4 for an S x S
    prompt, which is 4g for SAM 2 but not for SAM 3 (252 vs 288 at 1008 px)."""
    cfg = m.config
    k = cfg.mask_input_size if low_size is None else low_size
    mask = mask.astype(jnp.float32)[..., None]
    high = mask * MASK_OUT_SCALE + MASK_OUT_BIAS
    low = resize_bilinear_antialias(high, (k, k))
    heads = m.forward_sam_heads(
        vision[None],
        mask_inputs=m.mask_downsample(mask),
        high_res_features=[high_res_0[None], high_res_1[None]],
        multimask_output=False,
    )
    lam = jnp.any(mask > 0, axis=(1, 2, 3)).astype(jnp.float32)[:, None]  # (1, 1)
    ptr = lam * heads.obj_ptr + (1 - lam) * m.no_obj_ptr
    score = (MASK_OUT_SCALE * lam + MASK_OUT_BIAS)[:, 0]
    return low[..., 0], ptr, score


def prompt_memory_impl(
    m, vision: jnp.ndarray, low_res: jnp.ndarray, score: jnp.ndarray
) -> jnp.ndarray:
    """Memory of a prompted frame: its low-res logits (B, k, k) (k = 4g, or S/4 for a mask
    prompt's output) upsampled to S and binarised. vision (g, g, D) -> (B, g, g, m)."""
    b = low_res.shape[0]
    pix = jnp.broadcast_to(vision[None], (b, *vision.shape))
    return encode_memory_impl(m, pix, _upsample_to_image(m, low_res), score, binarize=True)


# --------------------------------------------------------------------- public, pure


def encode_frames(model, params, images_u8):
    """(B, S, S, 3) uint8 letterboxed frames -> (vision, high_res_0, high_res_1)."""
    return model.apply(params, images_u8, method=encode_frames_impl)


def track_step(
    model, params, memory: MemoryBank, frame: FrameInput, non_overlap_for_memory: bool = False
) -> tuple[MemoryBank, TrackOutput]:
    """Pure tracking step: (memory, frame) -> (memory, outputs); jit it with
    `jax.jit(track_step, static_argnums=(0, 4))` or use `make_track_step`."""
    return model.apply(params, memory, frame, non_overlap_for_memory, method=track_step_impl)


def make_track_step(model, params, non_overlap_for_memory: bool = False):
    """`step(memory, frame) -> (memory, outputs)`, jit-compiled, params bound."""
    fn = jax.jit(lambda p, mem, fr: track_step(model, p, mem, fr, non_overlap_for_memory))
    return lambda memory, frame: fn(params, memory, frame)


def empty_frame_input(num_objects: int, grid: int, d_model: int = 256, mem_dim: int = 64) -> Any:
    """A FrameInput of zeros (numpy), every object TRACK."""
    g = grid
    return FrameInput(
        frame_idx=np.int32(0),
        vision_features=np.zeros((g, g, d_model), np.float32),
        high_res_0=np.zeros((4 * g, 4 * g, d_model // 8), np.float32),
        high_res_1=np.zeros((2 * g, 2 * g, d_model // 4), np.float32),
        kind=np.zeros((num_objects,), np.int32),
        stored_feats=np.zeros((num_objects, g, g, mem_dim), np.float32),
        stored_ptrs=np.zeros((num_objects, d_model), np.float32),
    )
