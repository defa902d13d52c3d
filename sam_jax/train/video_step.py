"""SAM 2 training through the tracking scan: a clip's loss with gradients through memory.

    tx = make_optimizer(variables["params"], "all", 1e-4)
    state = TrainState.create(variables, tx)
    step = make_train_step(model, tx, num_corrections=1, loss_fn=clip_loss)
    state, metrics = step(state, clips, targets, key)    # clips (B, T, S, S, 3) normalised
    # SAM 2.1's recipe: masks, boxes, clicks, 1-2 conditioning frames, corrected frames
    make_train_step(model, tx, 7, loss_fn=clip_loss, prompting=video_prompts.SAM2_TRAINING)

Per object of a clip, as SAM 2 was trained (`video_prompts.VideoPrompting` chooses the
prompts; its defaults are one click on frame 0):

* the initial conditioning frames (frame 0, and with `num_cond_frames=2` a later frame)
  are prompted first, each without memory: one click (one positive point, multimask
  output, the best mask trained) or a noisy box (its two corners, single-mask output),
  then `num_corrections` clicks from the error region with the previous logits fed back
  (single-mask output, as the tracker gives for more than one point); or the ground-truth
  mask, used as the output (its loss is then a constant). Their memories, encoded from
  the final binarised masks as in tracking, fill the bank's conditioning slots;
* the other frames run the tracker (memory attention over the fixed-shape bank, the SAM
  heads, the memory encoder) in one `lax.scan`, so each frame's loss reaches the earlier
  frames' memory encodings, pointers and features through the memory attention. A tracked
  frame drawn for correction then gets `num_corrections` clicks on its memory-conditioned
  features, and its final mask's memory goes to a conditioning slot (or the recent ring).
  (Shapes are static: where any tracked frame can be corrected, every one runs the rounds);
* a frame's loss is SAM's (mask + IoU, averaged over its rounds) where the object is
  visible, plus the object-score BCE on every frame; the clip's loss is their mean over
  the T frames.

With a model built with `remat=True` (or `remat_frames=True`) the scan's per-frame body is
recomputed in the backward pass: what the backward pass keeps across frames is each frame's
memory bank (the scan carry), not the frame's activations, so the tracked frames' activation
memory is one frame's plus T banks. The frames are then also encoded one at a time (a
`lax.map`, each frame recomputed in the backward pass), so the image encoder's activations,
and with a frozen encoder its forward pass's peak, are one frame's rather than B * T frames'.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.tracking.memory_bank import MemoryBank, empty_bank, push
from sam_jax.tracking.track_step import (
    mask_prompt_impl,
    prompt_memory_impl,
    tracked_heads,
)
from sam_jax.train.clicks import cell_centre
from sam_jax.train.video_losses import clip_targets, frame_losses, heads_losses
from sam_jax.train.video_prompts import (
    ClipPrompts,
    VideoPrompting,
    box_prompt,
    click_prompt,
    correction_click,
    draw_prompts,
)


class Prompted(NamedTuple):
    """The final outputs of N prompted frames: low (N, 4g, 4g) logits, ptr (N, D), score
    (N,) object-score logits; loss (N,) averaged over the rounds; the IoU of the first and
    of the last round (N,) (NaN where the object is not visible)."""

    low: jnp.ndarray
    ptr: jnp.ndarray
    score: jnp.ndarray
    loss: jnp.ndarray
    iou_first: jnp.ndarray
    iou_last: jnp.ndarray


def _pick(choose: jnp.ndarray, a: Any, b: Any) -> Any:
    """Per frame, a where choose (N,) (or () for all) is True, else b (same pytrees)."""

    def where(x, y):
        c = choose.reshape(choose.shape + (1,) * (x.ndim - choose.ndim))
        return jnp.where(c, x, y)

    return jax.tree.map(where, a, b)


def _correct(m, pix, hr, soft, heads, coords, labels, keys, first_multimask, prompting, lw):
    """Corrective clicks after `heads`, one per key: each from the error region of the
    previous mask, whose logits (clamped to +-32) are fed back with every click so far.
    pix (N, g, g, D) the features the heads read; coords (N, n, 2) / labels (N, n), or None
    for none. Multimask output on the first correction iff first_multimask. Returns the
    final heads and the rounds' losses and IoUs (lists of (N,))."""
    cfg = m.config
    scale = cfg.image_size / cfg.mask_input_size
    losses, ious = [], []
    for r, key in enumerate(keys):
        low = jax.lax.stop_gradient(heads.low_res_masks[:, 0])  # (N, 4g, 4g)
        click, label = correction_click(
            key, low, soft.mask, prompting.prob_click_from_target, soft.void
        )
        click = cell_centre(click, scale)
        coords = click if coords is None else jnp.concatenate([coords, click], axis=1)
        labels = label if labels is None else jnp.concatenate([labels, label], axis=1)
        multimask = first_multimask and r == 0
        mask_in = jnp.clip(low, -32.0, 32.0)[..., None]  # absent objects are -1024
        heads = m.forward_sam_heads(pix, coords, labels, mask_in, hr, multimask_output=multimask)
        loss, iou = heads_losses(heads, soft, multimask, lw)
        losses.append(loss)
        ious.append(iou)
    return heads, losses, ious


