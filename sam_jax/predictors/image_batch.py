"""Encoded images and their prompting, one image or a batch (`Predictor`'s state).

`Predictor.set_image` keeps one `EncodedImage`; `Predictor.set_image_batch` keeps B of them,
made by `encode_images`: the B images (of any sizes) are letterboxed each to S x S and run
through the encoder as one (B, S, S, 3) batch in one jit call (compiled once per model and
B), then each image's features are sliced out as a batch of one. Prompts always go to one
image at a time (`predict_encoded`): `predict_images` loops over the images, as Meta's
SAM2ImagePredictor.predict_batch does, so image i of a batch gets exactly the decoder,
resize and threshold of `set_image(image_i); predict(...)`; only the encoder's float
rounding may differ between a batch of B and a batch of one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.predictors.image import (
    TRACE_COUNTS,
    decode_prompts,
    decoder_cache,
    load_image,
    normalize_pixels,
    prepare_image,
)
from sam_jax.predictors.prompts import Prompts, check_prompts
from sam_jax.predictors.resample import Taps, resample, unletterbox_taps
from sam_jax.transforms import ceil_pow2, letterbox_geometry


@jax.jit
def to_original(logits: jnp.ndarray, taps_h: Taps, taps_w: Taps, threshold: Any) -> jnp.ndarray:
    """(..., m, m) logits -> (..., H, W) bool masks at the original size: logits > threshold
    (a traced scalar, so that a new threshold does not recompile)."""
    TRACE_COUNTS["to_original"] += 1
    return resample(logits, taps_h, taps_w) > threshold


@jax.jit
def to_original_logits(logits: jnp.ndarray, taps_h: Taps, taps_w: Taps) -> jnp.ndarray:
    """(..., m, m) logits -> (..., H, W) float32 logits at the original size."""
    TRACE_COUNTS["to_original_logits"] += 1
    return resample(logits, taps_h, taps_w).astype(jnp.float32)


def check_mask_threshold(value: Any) -> float:
    """`mask_threshold` as a finite float (a logit; masks are logits > threshold)."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not math.isfinite(threshold):
        raise ValueError(f"mask_threshold must be a finite number (a logit); got {value!r}")
    return threshold


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """One encoded image as the decoder needs it: the model's features of a batch of one (an
    array for SAM, a dict for SAM 2), the decoder's per-image work (`decoder_cache`),
    the original (H, W), the letterbox ratio and the taps taking (m, m) maps to (H, W)."""

    features: Any
    cache: Any
    orig_hw: tuple[int, int]
    ratio: float
    taps: tuple[Taps, Taps]


def encoded_image(model: Any, params: Any, features: Any, orig_hw: tuple[int, int]) -> EncodedImage:
    """The `EncodedImage` of an (H, W) = orig_hw image whose batch-of-one features are given."""
    h, w = orig_hw
    size = int(model.config.image_size)
    r, _, _ = letterbox_geometry(h, w, size)
    taps = unletterbox_taps(h, w, size, int(model.config.mask_input_size))
    return EncodedImage(features, decoder_cache(model, params, features), (h, w), r, taps)


def _to_frame(p: Prompts, image: EncodedImage, normalize_coords: bool) -> tuple[Any, Any]:
    """Points (K, N, 2) and boxes (K, 4) in the letterboxed frame, float32. Meta's
    normalize_coords: True, the inputs are original-image pixels (scaled here by the
    letterbox ratio); False, they are already normalised, x by the image width, y by its
    height (scaled by W r and H r)."""
    h, w = image.orig_hw
    unit = np.ones(2) if normalize_coords else np.array([w, h], np.float64)
    r = np.float32(image.ratio)
    coords = None if p.coords is None else (p.coords * unit).astype(np.float32) * r
    boxes = None if p.boxes is None else (p.boxes * np.tile(unit, 2)).astype(np.float32) * r
    return coords, boxes


def _pad(a: Any, dtype: Any, k: int, kp: int) -> jnp.ndarray | None:
    """Rows k..kp-1 repeat the first prompt (their outputs are dropped), so that K compiles
    once per power-of-two bucket."""
    if a is None:
        return None
    a = np.asarray(a, dtype)
    if kp > k:
        a = np.concatenate([a, np.repeat(a[:1], kp - k, axis=0)])
    return jnp.asarray(a)


