"""The concept video predictor's jit-compiled functions (sam_jax.predictors.concept_video).

Module-level with the models as static arguments, so predictors of equal models share the
compiled code; `TRACE_COUNTS` counts the traces. Object counts arrive padded to buckets
(`sam_jax.tracking.bucket`) with a validity row mask, detections as all T x Q queries of
the detector, so the compiled shapes depend only on those buckets, the number of captions
and exemplar boxes, and the video's frame size.

Shapes: S image size, g = S / 14 grid, m = 4g low-res masks, i = 16g the memory encoder's
mask size, D = 256, O tracked objects (padded), K new objects (padded), T captions,
Q detector queries.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp

from sam_jax.models.resize import linear_weights
from sam_jax.models.sam3_neck import Sam3DualViTDetNeck
from sam_jax.tracking.memory_bank import MemoryBank, push
from sam_jax.tracking.track_step import (
    apply_non_overlapping_constraints,
    condition_on_memory,
    encode_memory_impl,
    mask_prompt_impl,
)

TRACE_COUNTS: collections.Counter = collections.Counter()

# Object score logits the reference gives the memory encoder: +-10 by mask area for
# tracked frames, 10 for a new object's conditioning frame.
AREA_SCORE = 10.0
# A mask that keeps less than this fraction of its area under the pixel-wise
# non-overlap constraint is suppressed before memory encoding (the reference's rule).
SHRINK_THRESHOLD = 0.3
IOU_EPS = 1e-7  # the reference's mask IoU: intersection / (union + eps)
MEMORY_DTYPE = jnp.float16  # the reference stores spatial memories in half precision
HIGHEST = jax.lax.Precision.HIGHEST


def dual_neck_config(concept_model, tracker_model):
    """The vision config of one trunk feeding both necks; ValueError if the two models'
    trunks or image sizes differ."""
    c, t = concept_model.config, tracker_model.config
    enc = dataclasses.replace(c.encoder, add_sam2_neck=True)
    if dataclasses.replace(t.encoder, add_sam2_neck=True) != enc or c.image_size != t.image_size:
        raise ValueError(
            "the concept model and the tracker must share one vision trunk and image size "
            "(both built from one SAM 3 checkpoint); got "
            f"{c.encoder} at {c.image_size} px and {t.encoder} at {t.image_size} px"
        )
    return enc


def dual_neck_params(concept_params, tracker_params) -> dict:
    """The trunk and detector neck from the concept model's tree, the tracker neck
    (`sam2_convs_*`) from the tracker's: the variables of `Sam3DualViTDetNeck`."""
    det = concept_params["params"]["backbone"]["vision_backbone"]
    trk = tracker_params["params"]["image_encoder"]["vision_backbone"]
    necks = {k: v for k, v in trk.items() if k.startswith("sam2_convs_")}
    return {"params": {**det, **necks}}


def _resize(x: jnp.ndarray, h: int, w: int) -> jnp.ndarray:
    """(..., a, b) -> (..., h, w): torch bilinear, align_corners=False, no antialias."""
    wh = jnp.asarray(linear_weights(x.shape[-2], h))
    ww = jnp.asarray(linear_weights(x.shape[-1], w))
    # Full float32 matmuls: these logits are thresholded at 0 right after.
    return jnp.einsum("oh,...hw,pw->...op", wh, x, ww, precision=HIGHEST)


@functools.partial(jax.jit, static_argnums=(0, 1))
def perceive(concept_model, tracker_model, neck_params, concept_params, tracker_params, image):
    """One normalised, stretched frame (1, S, S, 3) through the shared trunk and both
    necks. Returns the detector's features (`encode_image`'s dict) and the tracker's
    vision (g, g, D), high_res_0 (4g, 4g, D/8), high_res_1 (2g, 2g, D/4)."""
    TRACE_COUNTS["perceive"] += 1
    neck = Sam3DualViTDetNeck(dual_neck_config(concept_model, tracker_model))
    out = neck.apply(neck_params, image)
    keep = len(out.sam3_features) - concept_model.config.scalp
    det = {"backbone_fpn": out.sam3_features[:keep], "vision_pos_enc": out.sam3_pos[:keep]}
    fpn = out.sam2_features[: len(out.sam2_features) - tracker_model.config.scalp]
    h0, h1 = tracker_model.apply(
        tracker_params,
        fpn[0],
        fpn[1],
        method=lambda m, a, b: m.sam_mask_decoder.project_high_res(a, b),
    )
    return det, (fpn[-1][0], h0[0], h1[0])


@functools.partial(jax.jit, static_argnums=0)
def encode_text(concept_model, concept_params, ids):
    TRACE_COUNTS["encode_text"] += 1
    return concept_model.apply(concept_params, ids, method="encode_text")