def _point_prompted(m, pix, hr, soft, coords, labels, keys, multimask, prompting, lw):
    """Points (a click or box corners) on N conditioning frames, then the corrections."""
    heads = m.forward_sam_heads(pix, coords, labels, None, hr, multimask_output=multimask)
    loss, iou = heads_losses(heads, soft, multimask, lw)
    final, losses, ious = _correct(
        m, pix, hr, soft, heads, coords, labels, keys, False, prompting, lw
    )
    mean_loss = jnp.mean(jnp.stack([loss, *losses]), axis=0)
    score = final.object_score_logits[:, 0]
    return Prompted(
        final.low_res_masks[:, 0], final.obj_ptr, score, mean_loss, iou, [iou, *ious][-1]
    )


def _mask_prompted(m, vision, hr0, hr1, masks, soft, lw) -> Prompted:
    """The ground-truth masks (N, S, S) on N conditioning frames, used as the outputs."""
    outs = [
        mask_prompt_impl(m, vision[n], hr0[n], hr1[n], masks[n][None]) for n in range(len(masks))
    ]
    low, ptr, score = (jnp.concatenate(x) for x in zip(*outs, strict=True))
    certain = jnp.ones((low.shape[0], 1), low.dtype)  # the given mask's IoU
    loss, iou = frame_losses(low[:, None], certain, score[:, None], soft, lw)
    return Prompted(low, ptr, score, loss, iou, iou)


def _cond_frames_impl(
    m,
    vision: jnp.ndarray,
    high_res_0: jnp.ndarray,
    high_res_1: jnp.ndarray,
    soft: jnp.ndarray,
    masks: jnp.ndarray,
    prompts: ClipPrompts,
    key: jax.Array,
    prompting: VideoPrompting,
    num_corrections: int,
    lw: dict,
) -> tuple[Prompted, jnp.ndarray]:
    """One object's initial conditioning frames, prompted without memory. vision (T, g, g, D),
    high_res_0 (T, 4g, 4g, D/8), high_res_1 (T, 2g, 2g, D/4), soft (T, 4g, 4g) the target's
    area fraction at logit resolution, masks (T, S, S) bool. Every prompt kind that can be
    drawn is run, the drawn one kept (vmapped, a lax.cond would run them all as well).
    Returns the N frames' Prompted and their memories (N, g, g, m)."""
    cfg = m.config
    idx = prompts.cond_frames
    v, h0, h1, sf = vision[idx], high_res_0[idx], high_res_1[idx], soft[idx]
    pix, hr = v + m.no_mem_embed.reshape(1, 1, 1, -1), [h0, h1]
    scale = cfg.image_size / cfg.mask_input_size
    keys = jax.random.split(key, num_corrections + 1)
    out = None
    if prompting.prob_mask < 1 and prompting.prob_box < 1:
        coords, labels = click_prompt(keys[0], sf.mask, scale)
        out = _point_prompted(m, pix, hr, sf, coords, labels, keys[1:], True, prompting, lw)
    if prompting.prob_mask < 1 and prompting.prob_box > 0:
        coords, labels = box_prompt(jax.random.fold_in(keys[0], 1), sf.mask, scale)
        box = _point_prompted(m, pix, hr, sf, coords, labels, keys[1:], False, prompting, lw)
        out = box if out is None else _pick(prompts.use_box, box, out)
    if prompting.prob_mask > 0:
        given = _mask_prompted(m, v, h0, h1, masks[idx], sf, lw)
        out = given if out is None else _pick(prompts.use_mask, given, out)
    mems = [
        prompt_memory_impl(m, v[n], out.low[n : n + 1], out.score[n : n + 1])
        for n in range(len(idx))
    ]
    return out, jnp.concatenate(mems)


