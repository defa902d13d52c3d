"""Train the small bundled models from scratch on synthetic shapes, and evaluate them.

    sam-jax train-shapes --variant sam_tiny_shapes_p16 --steps 4000 --out p1.safetensors
    sam-jax eval-shapes --checkpoint sam_tiny_shapes

One-click evaluation: on held-out scenes (seeds disjoint from training), one positive click
at the object's innermost pixel, the multimask output with the highest predicted IoU, IoU
against the exact mask at image resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sam_jax.checkpoint import build, build_from_config, init_params, load, save
from sam_jax.config import Sam2Config
from sam_jax.models.resize import resize_bilinear
from sam_jax.tracking.memory_window import shorten_memory
from sam_jax.train.repatch import repatch
from sam_jax.train.reseat_memory import reseat_memory, weigh_recent_memory
from sam_jax.train.step import TrainState, interactive_loss, make_optimizer, make_train_step
from sam_jax.train.synthetic import scene, video
from sam_jax.train.video_step import clip_loss

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEED0 = 10_000_000
# Videos for choosing settings (memory window, gains), so the held-out figures stay unbiased.
VALIDATION_SEED0 = 20_000_000
MIN_AREA_FRAC = 0.004
# BCE + Dice: SAM's 20:1 focal:dice collapses to empty masks when training from scratch.
FROM_SCRATCH_LOSS = {
    "focal_weight": 2.0,
    "focal_alpha": 0.5,
    "focal_gamma": 0.0,
    "dice_weight": 1.0,
}  # objects mostly hidden behind others are not prompted


def promptable(masks: np.ndarray) -> np.ndarray:
    """Indices of the masks (K, H, W) big enough to prompt (area >= MIN_AREA_FRAC)."""
    return np.nonzero(masks.reshape(len(masks), -1).mean(1) >= MIN_AREA_FRAC)[0]


def iou_or_one(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of two bool masks; 1 when both are empty (an object correctly found absent)."""
    union = (pred | target).sum()
    return float((pred & target).sum() / union) if union else 1.0


def pick_object(masks: np.ndarray, rng: np.random.Generator) -> int:
    """A random promptable object of masks (K, H, W), else the largest one."""
    ok = promptable(masks)
    return int(ok[rng.integers(len(ok))]) if len(ok) else int(np.argmax(masks.sum((1, 2))))


def normalise(images: np.ndarray, config) -> np.ndarray:
    """uint8 (..., 3) -> float32 normalised with the model's pixel mean / std."""
    mean = np.asarray(config.pixel_mean, np.float32)
    std = np.asarray(config.pixel_std, np.float32)
    return (images.astype(np.float32) - mean) / std


