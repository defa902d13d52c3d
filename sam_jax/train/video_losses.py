"""The per-frame losses of an object tracked through a training clip.

A clip's ground truth is taken at the logits' resolution (4x the embedding grid) as a
`Target`: each logit cell's object fraction and its known fraction, so void pixels (DAVIS's
255, a sparsely annotated video's unannotated frames) add nothing to the mask losses, the
IoUs or the corrective clicks, and a frame without any known pixel adds no loss at all.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sam_jax.train.losses import object_score_loss, sam_loss, soft_targets


@flax.struct.dataclass
class Target:
    """An object's ground truth at logit resolution: soft (..., 4g, 4g) its area fraction
    per logit cell, known (..., 4g, 4g) the cell's known (not void) fraction. Indexing
    indexes both."""

    soft: jnp.ndarray
    known: jnp.ndarray

    def __getitem__(self, index: Any) -> Target:
        return Target(self.soft[index], self.known[index])

    @property
    def mask(self) -> jnp.ndarray:
        """Where the object is, as a bool per cell."""
        return self.soft > 0.5

    @property
    def void(self) -> jnp.ndarray:
        """Cells whose ground truth is mostly unknown."""
        return self.known < 0.5

    @property
    def annotated(self) -> jnp.ndarray:
        """(...,) whether a frame has any known cell (an unannotated frame has none)."""
        return jnp.any(~self.void, axis=(-2, -1))


def frame_losses(logits, iou, score_logits, target: Target, loss_weights: dict):
    """Per frame: SAM's loss of logits (N, M, 4g, 4g) and predicted IoU (N, M) against the
    (N, 4g, 4g) target where the object is visible (void cells left out), plus the
    object-score BCE of (N, 1) logits; nothing on an unannotated frame. Returns loss (N,)
    and the trained mask's IoU (N,), NaN where the object is not visible."""
    present = jnp.any(target.mask, axis=(1, 2))

    def one(lg, io, t):
        return sam_loss(
            lg[None], io[None], t.soft[None], pixel_weights=t.known[None], **loss_weights
        )

    mask_loss, met = jax.vmap(one)(logits, iou, target)
    loss = jnp.where(present, mask_loss, 0.0) + object_score_loss(score_logits, present)
    return jnp.where(target.annotated, loss, 0.0), jnp.where(present, met["iou"], jnp.nan)


def heads_losses(heads, soft, multimask: bool, loss_weights: dict):
    """`frame_losses` of SAM heads' output: every candidate mask when multimask, else the one."""
    if multimask:
        logits, iou = heads.low_res_multimasks, heads.ious
    else:
        logits, iou = heads.low_res_masks, heads.ious[:, :1]
    return frame_losses(logits, iou, heads.object_score_logits, soft, loss_weights)


def clip_targets(targets, ignore, size: int) -> Target:
    """targets (B, T, [K,] S, S) bool and ignore (B, T, S, S) bool or None -> the Target at
    logit resolution (size, size), known broadcast over the objects; jax arrays (a clip's
    frames are indexed by traced frame numbers)."""
    soft = jnp.asarray(soft_targets(jnp.asarray(targets), size))
    if ignore is None:
        return Target(soft, jnp.ones_like(soft))
    want = targets.shape[:2] + targets.shape[-2:]
    if tuple(jnp.shape(ignore)) != want:
        raise ValueError(
            f"ignore must be (B, T, S, S) = {want} for targets {targets.shape}; "
            f"got {jnp.shape(ignore)}"
        )
    known = 1.0 - soft_targets(jnp.asarray(ignore), size)
    if targets.ndim == 5:
        known = known[:, :, None]
    return Target(soft, jnp.broadcast_to(known, soft.shape))