def _initial_bank(cfg, out: Prompted, mems, prompts: ClipPrompts, num_slots: int, t: int):
    """A one-object bank of `num_slots` conditioning slots, the first N holding the initial
    conditioning frames (valid where drawn active), for a clip of t frames."""
    n, g = mems.shape[0], mems.shape[1]
    rings = (cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder - 1)  # recent, pointer slots
    bank = empty_bank(1, num_slots, g, cfg.mem_dim, cfg.d_model, *rings, num_frames=t, xp=jnp)
    return bank.replace(
        cond_feats=bank.cond_feats.at[0, :n].set(mems.astype(bank.cond_feats.dtype)),
        cond_ptrs=bank.cond_ptrs.at[0, :n].set(out.ptr.astype(bank.cond_ptrs.dtype)),
        cond_frames=bank.cond_frames.at[0, :n].set(prompts.cond_frames),
        cond_valid=bank.cond_valid.at[0, :n].set(prompts.cond_active),
    )


def _to_cond_slot(bank: MemoryBank, slot, frame_idx, feats, ptr, write) -> MemoryBank:
    """Where write (1,): frame `frame_idx`'s memory feats (1, g, g, m) and pointer ptr
    (1, D) into conditioning slot `slot` (a traced index, so a one-hot select)."""
    hit = (jnp.arange(bank.num_cond_slots) == slot)[None] & write[:, None]  # (1, C)
    sel = lambda x, new: jnp.where(hit.reshape(hit.shape + (1,) * (x.ndim - 2)), new, x)
    return bank.replace(
        cond_feats=sel(bank.cond_feats, feats[:, None].astype(bank.cond_feats.dtype)),
        cond_ptrs=sel(bank.cond_ptrs, ptr[:, None].astype(bank.cond_ptrs.dtype)),
        cond_frames=sel(bank.cond_frames, jnp.asarray(frame_idx, jnp.int32)),
        cond_valid=bank.cond_valid | hit,
    )


