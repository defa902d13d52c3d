"""Held-out evaluation of the project's models: one-click image IoU and video tracking IoU.

One click means one positive point at the object's innermost pixel (`innermost_pixel`),
on a held-out scene (seeds disjoint from training) or on frame 0 of a held-out video.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.models.resize import resize_bilinear
from sam_jax.projects.shapes.data import HELDOUT_SEED0
from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.train.batching import normalise, promptable
from sam_jax.train.clicks import innermost_pixel


def iou_or_one(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of two bool masks; 1 when both are empty (an object correctly found absent)."""
    union = (pred | target).sum()
    return float((pred & target).sum() / union) if union else 1.0


def pick_object(masks: np.ndarray, rng: np.random.Generator) -> int:
    """A random promptable object of masks (K, H, W), else the largest one."""
    ok = promptable(masks)
    return int(ok[rng.integers(len(ok))]) if len(ok) else int(np.argmax(masks.sum((1, 2))))


def evaluate_sam(
    model: nn.Module, variables: Any, num_images: int = 100, batch_size: int = 20
) -> float:
    """Mean one-click IoU on held-out scenes (one prompted object per scene): the multimask
    output with the highest predicted IoU, upsampled to the image, against the exact mask."""
    cfg = model.config
    s = cfg.image_size
    imgs, tgts, pts = [], [], []
    rng = np.random.default_rng(0)
    for i in range(num_images):
        img, masks = scene(HELDOUT_SEED0 + i, s)
        m = masks[pick_object(masks, rng)]
        imgs.append(img)
        tgts.append(m)
        pts.append(innermost_pixel(m))

    @jax.jit
    def predict(variables, images, coords):
        labels = jnp.ones(coords.shape[:2], jnp.int32)
        # SAM returns (logits, iou); SAM 2 also the object score
        logits, iou = model.apply(variables, images, point_coords=coords, point_labels=labels)[:2]
        best = jnp.argmax(iou, axis=1)
        low = jnp.take_along_axis(logits, best[:, None, None, None], 1)[:, 0]
        return resize_bilinear(low[..., None], (s, s))[..., 0] > 0

    ious = []
    for j in range(0, num_images, batch_size):
        x = normalise(np.stack(imgs[j : j + batch_size]), cfg)
        c = np.asarray(pts[j : j + batch_size], np.float32)[:, None]
        pred = np.asarray(predict(variables, x, c))
        for p, t in zip(pred, tgts[j : j + batch_size], strict=True):
            ious.append((p & t).sum() / max((p | t).sum(), 1))
    return float(np.mean(ious))


def evaluate_tracking(
    model: nn.Module,
    variables: Any,
    num_videos: int = 20,
    num_frames: int = 16,
    max_speed: float = 0.03,
    seed0: int = HELDOUT_SEED0,
) -> dict[str, Any]:
    """Mean tracking IoU on held-out videos: one positive click on frame 0 (the innermost
    pixel of an object big enough to prompt), `VideoPredictor` propagation, IoU of
    (logits > 0) against the exact visible mask on every frame (1 where both are empty).
    `max_speed` bounds the objects' motion (image sizes per frame; 0 gives still videos);
    `seed0` = VALIDATION_SEED0 draws the validation videos instead of the held-out ones.
    Returns {"miou": over all frames and videos, "miou_after_first": frames 1..T-1,
    "per_frame": list of per-frame means}."""
    from sam_jax import VideoPredictor

    vp = VideoPredictor(model, variables, progress=False)
    rng = np.random.default_rng(0)
    table = []
    for i in range(num_videos):
        frames, masks = video(seed0 + i, num_frames, model.config.image_size, max_speed=max_speed)
        obj = pick_object(masks[0], rng)
        state = vp.init_state(frames)
        vp.add_new_points_or_box(state, 0, 1, [innermost_pixel(masks[0, obj])], [1])
        row = np.zeros(num_frames)
        for f, _, logits in vp.propagate_in_video(state):
            row[f] = iou_or_one(logits[0] > 0, masks[f, obj])
        vp.close(state)
        table.append(row)
    table = np.asarray(table)
    return {
        "miou": float(table.mean()),
        "miou_after_first": float(table[:, 1:].mean()),
        "per_frame": [float(x) for x in table.mean(0)],
    }