@functools.partial(jax.jit, static_argnums=0)
def detect(concept_model, concept_params, features, text, boxes, labels):
    """-> probabilities sigmoid(pred_logits) (T, Q) (the video predictor's detection
    score: no presence factor) and mask logits (T * Q, m, m)."""
    TRACE_COUNTS["detect"] += 1
    out = concept_model.apply(concept_params, features, text, boxes, labels, method="detect")
    masks = out["pred_masks"]
    return jax.nn.sigmoid(out["pred_logits"]), masks.reshape(-1, *masks.shape[2:])


@functools.partial(jax.jit, static_argnums=0)
def track(tracker_model, tracker_params, bank: MemoryBank, frame_idx, vision, h0, h1):
    """Every object of the bank tracked on one frame (memory attention, then the SAM heads
    without prompt). -> low-res logits (O, m, m), pointers (O, D), object scores (O,)
    (sigmoid of the score logits)."""
    TRACE_COUNTS["track"] += 1

    def fn(m):
        o = bank.num_objects
        pix = condition_on_memory(m, bank, frame_idx, vision)
        hr = [jnp.broadcast_to(h[None], (o, *h.shape)) for h in (h0, h1)]
        heads = m.forward_sam_heads(
            pix, high_res_features=hr, multimask_output=m.config.multimask_output_for_tracking
        )
        score = jax.nn.sigmoid(heads.object_score_logits[:, 0])
        return heads.low_res_masks[:, 0], heads.obj_ptr, score

    return tracker_model.apply(tracker_params, method=fn)


@jax.jit
def match(det_masks, trk_masks):
    """Binarised mask IoU (N, O) of detections (N, m, m) against tracks (O, m, m), and
    whether each track's mask is non-empty (O,)."""
    TRACE_COUNTS["match"] += 1
    a = (det_masks > 0).reshape(det_masks.shape[0], -1).astype(jnp.float32)
    b = (trk_masks > 0).reshape(trk_masks.shape[0], -1).astype(jnp.float32)
    inter = jnp.maximum(jnp.matmul(a, b.T, precision=HIGHEST), 0.0)  # exact counts
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / (union + IOU_EPS), b.any(axis=1)