def _tracked_frame_impl(m, bank: MemoryBank, xs: dict, prompting, num_corrections: int, lw: dict):
    """One frame of the scan for one object (the body of `track_heads_impl`, plus the
    corrections): the frame's loss and tracked IoU, both zeroed / NaN on an initial
    conditioning frame, whose output the bank already holds (its ring slots stay empty)."""
    cfg = m.config
    f, vision, soft = xs["frame_idx"], xs["vision"], xs["soft"][None]
    hr = [xs["high_res_0"][None], xs["high_res_1"][None]]
    pix, heads, feats = tracked_heads(m, bank, f, vision, hr)  # pix (1, g, g, D)
    multimask = cfg.multimask_output_for_tracking
    loss, iou = heads_losses(heads, soft, multimask, lw)
    ptr, write = heads.obj_ptr, ~xs["is_cond"][None]
    if prompting.corrects_tracked_frames(num_corrections):
        keys = jax.random.split(xs["key"], num_corrections)
        final, losses, _ = _correct(
            m, pix, hr, soft, heads, None, None, keys, multimask, prompting, lw
        )
        correct = xs["correct"]
        loss = jnp.where(correct, jnp.mean(jnp.stack([loss, *losses]), axis=0), loss)
        low, fscore = final.low_res_masks[:, 0], final.object_score_logits[:, 0]
        fixed = prompt_memory_impl(m, vision, low, fscore)  # binarised, as a prompted frame's
        if prompting.correct_as_cond:
            bank = _to_cond_slot(bank, xs["slot"], f, fixed, final.obj_ptr, correct[None])
            write = write & ~correct
        else:
            feats = jnp.where(correct, fixed, feats)
            ptr = jnp.where(correct, final.obj_ptr, ptr)
    bank = push(bank, f, write, feats, ptr)
    skip = xs["is_cond"]
    return bank, jnp.where(skip, 0.0, loss[0]), jnp.where(skip, jnp.nan, iou[0])


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


def _track_clip(model, variables, frames: tuple, soft, masks, key, options: tuple):
    """One object through its clip; frames = (vision, high_res_0, high_res_1) and soft,
    masks as `_cond_frames_impl`; options = (num_corrections, remat_frames, prompting,
    loss_weights). Returns the final bank, the conditioning frames' Prompted, the drawn
    ClipPrompts and the tracked frames' losses and IoUs (T-1,)."""
    num_corrections, remat_frames, prompting, lw = options
    vision, hr0, hr1 = frames
    masks = jnp.asarray(masks)  # indexed by traced frame numbers
    t = vision.shape[0]
    visible = jnp.any(soft.mask, axis=(1, 2))
    # The frame-0 click and its corrections use `key` itself, as before the prompt options.
    prompts = draw_prompts(jax.random.fold_in(key, 1), visible, prompting, num_corrections)
    args = (*frames, soft, masks, prompts, key, prompting, num_corrections, lw)
    out, mems = model.apply(variables, *args, method=_cond_frames_impl)
    slots = prompting.num_cond_slots(num_corrections)
    bank = _initial_bank(model.config, out, mems, prompts, slots, t)
    xs = {
        "frame_idx": jnp.arange(1, t, dtype=jnp.int32),
        "vision": vision[1:],
        "high_res_0": hr0[1:],
        "high_res_1": hr1[1:],
        "soft": soft[1:],
        "is_cond": prompts.is_cond[1:],
        "correct": prompts.correct[1:],
        "slot": prompts.slot[1:],
    }
    if prompting.corrects_tracked_frames(num_corrections):
        xs["key"] = jax.random.split(jax.random.fold_in(key, 2), t - 1)

    def body(bank, xs):
        bank, loss, iou = model.apply(
            variables, bank, xs, prompting, num_corrections, lw, method=_tracked_frame_impl
        )
        return bank, (loss, iou)

    if remat_frames:  # keep each frame's bank, recompute the frame in the backward pass
        body = jax.checkpoint(
            body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False
        )
    bank, (losses, ious) = jax.lax.scan(body, bank, xs)
    return bank, out, prompts, losses, ious


def _clip_loss(model, variables, frames: tuple, soft, masks, key, options: tuple):
    """One object's loss and metrics over its clip (arguments as `_track_clip`)."""
    _, out, prompts, track_losses, track_ious = _track_clip(
        model, variables, frames, soft, masks, key, options
    )
    cond_loss = jnp.sum(jnp.where(prompts.cond_active, out.loss, 0.0))
    # the mean over the annotated frames (of a sparsely annotated video)
    annotated = jnp.maximum(jnp.sum(soft.annotated), 1)
    total = (cond_loss + jnp.sum(track_losses)) / annotated
    metrics = {
        "loss": total,
        "iou_first": out.iou_first[0],
        "iou_last": out.iou_last[0],
        "iou_tracked": jnp.nanmean(track_ious),
    }
    return total, metrics


