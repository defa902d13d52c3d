"""Choosing K training objects per image or clip, with a validity mask for the padding."""

from __future__ import annotations

import numpy as np


def sample_object_indices(
    masks: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(indices (k,) int64, valid (k,) bool): up to k objects of masks, drawn at random.

    masks is (K, H, W) for an image or (T, K, H, W) for a clip. An object is eligible if its
    mask has a pixel (for a clip: in the first frame, where it is prompted). With more than
    k eligible objects k are drawn without replacement; with fewer, all of them (in random
    order), followed by padding slots with index -1 and valid False. Never repeats an
    object or fills a slot with a fake one.
    """
    masks = np.asarray(masks)
    if masks.ndim not in (3, 4):
        raise ValueError(
            f"sample_objects: masks must be (K, H, W) or (T, K, H, W), got {masks.shape}"
        )
    if k < 0:
        raise ValueError(f"sample_objects: k must be >= 0, got {k}")
    first = masks if masks.ndim == 3 else masks[0]
    eligible = np.flatnonzero(first.any(axis=(1, 2)))
    chosen = rng.permutation(eligible)[:k]
    n = chosen.size
    indices = np.full(k, -1, np.int64)
    indices[:n] = chosen
    return indices, np.arange(k) < n


def sample_objects(
    masks: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (k, H, W) or (T, k, H, W) bool, valid (k,) bool): k objects of masks.

    The objects of `sample_object_indices`; a padding slot (valid False) has an all-False
    mask, so it can carry no click, box or loss. Masks may be any dtype; nonzero is in.
    """
    masks = np.asarray(masks)
    indices, valid = sample_object_indices(masks, k, rng)
    axis = masks.ndim - 3
    if masks.shape[axis] == 0:  # no object to take from: padding only
        shape = list(masks.shape)
        shape[axis] = k
        return np.zeros(shape, bool), valid
    picked = np.take(masks, np.maximum(indices, 0), axis=axis).astype(bool)
    shape = [1] * masks.ndim
    shape[axis] = k
    return picked & valid.reshape(shape), valid