def predict_encoded(
    model: Any,
    params: Any,
    image: EncodedImage,
    point_coords: Any = None,
    point_labels: Any = None,
    box: Any = None,
    mask_input: Any = None,
    *,
    multimask_output: bool = True,
    return_logits: bool = False,
    normalize_coords: bool = True,
    mask_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """`Predictor.predict` on one encoded image -> (masks, scores, logits, object_scores);
    object_scores is None for SAM / MobileSAM. Shapes and arguments as `Predictor.predict`."""
    threshold = check_mask_threshold(mask_threshold)
    m = int(model.config.mask_input_size)
    p = check_prompts(point_coords, point_labels, box, mask_input, mask_size=m)
    k = p.k
    kp = ceil_pow2(k)
    coords, boxes = _to_frame(p, image, bool(normalize_coords))
    masks_in = None if p.masks is None else p.masks[..., None]
    logits, iou, obj = decode_prompts(
        model,
        params,
        image.features,
        image.cache,
        _pad(coords, np.float32, k, kp),
        _pad(p.labels, np.int32, k, kp),
        _pad(boxes, np.float32, k, kp),
        _pad(masks_in, np.float32, k, kp),
        multimask_output=bool(multimask_output),
    )
    if return_logits:
        out = to_original_logits(logits, *image.taps)
    else:
        out = to_original(logits, *image.taps, np.float32(threshold))
    out, iou, logits, obj = jax.device_get((out, iou, logits, obj))
    out, iou, logits = out[:k], np.asarray(iou[:k], np.float32), np.asarray(logits[:k])
    obj = None if obj is None else np.asarray(obj[:k], np.float32)
    if p.batched:
        return out, iou, logits, obj
    return out[0], iou[0], logits[0], (None if obj is None else obj[0])


# ---------------------------------------------------------------------------- batches


@functools.partial(jax.jit, static_argnums=0)
def encode_batch(model: Any, params: Any, images_u8: jnp.ndarray) -> Any:
    """(B, S, S, 3) uint8 letterboxed images -> the model's features of the batch."""
    TRACE_COUNTS["encode_batch"] += 1
    return model.apply(params, normalize_pixels(model, images_u8), method="encode_image")


def _slice(features: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda f: f[i : i + 1], features)


def encode_images(model: Any, params: Any, images: Sequence[Any]) -> list[EncodedImage]:
    """A list (or tuple) of B images, each anything `Predictor.set_image` takes, -> their B
    `EncodedImage`s, encoded in one (B, S, S, 3) encoder call. Every image is checked
    before anything runs; a bad one raises a ValueError naming its index."""
    if not isinstance(images, (list, tuple)):
        hint = (
            " (for a (B, H, W, 3) array pass list(array))" if isinstance(images, np.ndarray) else ""
        )
        raise ValueError(f"images must be a list of images{hint}; got {type(images).__name__}")
    if not images:
        raise ValueError("images is empty: pass a list of at least one image")
    size = int(model.config.image_size)
    shapes, boxed = [], []
    for i, image in enumerate(images):
        try:
            rgb, lb, _ = prepare_image(load_image(image), size)
        except ValueError as e:
            raise ValueError(f"images[{i}]: {e}") from e
        shapes.append(rgb.shape[:2])
        boxed.append(lb)
    features = encode_batch(model, params, jnp.asarray(np.stack(boxed)))
    return [encoded_image(model, params, _slice(features, i), hw) for i, hw in enumerate(shapes)]


def _per_image(value: Any, name: str, b: int) -> list[Any]:
    """A *_batch argument -> a list of b entries (all None when value is None)."""
    if value is None:
        return [None] * b
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"{name} must be a list with one entry per image; got {value!r}")
    if len(value) != b:
        raise ValueError(
            f"{name} must have one entry per image of the batch ({b}); got {len(value)}"
        )
    return [value[i] for i in range(b)]


def predict_images(
    model: Any,
    params: Any,
    images: Sequence[EncodedImage],
    point_coords_batch: Any = None,
    point_labels_batch: Any = None,
    box_batch: Any = None,
    mask_input_batch: Any = None,
    **options: Any,
) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """`predict_encoded` on each image: each *_batch argument is None or holds one entry per
    image (None entries allowed); `options` (multimask_output, return_logits,
    normalize_coords, mask_threshold) apply to all. Returns four lists of B entries: masks,
    scores, logits and object scores (None entries for SAM / MobileSAM). A bad prompt
    raises a ValueError naming the image's index."""
    b = len(images)
    given = {
        "point_coords_batch": point_coords_batch,
        "point_labels_batch": point_labels_batch,
        "box_batch": box_batch,
        "mask_input_batch": mask_input_batch,
    }
    per = [_per_image(v, name, b) for name, v in given.items()]
    outs = []
    for i, image in enumerate(images):
        try:
            outs.append(predict_encoded(model, params, image, *(p[i] for p in per), **options))
        except ValueError as e:
            raise ValueError(f"image {i} of the batch: {e}") from e
    masks, scores, logits, objects = (list(x) for x in zip(*outs, strict=True))
    return masks, scores, logits, objects