def _check_inputs(clips, targets, valid) -> jnp.ndarray | None:
    """ValueError on inconsistent shapes; valid as a bool array (or None)."""
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
    if valid is None:
        return None
    want = (targets.shape[0], targets.shape[2]) if targets.ndim == 5 else targets.shape[:1]
    if tuple(jnp.shape(valid)) != tuple(want):
        raise ValueError(
            f"valid must be {'(B, K)' if targets.ndim == 5 else '(B,)'} = {tuple(want)} for "
            f"targets {targets.shape}; got {jnp.shape(valid)}"
        )
    return jnp.asarray(valid, bool)


def clip_loss(
    model: nn.Module,
    variables: Any,
    clips: jnp.ndarray,
    targets: jnp.ndarray,
    key: jax.Array,
    num_corrections: int = 1,
    remat_frames: bool | None = None,
    *,
    prompting: VideoPrompting | None = None,
    valid: jnp.ndarray | None = None,
    ignore: jnp.ndarray | None = None,
    **loss_weights: float,
) -> tuple[jnp.ndarray, dict]:
    """Mean loss over a batch of clips; clips (B, T, S, S, 3) normalised, targets
    (B, T, S, S) bool (one object per clip, visible on frame 0), or (B, T, K, S, S) for K
    objects tracked separately through each clip (the frames are encoded once for all K).
    T >= 2.

    All B * T frames are encoded (in one batch, or one at a time with remat_frames); the
    clips (and objects) are then vmapped.
    num_corrections: corrective clicks per corrected frame.
    remat_frames: recompute each tracked frame in the backward pass (see the module's
    docstring); None: where the model was built with remat=True. (Through
    `make_train_step(..., loss_fn=clip_loss, remat_frames=...)`.)
    prompting: which prompts the clips get (`VideoPrompting`; None: its defaults, one
    click on frame 0), drawn per object.
    valid: (B, K) bool for (B, T, K, S, S) targets, (B,) for (B, T, S, S): False marks a
    padding object (or clip), which adds nothing to the loss, its gradients or the metrics;
    the loss is the mean over the valid ones (0 if none is).
    ignore: (B, T, S, S) bool, each clip's void pixels (unannotated frames: all of them),
    left out of every object's mask losses, IoUs and corrective clicks; a frame without any
    known pixel adds no loss at all, and a clip's loss is its mean over annotated frames.
    loss_weights: `sam_loss`'s weights."""
    valid = _check_inputs(clips, targets, valid)
    prompting = VideoPrompting() if prompting is None else prompting
    b, t, s = clips.shape[:3]
    prompting.check_clip(t)
    if remat_frames is None:
        remat_frames = bool(getattr(model, "remat", False))
    soft = clip_targets(targets, ignore, model.config.mask_input_size)
    vision, hr0, hr1 = _encode_frames(model, variables, clips.reshape(b * t, s, s, 3), remat_frames)
    options = (num_corrections, remat_frames, prompting, loss_weights)

    def per_clip(v, h0, h1, sf, mk, k):
        return _clip_loss(model, variables, (v, h0, h1), sf, mk, k, options)

    if targets.ndim == 5:  # objects of one clip share its encoded frames
        per_clip = jax.vmap(per_clip, in_axes=(None, None, None, 1, 1, 0))
        # the same keys as for each clip repeated once per object, one object each
        keys = jax.random.split(key, b * targets.shape[2]).reshape(b, targets.shape[2])
    else:
        keys = jax.random.split(key, b)
    unbatch = lambda x: x.reshape(b, t, *x.shape[1:])
    losses, metrics = jax.vmap(per_clip)(
        unbatch(vision), unbatch(hr0), unbatch(hr1), soft, targets, keys
    )
    if valid is None:
        return jnp.mean(losses), {k: jnp.nanmean(v) for k, v in metrics.items()}
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    metrics = {k: jnp.nanmean(jnp.where(valid, v, jnp.nan)) for k, v in metrics.items()}
    return loss, {**metrics, "loss": loss}
