"""Training batches from pools of annotated images or videos, and the model's input scaling.

A pool is a list of (image (S, S, 3) uint8, masks (K, S, S) bool) pairs, or of
(frames (T, S, S, 3) uint8, masks (T, K, S, S) bool) videos. `batches` and `clip_batches`
draw from it forever, with the same random flip / 90-degree rotation applied to an image
(every frame of a clip) and its masks; `normalise` turns the uint8 pixels into the model's
input.

    data = batches(pool, batch_size=8, seed=0, objects_per_image=4)
    images, targets = next(data)              # (B, S, S, 3) uint8, (B, K, S, S) bool
    state, metrics = step(state, normalise(images, model.config), targets, key)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# Objects whose visible area is below this fraction of the image (mostly hidden behind
# others, or tiny) are not prompted by default.
MIN_AREA_FRAC = 0.004


def normalise(images: np.ndarray, config: Any) -> np.ndarray:
    """uint8 images (..., 3) -> float32, less the config's `pixel_mean`, over its `pixel_std`."""
    mean = np.asarray(config.pixel_mean, np.float32)
    std = np.asarray(config.pixel_std, np.float32)
    return (images.astype(np.float32) - mean) / std


def promptable(masks: np.ndarray, min_area_frac: float = MIN_AREA_FRAC) -> np.ndarray:
    """Indices of the masks (K, H, W) that cover at least `min_area_frac` of the image."""
    return np.nonzero(masks.reshape(len(masks), -1).mean(1) >= min_area_frac)[0]


def batches(
    pool: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    seed: int,
    objects_per_image: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (images (B, S, S, 3) uint8, targets (B, K, S, S) bool), K = objects_per_image
    masks of each drawn image, distinct where the image has K or more; flipped / rotated."""
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


def clip_batches(
    pool: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    clip_len: int,
    seed: int,
    objects_per_clip: int = 1,
    min_area_frac: float = MIN_AREA_FRAC,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (clips (B, T, S, S, 3) uint8, targets (B, T, S, S) bool, or (B, T, K, S, S)
    for objects_per_clip K > 1): a random window of T = clip_len frames of a pooled video,
    played forward or backward, flipped / rotated alike in every frame, following objects
    that cover `min_area_frac` of the window's first frame (distinct where there are K)."""
    rng = np.random.default_rng(seed)
    while True:
        clips, tgts = [], []
        while len(clips) < batch_size:
            frames, masks = pool[rng.integers(len(pool))]
            t0 = rng.integers(len(frames) - clip_len + 1)
            idx = np.arange(t0, t0 + clip_len)
            if rng.random() < 0.5:
                idx = idx[::-1]
            ok = promptable(masks[idx[0]], min_area_frac)
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
