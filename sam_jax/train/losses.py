"""Losses of the SAM papers, on mask logits.

Masks are compared at the logits' resolution: ground truth (B, h, w) in {0, 1}, logits
(B, M, h, w). With several candidate masks only the best one (lowest loss) is trained, so
the others stay free to cover other plausible objects (SAM's multimask rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _pixel_mean(x: jnp.ndarray, weights: jnp.ndarray | None) -> jnp.ndarray:
    """Mean of x (..., h, w) over its last two axes, weighted by weights (..., h, w) in
    [0, 1] when given (all-zero weights: 0)."""
    if weights is None:
        return jnp.mean(x, axis=(-2, -1))
    total = jnp.sum(weights, axis=(-2, -1))
    return jnp.sum(weights * x, axis=(-2, -1)) / jnp.where(total > 0, total, 1.0)


def focal_loss(
    logits: jnp.ndarray,
    target: jnp.ndarray,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weights: jnp.ndarray | None = None,
):
    """Mean sigmoid focal loss over the last two axes: (..., h, w) -> (...); weights
    (..., h, w) in [0, 1] weigh the pixels (0: ignored)."""
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    if gamma == 0:  # x ** 0 has a NaN gradient at x = 0 (a saturated pixel)
        return _pixel_mean(a_t * ce, weights)
    p_t = p * target + (1 - p) * (1 - target)
    return _pixel_mean(a_t * ce * (1 - p_t) ** gamma, weights)


def dice_loss(
    logits: jnp.ndarray, target: jnp.ndarray, eps: float = 1.0, weights: jnp.ndarray | None = None
):
    """1 - soft Dice over the last two axes: (..., h, w) -> (...); pixels weighted by
    weights (..., h, w) in [0, 1] when given (0: ignored)."""
    p = jax.nn.sigmoid(logits)
    if weights is not None:
        p, target = p * weights, target * weights
    inter = jnp.sum(p * target, axis=(-2, -1))
    total = jnp.sum(p, axis=(-2, -1)) + jnp.sum(target, axis=(-2, -1))
    return 1.0 - (2.0 * inter + eps) / (total + eps)


def mask_iou(
    logits: jnp.ndarray, target: jnp.ndarray, weights: jnp.ndarray | None = None
) -> jnp.ndarray:
    """IoU of (logits > 0) with the target over the last two axes, over the pixels whose
    weight (..., h, w) is above 1/2 when weights are given."""
    pred = logits > 0
    tgt = target > 0.5
    if weights is not None:
        known = weights > 0.5
        pred, tgt = pred & known, tgt & known
    inter = jnp.sum(pred & tgt, axis=(-2, -1))
    union = jnp.sum(pred | tgt, axis=(-2, -1))
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def weighted_mean(x: jnp.ndarray, weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Mean of x (B,) with weights (B,) (None: all 1). All-zero weights give 0, not NaN, so
    a batch of only padding contributes nothing."""
    if weights is None:
        return jnp.mean(x)
    w = weights.astype(x.dtype)
    total = jnp.sum(w)
    # where, not a multiply: a 0-weighted NaN or inf stays out of the sum
    return jnp.sum(jnp.where(w > 0, w * x, 0.0)) / jnp.where(total > 0, total, 1.0)


def sam_loss(
    logits: jnp.ndarray,
    iou_pred: jnp.ndarray,
    target: jnp.ndarray,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    *,
    weights: jnp.ndarray | None = None,
    pixel_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict]:
    """SAM's loss for logits (B, M, h, w), predicted IoU (B, M), target (B, h, w).

    focal:dice = 20:1 on the best of the M masks, plus MSE between the predicted IoU and the
    actual IoU of every mask (the IoU head must rank all candidates). With focal_alpha=0.5
    and focal_gamma=0 the focal term is half the binary cross-entropy, which trains models
    from scratch more steadily (SAM's weights assume a pretrained encoder).
    weights (B,): the loss and the metrics are means over examples weighted so (see
    `weighted_mean`); a 0-weighted example (padding) adds nothing to them or to gradients.
    pixel_weights (B, h, w) in [0, 1]: each logit cell's known fraction (0 where the
    ground truth is void, e.g. a COCO crowd region); unknown pixels add nothing to the mask
    losses and are left out of the actual IoU. None: every pixel counts.
    Returns (scalar loss, metrics dict).
    """
    t = jnp.broadcast_to(target[:, None].astype(logits.dtype), logits.shape)
    w = None if pixel_weights is None else pixel_weights[:, None].astype(logits.dtype)
    per_mask = focal_weight * focal_loss(
        logits, t, focal_alpha, focal_gamma, w
    ) + dice_weight * dice_loss(logits, t, weights=w)
    best = jnp.argmin(per_mask, axis=1)
    mask_loss = jnp.take_along_axis(per_mask, best[:, None], axis=1)[:, 0]
    actual_iou = jax.lax.stop_gradient(mask_iou(logits, t, w))
    iou_loss = jnp.mean((iou_pred - actual_iou) ** 2, axis=1)
    loss = weighted_mean(mask_loss + iou_weight * iou_loss, weights)
    best_iou = jnp.take_along_axis(actual_iou, best[:, None], axis=1)[:, 0]
    metrics = {
        "loss": loss,
        "iou": weighted_mean(best_iou, weights),
        "iou_mse": weighted_mean(iou_loss, weights),
    }
    return loss, metrics


def object_score_loss(object_score_logits: jnp.ndarray, present: jnp.ndarray) -> jnp.ndarray:
    """SAM 2's object-presence BCE: logits (B, 1), present (B,) bool -> (B,)."""
    return optax.sigmoid_binary_cross_entropy(
        object_score_logits[:, 0], present.astype(jnp.float32)
    )


def soft_targets(targets: jnp.ndarray, size: int) -> jnp.ndarray:
    """Bool masks (..., S, S) -> each block's foreground fraction (..., size, size): the
    target at the logits' resolution (size divides S)."""
    s = targets.shape[-1]
    f = s // size
    x = targets.astype(jnp.float32).reshape(*targets.shape[:-2], size, f, size, f)
    return x.mean(axis=(-3, -1))