def scene_pool(num_scenes: int, size: int, seed0: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-drawn (image, masks) pairs, keeping objects big enough to prompt."""
    pool = []
    for i in tqdm(range(num_scenes), desc="drawing scenes", leave=False):
        img, masks = scene(seed0 + i, size)
        keep = promptable(masks)
        if len(keep):
            pool.append((img, masks[keep]))
    return pool


def batches(
    pool, batch_size: int, seed: int, objects_per_image: int = 4
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images (B, S, S, 3) uint8, targets (B, K, S, S) bool) with flip/rot
    augmentation: K objects of each image, distinct where the image has K or more."""
    rng = np.random.default_rng(seed)
    while True:
        imgs, tgts = [], []
        for j in rng.integers(len(pool), size=batch_size):
            img, masks = pool[j]
            n = len(masks)
            m = masks[rng.choice(n, objects_per_image, replace=n < objects_per_image)]
            k = rng.integers(4)
            img, m = np.rot90(img, k), np.rot90(m, k, axes=(1, 2))
            if rng.random() < 0.5:
                img, m = img[:, ::-1], m[:, :, ::-1]
            imgs.append(img)
            tgts.append(m)
        yield np.stack(imgs), np.stack(tgts)


def train_sam(
    variant: str = "sam_tiny_shapes",
    steps: int = 3000,
    batch_size: int = 8,
    num_scenes: int = 800,
    learning_rate: float = 3e-4,
    seed: int = 0,
    out: str | None = None,
    log_every: int = 100,
    init_from: str | None = None,
    clip_len: int = 8,
    half: bool = False,
    objects_per_image: int = 4,
    num_corrections: int = 1,
    box_prob: float = 0.5,
    patch_size: int | None = None,
    trainable: str = "all",
    iou_weight: float = 1.0,
    image_size: int | None = None,
    single_mask_tracking: bool | None = None,
    max_speed: float = 0.03,
    reseat: bool = False,
    recent_gain: float | None = None,
    num_maskmem: int | None = None,
) -> tuple[object, dict, list[dict]]:
    """Train a SAM or SAM 2 variant on synthetic data, from scratch or continuing from a
    checkpoint (`init_from`). SAM trains on scenes (`interactive_loss`, `objects_per_image`
    objects prompted per encoded image); SAM 2 on clips of `clip_len` frames through the
    tracking scan (`clip_loss`, `objects_per_image` objects tracked per clip), `num_scenes`
    videos drawn, or with clip_len=1 on scenes in image mode like SAM (pre-training its
    encoder and decoder cheaply). Each prompt gets `num_corrections` corrective clicks; a
    scene's first prompt is a box with probability `box_prob`, else a click. `patch_size`
    first gives a SAM ViT finer patches (`repatch`), naming the result `variant`.
    `trainable` ("all", "all_but_encoder", "prompt_decoder", "decoder") chooses what
    trains; `iou_weight` scales the IoU head's MSE against the mask loss. `image_size`
    trains at another input size than the variant's (or the checkpoint's) own.
    `single_mask_tracking` True (False) sets a SAM 2 model's `multimask_output_for_tracking`
    to False (True): tracked frames then train and predict the single-mask output (the best
    of three where it is unstable) instead of the best of three; saved with the model; None
    keeps the model's own.
    `max_speed` bounds the training videos' per-frame motion (image sizes); `reseat` first
    applies `reseat_memory` (train it with trainable="all_but_encoder_positional");
    `recent_gain` then applies `weigh_recent_memory` (on a re-seated model).
    `num_maskmem` sets a SAM 2 model's memory window: a fresh model is built with it, a
    loaded one shortened to it (`shorten_memory`).
    half=True saves float16 weights (`out`), and returns them as loaded back.
    Returns (model, variables, log)."""
    if init_from:
        model, variables = load(init_from, image_size=image_size)
        if num_maskmem is not None:
            model, variables = shorten_memory(model, variables, num_maskmem)
    else:
        model = build(variant, image_size)
        if num_maskmem is not None:
            model = build_from_config(dataclasses.replace(model.config, num_maskmem=num_maskmem))
        variables = init_params(model, jax.random.key(seed))
    if patch_size and patch_size != getattr(model.config.encoder, "patch_size", None):
        model, variables = repatch(model, variables, patch_size, name=variant)
    if single_mask_tracking is not None:
        if not isinstance(model.config, Sam2Config):
            raise ValueError(f"single_mask_tracking needs a SAM 2 model; got {model.config.name}")
        multimask = not single_mask_tracking
        cfg = dataclasses.replace(model.config, multimask_output_for_tracking=multimask)
        model = build_from_config(cfg)
    cfg = model.config
    if reseat:
        variables = reseat_memory(cfg, variables)
    if recent_gain is not None:
        variables = weigh_recent_memory(cfg, variables, recent_gain)
    schedule = optax_schedule(learning_rate, steps)
    tx = make_optimizer(variables["params"], trainable, schedule, weight_decay=0.01)
    weights = {**FROM_SCRATCH_LOSS, "iou_weight": iou_weight}
    state = TrainState.create(variables, tx)
    if isinstance(cfg, Sam2Config) and clip_len > 1:
        step_fn = make_train_step(model, tx, num_corrections, loss_fn=clip_loss, **weights)
        pool = video_pool(num_scenes, cfg.image_size, seed0=TRAIN_SEEDS.start, max_speed=max_speed)
        data = clip_batches(pool, batch_size, clip_len, seed, objects_per_image)
    else:
        loss_fn = functools.partial(interactive_loss, box_prob=box_prob)
        step_fn = make_train_step(model, tx, num_corrections, loss_fn=loss_fn, **weights)
        pool = scene_pool(num_scenes, cfg.image_size, seed0=TRAIN_SEEDS.start)
        data = batches(pool, batch_size, seed, objects_per_image)
    key = jax.random.key(seed + 1)
    log, t0 = [], time.time()
    bar = tqdm(range(steps), desc=f"training {cfg.name}")
    acc = []
    for i in bar:
        imgs, tgts = next(data)
        key, sub = jax.random.split(key)
        state, met = step_fn(state, normalise(imgs, cfg), tgts, sub)
        acc.append(met)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            mean = {k: float(np.nanmean([float(m[k]) for m in acc])) for k in acc[0]}
            mean.update(step=i + 1, seconds=round(time.time() - t0, 1))
            log.append(mean)
            bar.set_postfix(loss=f"{mean['loss']:.3f}", iou=f"{mean['iou_first']:.3f}")
            acc = []
    variables = jax.device_get(state.variables)
    if out:
        save(out, model, variables, half=half)
        if half:
            model, variables = load(out)
    return model, variables, log


def video_pool(
    num_videos: int, size: int, num_frames: int = 16, seed0: int = 0, max_speed: float = 0.03
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-drawn (frames (T, S, S, 3) uint8, masks (T, K, S, S) bool) videos."""
    return [
        video(seed0 + i, num_frames, size, max_speed=max_speed)
        for i in tqdm(range(num_videos), desc="drawing videos", leave=False)
    ]


def clip_batches(
    pool, batch_size: int, clip_len: int, seed: int, objects_per_clip: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (clips (B, T, S, S, 3) uint8, targets (B, T, S, S) bool, or (B, T, K, S, S)
    for objects_per_clip K > 1): a random window of a pooled video, played forward or
    backward, flipped / rotated alike in every frame, following objects big enough to
    prompt on the window's first frame (distinct where there are K of them)."""
    rng = np.random.default_rng(seed)
    while True:
        clips, tgts = [], []
        while len(clips) < batch_size:
            frames, masks = pool[rng.integers(len(pool))]
            t0 = rng.integers(len(frames) - clip_len + 1)
            idx = np.arange(t0, t0 + clip_len)
            if rng.random() < 0.5:
                idx = idx[::-1]
            ok = promptable(masks[idx[0]])
            if not len(ok):
                continue
            objs = rng.choice(ok, objects_per_clip, replace=len(ok) < objects_per_clip)
            x, m = frames[idx], masks[idx][:, objs]
            k = rng.integers(4)
            x, m = np.rot90(x, k, axes=(1, 2)), np.rot90(m, k, axes=(2, 3))
            if rng.random() < 0.5:
                x, m = x[:, :, ::-1], m[..., ::-1]
            clips.append(x)
            tgts.append(m if objects_per_clip > 1 else m[:, 0])
        yield np.stack(clips), np.stack(tgts)


def optax_schedule(peak: float, steps: int):
    import optax

    warmup = max(1, steps // 20)  # decay needs at least one step after warm-up
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, max(steps, warmup + 1), peak * 0.05
    )


def innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel farthest from the background (repeated 3x3 erosion)."""
    m = mask.copy()
    last = m
    while m.any():
        last = m
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ys, xs = np.nonzero(last)
    k = len(xs) // 2
    return int(xs[k]), int(ys[k])


def evaluate_sam(model, variables, num_images: int = 100, batch_size: int = 20) -> float:
    """Mean one-click IoU on held-out scenes (one prompted object per scene)."""
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
    model,
    variables,
    num_videos: int = 20,
    num_frames: int = 16,
    max_speed: float = 0.03,
    seed0: int = HELDOUT_SEED0,
) -> dict[str, float]:
    """Mean tracking IoU on held-out videos: one positive click on frame 0 (the innermost
    pixel of an object big enough to prompt), `VideoPredictor` propagation, IoU of
    (logits > 0) against the exact visible mask on every frame (1 where both are empty).
    `max_speed` bounds the objects' motion (image sizes per frame; 0 gives still videos);
    `seed0` = VALIDATION_SEED0 draws the validation videos instead of the held-out ones.
    Returns {"miou": over all frames and videos, "miou_after_first": frames 1..T-1,
    "per_frame": list of per-frame means}."""
    from sam_jax.video_predictor import VideoPredictor

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
