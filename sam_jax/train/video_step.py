"""SAM 2 training through the tracking scan: a clip's loss with gradients through memory.

    tx = make_optimizer(variables["params"], "all", 1e-4)
    state = TrainState.create(variables, tx)
    step = make_train_step(model, tx, num_corrections=1, loss_fn=clip_loss)
    state, metrics = step(state, clips, targets, key)    # clips (B, T, S, S, 3) normalised

Per clip (one object, prompted on frame 0), as SAM 2 was trained:

* frame 0 is the conditioning frame: a click from the ground truth (one positive point,
  multimask output, the best mask trained), then `num_corrections` clicks from the error
  region with the previous logits fed back (single-mask output, as the tracker gives for
  more than one point). Its memory is encoded from the final binarised mask, as in tracking;
* frames 1 .. T-1 run `track_heads_impl` (the body of `track_step`) in one `lax.scan` over
  the fixed-shape memory bank, so each frame's loss reaches the earlier frames' memory
  encodings, pointers and features through the memory attention;
* every frame's loss is SAM's (mask + IoU) on the frames where the object is visible, plus
  the object-score BCE on every frame.

With a model built with `remat=True` (or `remat_frames=True`) the scan's per-frame body is
recomputed in the backward pass: what the backward pass keeps across frames is each frame's
memory bank (the scan carry), not the frame's activations, so the tracked frames' activation
memory is one frame's plus T banks. The frames are then also encoded one at a time (a
`lax.map`, each frame recomputed in the backward pass), so the image encoder's activations,
and with a frozen encoder its forward pass's peak, are one frame's rather than B * T frames'.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.tracking.memory_bank import empty_bank
from sam_jax.tracking.track_step import (
    TRACK,
    FrameInput,
    prompt_memory_impl,
    track_heads_impl,
)
from sam_jax.train.clicks import cell_centre, corrective_click, sample_pixel
from sam_jax.train.losses import object_score_loss, sam_loss, soft_targets


def _frame_loss(heads, soft: jnp.ndarray, multimask: bool, loss_weights: dict):
    """SAM's loss on one object's heads output (batch 1) against soft (4g, 4g), masked to
    frames where the object is visible, plus the object-score BCE."""
    present = jnp.any(soft > 0.5)
    if multimask:
        logits, iou = heads.low_res_multimasks, heads.ious
    else:
        logits, iou = heads.low_res_masks, heads.ious[:, :1]
    mask_loss, met = sam_loss(logits, iou, soft[None], **loss_weights)
    score_loss = object_score_loss(heads.object_score_logits, present[None])[0]
    loss = jnp.where(present, mask_loss, 0.0) + score_loss
    return loss, jnp.where(present, met["iou"], jnp.nan)


def _prompt_loss_impl(
    m,
    vision: jnp.ndarray,
    high_res_0: jnp.ndarray,
    high_res_1: jnp.ndarray,
    soft: jnp.ndarray,
    key: jax.Array,
    num_corrections: int,
    loss_weights: dict,
) -> tuple[Any, jnp.ndarray, list]:
    """Frame 0 of a clip: the click rounds and their losses, and the bank holding frame 0
    as the conditioning memory. vision (T, g, g, D), high_res_0 (T, 4g, 4g, D/8),
    high_res_1 (T, 2g, 2g, D/4), soft (T, 4g, 4g) the target's area fraction at logit
    resolution. Returns (bank, mean loss over rounds, per-round IoUs)."""
    t, g = vision.shape[0], vision.shape[1]
    cfg = m.config
    target0 = soft[0] > 0.5
    keys = jax.random.split(key, num_corrections + 1)
    point, _ = sample_pixel(keys[0], target0[None])
    scale = cfg.image_size / cfg.mask_input_size
    coords, labels = cell_centre(point[:, None], scale), jnp.ones((1, 1), jnp.int32)
    pix0 = vision[:1] + m.no_mem_embed.reshape(1, 1, 1, -1)
    hr0 = [high_res_0[:1], high_res_1[:1]]
    mask_in, losses, ious = None, [], []
    for r in range(num_corrections + 1):
        heads = m.forward_sam_heads(pix0, coords, labels, mask_in, hr0, multimask_output=r == 0)
        loss, iou = _frame_loss(heads, soft[0], r == 0, loss_weights)
        losses.append(loss)
        ious.append(iou)
        low = jax.lax.stop_gradient(heads.low_res_masks[:, 0])  # (1, 4g, 4g)
        if r < num_corrections:
            click, click_label = corrective_click(keys[r + 1], low, target0[None])
            coords = jnp.concatenate([coords, cell_centre(click, scale)], axis=1)
            labels = jnp.concatenate([labels, click_label], axis=1)
            mask_in = jnp.clip(low, -32.0, 32.0)[..., None]
    score = heads.object_score_logits[:, 0]
    cond_mem = prompt_memory_impl(m, vision[0], heads.low_res_masks[:, 0], score)
    bank = empty_bank(
        1,
        1,
        g,
        cfg.mem_dim,
        cfg.d_model,
        num_recent=cfg.num_maskmem - 1,
        num_ptr=cfg.max_obj_ptrs_in_encoder - 1,
        num_frames=t,
        xp=jnp,
    )
    bank = bank.replace(
        cond_feats=cond_mem[:, None],
        cond_ptrs=heads.obj_ptr[:, None],
        cond_valid=jnp.ones((1, 1), bool),
    )
    return bank, jnp.mean(jnp.stack(losses)), ious


def _encode_frames(model, variables, frames: jnp.ndarray, one_at_a_time: bool) -> tuple:
    """(N, S, S, 3) -> vision (N, g, g, D), high_res_0 (N, 4g, 4g, D/8), high_res_1
    (N, 2g, 2g, D/4). one_at_a_time: a lax.map over the frames, each recomputed in the
    backward pass, so the encoder's activations are one frame's, not N frames'."""

    def encode(x):
        f = model.apply(variables, x, method="encode_image")
        return f["vision_features"], *f["high_res_features"]

    if not one_at_a_time:
        return encode(frames)
    one = lambda x: jax.tree.map(lambda a: a[0], encode(x[None]))
    one = jax.checkpoint(one, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    return jax.lax.map(one, frames)


def _clip_loss(
    model,
    variables,
    vision,
    high_res_0,
    high_res_1,
    soft,
    key,
    num_corrections,
    remat_frames,
    loss_weights,
):
    """One clip's loss and metrics (arguments as `_prompt_loss_impl`)."""
    t, g = vision.shape[0], vision.shape[1]
    cfg = model.config
    bank, prompt_loss, ious = model.apply(
        variables,
        vision,
        high_res_0,
        high_res_1,
        soft,
        key,
        num_corrections,
        loss_weights,
        method=_prompt_loss_impl,
    )
    frames = FrameInput(
        frame_idx=jnp.arange(1, t, dtype=jnp.int32),
        vision_features=vision[1:],
        high_res_0=high_res_0[1:],
        high_res_1=high_res_1[1:],
        kind=jnp.full((t - 1, 1), TRACK, jnp.int32),
        stored_feats=jnp.zeros((t - 1, 1, g, g, cfg.mem_dim), vision.dtype),
        stored_ptrs=jnp.zeros((t - 1, 1, cfg.d_model), vision.dtype),
    )

    multimask = cfg.multimask_output_for_tracking

    def body(bank, xs):
        frame, target = xs
        bank, _, heads = model.apply(variables, bank, frame, method=track_heads_impl)
        return bank, _frame_loss(heads, target, multimask, loss_weights)

    if remat_frames:  # keep each frame's bank, recompute the frame in the backward pass
        body = jax.checkpoint(
            body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False
        )

    _, (track_losses, track_ious) = jax.lax.scan(body, bank, (frames, soft[1:]))
    total = (prompt_loss + jnp.sum(track_losses)) / t
    metrics = {
        "loss": total,
        "iou_first": ious[0],
        "iou_last": ious[-1],
        "iou_tracked": jnp.nanmean(track_ious),
    }
    return total, metrics


def clip_loss(
    model: nn.Module,
    variables: Any,
    clips: jnp.ndarray,
    targets: jnp.ndarray,
    key: jax.Array,
    num_corrections: int = 1,
    remat_frames: bool | None = None,
    **loss_weights: float,
) -> tuple[jnp.ndarray, dict]:
    """Mean loss over a batch of clips; clips (B, T, S, S, 3) normalised, targets
    (B, T, S, S) bool (one object per clip, visible on frame 0), or (B, T, K, S, S) for K
    objects tracked separately through each clip (the frames are encoded once for all K).
    T >= 2.

    All B * T frames are encoded (in one batch, or one at a time with remat_frames); the
    clips (and objects) are then vmapped.
    remat_frames: recompute each tracked frame in the backward pass (see the module's
    docstring); None: where the model was built with remat=True. (Through
    `make_train_step(..., loss_fn=clip_loss, remat_frames=...)`.)"""
    if (
        clips.ndim != 5
        or targets.ndim not in (4, 5)
        or targets.shape[:2] != clips.shape[:2]
        or targets.shape[-2:] != clips.shape[2:4]
        or clips.shape[1] < 2
    ):
        raise ValueError(
            f"clips must be (B, T>=2, S, S, 3) and targets (B, T, S, S) or (B, T, K, S, S); "
            f"got {clips.shape} and {targets.shape}"
        )
    if remat_frames is None:
        remat_frames = bool(getattr(model, "remat", False))
    b, t, s = clips.shape[:3]
    soft = soft_targets(targets, model.config.mask_input_size)
    vision, hr0, hr1 = _encode_frames(model, variables, clips.reshape(b * t, s, s, 3), remat_frames)

    def per_clip(v, h0, h1, sf, k):
        return _clip_loss(
            model, variables, v, h0, h1, sf, k, num_corrections, remat_frames, loss_weights
        )

    if targets.ndim == 5:  # objects of one clip share its encoded frames
        per_clip = jax.vmap(per_clip, in_axes=(None, None, None, 1, 0))
        # the same keys as for each clip repeated once per object, one object each
        keys = jax.random.split(key, b * targets.shape[2]).reshape(b, targets.shape[2])
    else:
        keys = jax.random.split(key, b)
    unbatch = lambda x: x.reshape(b, t, *x.shape[1:])
    losses, metrics = jax.vmap(per_clip)(unbatch(vision), unbatch(hr0), unbatch(hr1), soft, keys)
    metrics = {k: jnp.nanmean(v) for k, v in metrics.items()}
    return jnp.mean(losses), metrics