def _suppress_shrinkage(high: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """(O, i, i) logits: a mask keeping less than SHRINK_THRESHOLD of its area once every
    pixel goes to its highest-scoring object is pushed to <= -10 (an empty mask too, its
    area counted as 1). Padding rows (valid False) take no part."""
    after = apply_non_overlapping_constraints(high, valid)
    before_area = jnp.maximum((high > 0).sum((1, 2)), 1).astype(jnp.float32)
    ratio = (after > 0).sum((1, 2)).astype(jnp.float32) / before_area
    keep = (ratio >= SHRINK_THRESHOLD)[:, None, None]
    return jnp.where(keep, high, jnp.minimum(high, -10.0))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def file_tracked(tracker_model, tracker_params, bank, frame_idx, vision, low, ptrs, valid):
    """Encode the tracked frame's memory as the reference's concept tracker does and push
    it with the pointers: low-res logits (O, m, m) upsampled to i x i, shrinking masks
    suppressed, object scores +-10 by mask area, sigmoid masks (not binarised), memory
    stored in half precision. Rows with valid False write nothing."""
    TRACE_COUNTS["file_tracked"] += 1
    i = 16 * tracker_model.config.embed_size
    high = _suppress_shrinkage(_resize(low, i, i), valid)
    score = jnp.where((high > 0).any(axis=(1, 2)), AREA_SCORE, -AREA_SCORE)
    pix = jnp.broadcast_to(vision[None], (low.shape[0], *vision.shape))
    feats = tracker_model.apply(
        tracker_params, pix, high[..., None], score, False, method=encode_memory_impl
    )
    return push(bank, frame_idx, valid, feats.astype(MEMORY_DTYPE), ptrs)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def add_objects(tracker_model, tracker_params, bank, rows, frame_idx, vision, h0, h1, det_masks,
                det_rows):  # fmt: skip
    """New objects from detection mask logits det_masks[det_rows] (K, m, m): each mask, upsampled to
    i x i and binarised, is the object's conditioning-frame output (`mask_prompt_impl`);
    its memory is encoded from that output's low-res logits upsampled to S (sigmoid, score
    10). Written to cond slot 0 of bank rows `rows` (K,) (an out-of-range row drops the
    entry); their recent memories and pointers are cleared."""
    TRACE_COUNTS["add_objects"] += 1
    cfg = tracker_model.config
    i, s = 16 * cfg.embed_size, cfg.image_size
    masks = _resize(det_masks[det_rows], i, i) > 0

    def one(mask):
        return tracker_model.apply(
            tracker_params, vision, h0, h1, mask[None], method=mask_prompt_impl
        )

    low, ptrs, _ = jax.vmap(one)(masks)
    low, ptrs = low[:, 0], ptrs[:, 0]
    k = low.shape[0]
    pix = jnp.broadcast_to(vision[None], (k, *vision.shape))
    score = jnp.full((k,), AREA_SCORE, jnp.float32)
    feats = tracker_model.apply(
        tracker_params, pix, _resize(low, s, s)[..., None], score, False, method=encode_memory_impl
    )
    put = functools.partial(_put_rows, rows)
    return bank.replace(
        cond_feats=put(bank.cond_feats, feats.astype(bank.cond_feats.dtype)[:, None]),
        cond_ptrs=put(bank.cond_ptrs, ptrs[:, None]),
        cond_frames=put(bank.cond_frames, jnp.full((k, 1), frame_idx, jnp.int32)),
        cond_valid=put(bank.cond_valid, jnp.ones((k, 1), bool)),
        recent_valid=put(bank.recent_valid, jnp.zeros((k, bank.recent_valid.shape[1]), bool)),
        ptr_valid=put(bank.ptr_valid, jnp.zeros((k, bank.ptr_valid.shape[1]), bool)),
    )


def _put_rows(rows, x, values):
    return x.at[rows].set(values.astype(x.dtype), mode="drop")


_PER_OBJECT = ("cond_feats", "cond_ptrs", "cond_frames", "cond_valid", "recent_feats",
               "recent_frames", "recent_valid", "ptr_vals", "ptr_frames", "ptr_valid")  # fmt: skip


@jax.jit
def take_rows(bank, idx, keep):
    """The bank with rows `idx` (N,) of the old one; rows with keep False come out empty."""
    TRACE_COUNTS["take_rows"] += 1
    new = {k: jnp.take(getattr(bank, k), idx, axis=0) for k in _PER_OBJECT}
    for k in ("cond_valid", "recent_valid", "ptr_valid"):
        new[k] = new[k] & keep[:, None]
    return bank.replace(**new)


@functools.partial(jax.jit, static_argnums=(5, 6))
def frame_masks(trk_low, det_masks, idx, keep, scores, height: int, width: int):
    """The frame's low-res logits (N, m, m), rows `idx` (N,) of trk_low (O, m, m) then
    det_masks (A, m, m); its output masks (N, height, width) bool: bilinear to the frame
    size, > 0; and which rows are output (N,): those with `keep` and a non-empty mask.
    When more than one row is output, each pixel goes to the object with the highest score
    (N,) among those whose mask covers it (ties: the lower row); a row may end up empty."""
    TRACE_COUNTS["frame_masks"] += 1
    low = jnp.concatenate([trk_low, det_masks])[idx]
    masks = _resize(low, height, width) > 0
    keep = keep & masks.any(axis=(1, 2))
    claim = jnp.where(masks & keep[:, None, None], scores[:, None, None], 0.0)
    claim = jnp.where(keep[:, None, None], claim, -jnp.inf)
    winner = jnp.argmax(claim, axis=0) == jnp.arange(low.shape[0])[:, None, None]
    exclusive = masks & winner & (claim > 0)
    masks = jnp.where(keep.sum() > 1, exclusive, masks) & keep[:, None, None]
    return low, masks, keep


def empty_memory(num_objects: int, grid: int, mem_dim: int, ptr_dim: int, num_recent: int,
                 num_ptr: int, num_frames: int) -> MemoryBank:  # fmt: skip
    """An empty device bank with one conditioning slot per object and half-precision
    spatial memories."""
    o, g = num_objects, grid
    f16 = MEMORY_DTYPE
    return MemoryBank(
        cond_feats=jnp.zeros((o, 1, g, g, mem_dim), f16),
        cond_ptrs=jnp.zeros((o, 1, ptr_dim), jnp.float32),
        cond_frames=jnp.zeros((o, 1), jnp.int32),
        cond_valid=jnp.zeros((o, 1), bool),
        recent_feats=jnp.zeros((o, num_recent, g, g, mem_dim), f16),
        recent_frames=jnp.zeros((o, num_recent), jnp.int32),
        recent_valid=jnp.zeros((o, num_recent), bool),
        ptr_vals=jnp.zeros((o, num_ptr, ptr_dim), jnp.float32),
        ptr_frames=jnp.zeros((o, num_ptr), jnp.int32),
        ptr_valid=jnp.zeros((o, num_ptr), bool),
        num_frames=jnp.asarray(num_frames, jnp.int32),
        reverse=jnp.asarray(False),
    )
