"""The video predictor's prompts as the model takes them, and prompt calls for several
objects at once.

`point_prompt` turns points and a box given on a frame of the video into the model's
input pixels (the letterbox scale, box corners first as labels 2 and 3); `mask_prompt`
letterboxes a mask; `object_calls` (`per_object`) splits the arguments of a call for a
list of objects into one set of arguments per object. Everything is validated before the caller changes any
state, so a bad prompt for one object of a list leaves the session as it was.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from sam_jax.predictors.prompts import check_prompts
from sam_jax.predictors.video_state import VideoState
from sam_jax.transforms import letterbox_geometry


def point_prompt(
    state: VideoState,
    points: Any,
    labels: Any,
    box: Any,
    *,
    clear_old_points: bool = True,
    normalize_coords: bool = True,
    where: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 2) x, y with labels (N,) (1 foreground, 0 background; all 1 if omitted)
    and/or a box (4,) x0, y0, x1, y1 -> (coords (N', 2) float32 in the model's input
    pixels, labels (N',) int32), the box first as its two corners (labels 2, 3).

    normalize_coords True: the values are pixels of the video's frames; False: they are
    fractions of the frame's width (x) and height (y), in [0, 1] (Meta's
    `normalize_coords=False`). `where` prefixes error messages (e.g. "object 3: ").
    """
    if points is None and box is None:
        raise ValueError(f"{where}give points (with labels) and/or a box")
    if box is not None and not clear_old_points:
        raise ValueError(f"{where}a box replaces the frame's points: use clear_old_points=True")
    try:
        p = check_prompts(
            points,
            labels,
            box,
            allow_batch=False,
            allow_padding=False,
            coords_name="points",
            labels_name="labels",
        )
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    # pixels -> model pixels; fractions of (W, H) -> pixels first
    scale = np.float32(state.ratio)
    if not normalize_coords:
        scale = np.array([state.video_width, state.video_height], np.float32) * scale
    coords = np.zeros((0, 2), np.float32)
    labs = np.zeros((0,), np.int32)
    if p.coords is not None:
        coords, labs = p.coords[0].astype(np.float32) * scale, p.labels[0]
    if p.boxes is not None:  # the box goes first, as its two corners
        corners = p.boxes[0].astype(np.float32).reshape(2, 2) * scale
        coords = np.concatenate([corners, coords])
        labs = np.concatenate([np.array([2, 3], np.int32), labs])
    return coords, labs


def mask_prompt(state: VideoState, mask: Any, *, where: str = "") -> np.ndarray:
    """A mask (H, W) (nonzero = object) at the video's size -> the model's (S, S) float32
    0/1 input, letterboxed with nearest-neighbour resizing (as the reference prompts are)."""
    mk = np.asarray(mask)
    h, w = state.video_height, state.video_width
    if mk.shape != (h, w):
        raise ValueError(f"{where}mask must be (H, W) = ({h}, {w}); got {mk.shape}")
    s = state.image_size
    _, nh, nw = letterbox_geometry(h, w, s)
    rows = np.minimum((np.arange(nh) * (h / nh)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(nw) * (w / nw)).astype(np.int64), w - 1)
    boxed = np.zeros((s, s), np.float32)
    boxed[:nh, :nw] = (mk[rows][:, cols] > 0).astype(np.float32)
    return boxed


def is_object_list(obj_id: Any) -> bool:
    """Whether `obj_id` names several objects: a list (or 1-D array) of ids. Lists and
    arrays cannot be object ids themselves (they are not hashable)."""
    return isinstance(obj_id, (list, np.ndarray))


def _rows(value: Any, k: int, name: str) -> list:
    """value for K objects -> K per-object values: None for each, a sequence of K entries
    (each an object's value, None allowed), or an array with a leading axis of K."""
    if value is None:
        return [None] * k
    if isinstance(value, Sequence) and not isinstance(value, str):
        rows = list(value)
    else:
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise ValueError(f"{name} for {k} objects needs one entry per object")
        rows = list(arr)
    if len(rows) != k:
        raise ValueError(f"{name} must have one entry per object: {k} objects, {len(rows)} entries")
    return rows


def per_object(obj_ids: Any, **prompts: Any) -> list[tuple[Hashable, dict]]:
    """A call's prompts for a list of K objects -> [(obj_id, {name: that object's value})].

    Each prompt argument is None (for every object), a list of K entries (entry i, None
    allowed, is obj_ids[i]'s) or an array whose leading axis is K. Ids must be distinct
    and hashable.
    """
    ids = list(obj_ids.tolist() if isinstance(obj_ids, np.ndarray) else obj_ids)
    if not ids:
        raise ValueError("obj_id is an empty list: give at least one object id")
    for i in ids:
        if not isinstance(i, Hashable):
            raise ValueError(f"object ids must be hashable; got {type(i).__name__}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"obj_id lists an object more than once: {ids}")
    split = {name: _rows(v, len(ids), name) for name, v in prompts.items()}
    return [(oid, {name: rows[i] for name, rows in split.items()}) for i, oid in enumerate(ids)]


def object_calls(obj_id: Any, **prompts: Any) -> list[tuple[Hashable, dict, str]]:
    """One (obj_id, {name: value}, error prefix) per object a prompt call names: the
    call's own arguments for one id, `per_object`'s split for a list of ids."""
    if not is_object_list(obj_id):
        return [(obj_id, prompts, "")]
    return [(oid, p, f"object {oid}: ") for oid, p in per_object(obj_id, **prompts)]
