"""The project's data sets: seed ranges of synthetic scenes and videos, drawn into pools.

Training, held-out and validation data are disjoint seed ranges, so no image is stored.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.train.batching import promptable

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEED0 = 10_000_000
# Videos for choosing settings (memory window, gains), so the held-out figures stay unbiased.
VALIDATION_SEED0 = 20_000_000


def scene_pool(num_scenes: int, size: int, seed0: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Scenes seed0 .. seed0 + num_scenes - 1 as (image (S, S, 3) uint8, masks (K, S, S)
    bool), keeping the objects big enough to prompt and the scenes that have one."""
    pool = []
    for i in tqdm(range(num_scenes), desc="drawing scenes", leave=False):
        img, masks = scene(seed0 + i, size)
        keep = promptable(masks)
        if len(keep):
            pool.append((img, masks[keep]))
    return pool


def video_pool(
    num_videos: int, size: int, num_frames: int = 16, seed0: int = 0, max_speed: float = 0.03
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Videos seed0 .. seed0 + num_videos - 1 as (frames (T, S, S, 3) uint8, masks
    (T, K, S, S) bool)."""
    return [
        video(seed0 + i, num_frames, size, max_speed=max_speed)
        for i in tqdm(range(num_videos), desc="drawing videos", leave=False)
    ]
