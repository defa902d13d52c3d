"""Interactive click simulation, as SAM was trained.

The first prompt comes from the ground truth: a foreground point, or the object's box
jittered by noise. Each further click is drawn from the error region of the current
prediction: positive if it lands on a missed pixel, negative on a false-positive one.
Everything is jit-able with static shapes: points are sampled with Gumbel-max over a mask.
`innermost_pixel` (numpy, not jit-able) is the deterministic click evaluations use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def sample_pixel(key: jax.Array, mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A uniformly random True pixel of each (B, h, w) mask -> its (x, y) index (B, 2) as
    float (the prompt encoder adds the half-pixel itself), and whether any pixel was True (B,)."""
    b, h, w = mask.shape
    g = jax.random.gumbel(key, (b, h * w))
    score = jnp.where(mask.reshape(b, -1), g, -jnp.inf)
    idx = jnp.argmax(score, axis=1)
    xy = jnp.stack([idx % w, idx // w], axis=1).astype(jnp.float32)
    return xy, mask.reshape(b, -1).any(axis=1)


def mask_box(mask: jnp.ndarray) -> jnp.ndarray:
    """Tight xyxy box (B, 4) in pixel edges of each (B, h, w) mask."""
    ys = jnp.any(mask, axis=2)
    xs = jnp.any(mask, axis=1)
    h, w = mask.shape[1:]
    ar_y, ar_x = jnp.arange(h), jnp.arange(w)
    y0 = jnp.min(jnp.where(ys, ar_y, h), axis=1)
    y1 = jnp.max(jnp.where(ys, ar_y, -1), axis=1) + 1
    x0 = jnp.min(jnp.where(xs, ar_x, w), axis=1)
    x1 = jnp.max(jnp.where(xs, ar_x, -1), axis=1) + 1
    return jnp.stack([x0, y0, x1, y1], axis=1).astype(jnp.float32)


def noisy_box(key: jax.Array, mask: jnp.ndarray, noise: float = 0.1, max_px: float = 20.0):
    """The mask's box with each corner moved by N(0, noise * side), capped at max_px."""
    box = mask_box(mask)
    side = jnp.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=1)
    jitter = jnp.clip(jax.random.normal(key, box.shape) * noise * side, -max_px, max_px)
    h, w = mask.shape[1:]
    return jnp.clip(box + jitter, 0, jnp.array([w, h, w, h], jnp.float32))


def first_prompt(key: jax.Array, target: jnp.ndarray, box_prob: float = 0.5):
    """Initial prompt from the ground truth (B, h, w) bool.

    Returns point_coords (B, 2, 2), point_labels (B, 2): a positive click then either two
    box-corner points (labels 2, 3) or a padding point (-1), so one static shape serves both.
    An empty target (a padding object) gets two padding points at (0, 0): finite, and no
    prompt at all.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    point, found = sample_pixel(k1, target)
    box = noisy_box(k2, target)
    use_box = jax.random.bernoulli(k3, box_prob, (target.shape[0],))
    coords = jnp.where(
        use_box[:, None, None], box.reshape(-1, 2, 2), jnp.stack([point, jnp.zeros_like(point)], 1)
    )
    labels = jnp.where(use_box[:, None], jnp.array([2, 3]), jnp.array([1, -1]))
    coords = jnp.where(found[:, None, None], coords, 0.0)
    labels = jnp.where(found[:, None], labels, -1)
    return coords, labels.astype(jnp.int32)


def per_row(fn: Callable, keys: jax.Array, *rows: Any) -> Any:
    """fn(key, *arrays) on batches, with row i of every array drawn with keys[i] alone:
    keys (B,) and arrays (B, ...) (or None, passed on as None). A row's draw then depends
    on its key, not on the batch it sits in (a batch with padding rows draws the others'
    prompts as without them)."""

    def one(key, *xs):
        out = fn(key, *(None if x is None else x[None] for x in xs))
        return jax.tree.map(lambda y: y[0], out)

    return jax.vmap(one)(keys, *rows)


def cell_centre(xy: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Logit-cell indices (..., 2) -> pixel coordinates of the cells' centres, for logits
    `scale` times coarser than the image."""
    return xy * scale + (scale - 1) / 2


def corrective_click(
    key: jax.Array, logits: jnp.ndarray, target: jnp.ndarray, void: jnp.ndarray | None = None
):
    """A click in the error region of logits (B, h, w) vs target (B, h, w) bool, outside
    the void (B, h, w) bool cells when given (the ground truth is unknown there).

    Returns coords (B, 1, 2) and labels (B, 1): 1 on a missed pixel, 0 on a false positive,
    -1 (padding) when the prediction is already exact.
    """
    pred = logits > 0
    error = pred != target
    if void is not None:
        error = error & ~void
    xy, any_error = sample_pixel(key, error)
    b = target.shape[0]
    positive = target[jnp.arange(b), xy[:, 1].astype(jnp.int32), xy[:, 0].astype(jnp.int32)]
    labels = jnp.where(any_error, positive.astype(jnp.int32), -1)
    return xy[:, None], labels[:, None]


def innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel of the (H, W) bool mask farthest from its background: of the last
    pixels left by repeated erosion (a pixel stays while its 4 neighbours are in the mask;
    outside the image counts as background), the middle one in row-major order."""
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("innermost_pixel needs a mask with at least one True pixel")
    last = m
    while m.any():
        last = m
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ys, xs = np.nonzero(last)
    k = len(xs) // 2
    return int(xs[k]), int(ys[k])
