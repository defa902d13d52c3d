"""Image predictor: prompts in original-image pixels in, masks at the original size out.

p = sam_jax.Predictor(model, params)          # SAM, MobileSAM or SAM 2
p.set_image(image)                            # (H, W, 3) uint8 RGB
masks, scores, logits = p.predict(point_coords=[[500, 375]], point_labels=[1])
records = p.generate(image)                   # segment everything (`MaskGenerator`)

Preprocessing and postprocessing follow the ultralytics predictor, so that the same weights
give the same masks: the image is letterboxed into the model's S x S input (aspect kept,
top-left, padded with 114; see `sam_jax.transforms`), prompts are scaled by the letterbox
ratio, and the (S/4 x S/4) mask logits are cropped to the image and resized bilinearly to
the original size, then thresholded at 0.

Compilation: the encoder compiles once per model; the decoder once per prompt layout (number
of points per prompt, box or not, mask or not, multimask or not) and bucket of the number of
prompts K (powers of two); the resize to the original size once per image size and bucket.
Changing only the values of prompts never recompiles. The number of points is NOT padded:
padding tokens would take part in the decoder's attention and change the masks.

For SAM / MobileSAM the decoder runs through `sam_jax.fast_decoder`, which does the
prompt-independent part once per image and reorders the attention products (same result up
to float rounding); mask inputs and SAM 2 models go through the model's `predict_masks`.

The jitted pieces are module functions with the model as a static argument, so that every
Predictor and MaskGenerator of equal models shares one compilation cache; `TRACE_COUNTS`
counts their compilations.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import fast_decoder
from sam_jax.predictors.prompts import check_prompts
from sam_jax.predictors.resample import Taps, lerp, resample, unletterbox_taps
from sam_jax.transforms import ceil_pow2, letterbox, letterbox_geometry

_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)
_READ_FIRST = 'read the file first, e.g. with PIL: np.asarray(Image.open(path).convert("RGB"))'

# How many times each jitted function of the image predictors was traced (compiled).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Check an image and return it as a contiguous (H, W, 3) uint8 RGB array.

    Accepted: (H, W, 3) uint8 RGB; (H, W) or (H, W, 1) uint8 grayscale, repeated to RGB.
    Refused with a ValueError: file paths (read the file first), other dtypes (no guess at a
    value range), RGBA (drop or composite the alpha channel yourself), other channel counts
    and empty images.
    """
    if image is None:
        raise ValueError("image is None; expected an (H, W, 3) uint8 RGB array")
    if isinstance(image, (str, bytes, os.PathLike)):
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array (or (H, W) grayscale), not a file "
            f"path ({os.fsdecode(image)!r}); {_READ_FIRST}"
        )
    arr = np.asarray(image)
    if arr.dtype.kind in "USO":
        raise ValueError(
            f"image must be an (H, W, 3) uint8 RGB array (or (H, W) grayscale); got an array "
            f"of dtype {arr.dtype}. For a file, {_READ_FIRST}"
        )
    if arr.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (values 0..255); got dtype {arr.dtype}. Convert it, e.g. "
            "np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grayscale; got shape {arr.shape}")
    c = arr.shape[2]
    if c == 4:
        raise ValueError(
            "image has 4 channels (RGBA?); pass RGB: drop the alpha channel with "
            "image[..., :3] or composite it onto a background first"
        )
    if c not in (1, 3):
        raise ValueError(f"image must have 3 (RGB) or 1 (grayscale) channels; got {c}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty: shape {arr.shape}")
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def prepare_image(image: Any, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """image -> (rgb (H, W, 3) uint8, letterboxed (S, S, 3) uint8, ratio r), S = size; a
    pixel (x, y) of the image is at (x r, y r) in the letterboxed frame."""
    rgb = as_rgb_uint8(image)
    r, _, _ = letterbox_geometry(*rgb.shape[:2], size)
    return rgb, letterbox(rgb, size), r


def _pixel_stats(model: Any) -> tuple[np.ndarray, np.ndarray]:
    cfg = model.config
    mean = np.asarray(getattr(cfg, "pixel_mean", _PIXEL_MEAN), np.float32)
    std = np.asarray(getattr(cfg, "pixel_std", _PIXEL_STD), np.float32)
    return mean, std


@functools.partial(jax.jit, static_argnums=0)
def encode(
    model: Any, params: Any, image_u8: jnp.ndarray, crop_taps: tuple[Taps, Taps] | None = None
) -> Any:
    """(S, S, 3) uint8 letterboxed image -> the model's features of a batch of one. With
    crop_taps (taps_y, taps_x), that crop of the normalised input is first resized to S x S."""
    TRACE_COUNTS["encode"] += 1
    mean, std = _pixel_stats(model)
    x = (image_u8.astype(jnp.float32) - mean) / std
    if crop_taps is not None:
        x = lerp(lerp(x, crop_taps[1], axis=1), crop_taps[0], axis=0)
    return model.apply(params, x[None], method="encode_image")


@functools.partial(jax.jit, static_argnums=(0, 7))
def _decode(model, params, features, coords, labels, boxes, masks, multimask_output):
    """Prompts with a leading axis K -> (logits (K, M, m, m), iou (K, M)); the features of the
    one image are shared by the K prompts."""
    TRACE_COUNTS["decode"] += 1
    k = next((a.shape[0] for a in (coords, boxes, masks) if a is not None), 1)
    feats = jax.tree_util.tree_map(lambda f: jnp.broadcast_to(f, (k, *f.shape[1:])), features)
    out = model.apply(
        params,
        feats,
        point_coords=coords,
        point_labels=labels,
        boxes=boxes,
        mask_inputs=masks,
        multimask_output=multimask_output,
        method="predict_masks",
    )
    return out[0], out[1]


@functools.partial(jax.jit, static_argnums=0)
def _image_cache(model, params, features):
    TRACE_COUNTS["image_cache"] += 1
    return fast_decoder.image_cache(model, params, features)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _fast_decode(model, params, cache, coords, labels, boxes, multimask_output):
    """As `_decode`, through `fast_decoder` with the per-image work cached."""
    TRACE_COUNTS["fast_decode"] += 1
    return fast_decoder.decode(model, params, cache, coords, labels, boxes, multimask_output)


def decoder_cache(model: Any, params: Any, features: Any) -> Any:
    """Per-image decoder work for `fast_decoder` (SAM / MobileSAM), else None."""
    if not fast_decoder.supported(model):
        return None
    return _image_cache(model, params, features)


def run_decoder(
    model: Any,
    params: Any,
    features: Any,
    cache: Any,
    coords: jnp.ndarray | None,
    labels: jnp.ndarray | None,
    boxes: jnp.ndarray | None,
    masks: jnp.ndarray | None,
    multimask_output: bool,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """K prompts in the letterboxed frame (coords (K, N, 2), labels (K, N), boxes (K, 4),
    masks (K, m, m, 1)) on one image -> (logits (K, M, m, m), iou (K, M)), M = 3 with
    multimask_output else 1. Uses the cached fast path where it applies."""
    if cache is not None and masks is None and (coords is not None or boxes is not None):
        return _fast_decode(model, params, cache, coords, labels, boxes, multimask_output)
    return _decode(model, params, features, coords, labels, boxes, masks, multimask_output)


@jax.jit
def _to_original(logits, taps_h, taps_w):
    """(..., m, m) logits -> (..., H, W) bool masks at the original size."""
    TRACE_COUNTS["to_original"] += 1
    return resample(logits, taps_h, taps_w) > 0.0


class Predictor:
    """Promptable segmentation of one image at a time, plus segment-everything.

    Works with any model of this package: SAM / MobileSAM (`encode_image` returns an array,
    `predict_masks` returns (logits, iou)) and SAM 2 (`encode_image` returns a dict,
    `predict_masks` returns (logits, iou, object_score_logits)).

    Compiled functions are shared by all predictors of equal models; `TRACE_COUNTS` in this
    module counts their compilations.
    """

    def __init__(self, model: Any, params: Any) -> None:
        self.model = model
        self.params = params
        self.image_size = int(model.config.image_size)
        self.mask_size = int(model.config.mask_input_size)
        self.reset_image()

    # ------------------------------------------------------------------ image state

    def reset_image(self) -> None:
        """Forget the current image and its features."""
        self._features = None
        self._cache = None
        self._orig_hw: tuple[int, int] | None = None
        self._ratio = 1.0
        self._taps = None

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    def set_image(self, image: Any) -> None:
        """Letterbox, normalise and encode `image` ((H, W, 3) uint8 RGB; (H, W) or (H, W, 1)
        grayscale is repeated to RGB; file paths, RGBA and non-uint8 arrays are refused with
        a ValueError). The features are cached for `predict`."""
        rgb, boxed, r = prepare_image(image, self.image_size)
        h, w = rgb.shape[:2]
        self._features = encode(self.model, self.params, jnp.asarray(boxed))
        self._cache = decoder_cache(self.model, self.params, self._features)
        self._orig_hw = (h, w)
        self._ratio = r
        self._taps = unletterbox_taps(h, w, self.image_size, self.mask_size)

    def get_image_embedding(self) -> Any:
        """The cached features of the current image (an array for SAM, a dict for SAM 2)."""
        if self._features is None:
            raise ValueError("no image set: call set_image(image) first")
        return self._features

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the current image.

        point_coords (N, 2) pixels (x, y) of the original image, point_labels (N,) with 1
        foreground and 0 background (all 1 if omitted); box (4,) x0, y0, x1, y1; mask_input
        (S/4, S/4) or (1, S/4, S/4) low-resolution logits, e.g. a previous `logits` entry.
        Several prompts at once: point_coords (K, N, 2), point_labels (K, N), box (K, 4),
        mask_input (K, S/4, S/4); they are run as one batch. Prompts are checked by
        `sam_jax.predictors.prompts.check_prompts` (ValueError on bad shapes or values).

        Returns masks (M, H, W) bool, scores (M,) and logits (M, S/4, S/4) float32, with
        M = 3 if multimask_output else 1, or (K, M, ...) when batched. Points outside the
        image are used as given (not clipped), like the reference. With no prompt at all the
        model's unprompted output is returned.
        """
        if self._features is None:
            raise ValueError("no image set: call set_image(image) before predict(...)")
        p = check_prompts(point_coords, point_labels, box, mask_input, mask_size=self.mask_size)
        k, r = p.k, np.float32(self._ratio)
        kp = ceil_pow2(k)

        def pad(a, dtype):
            if a is None:
                return None
            a = np.asarray(a, dtype)
            if kp > k:  # extra rows repeat the first prompt; their outputs are dropped
                a = np.concatenate([a, np.repeat(a[:1], kp - k, axis=0)])
            return jnp.asarray(a)

        c = None if p.coords is None else p.coords.astype(np.float32) * r
        b = None if p.boxes is None else p.boxes.astype(np.float32) * r
        m = None if p.masks is None else p.masks[..., None]
        logits, iou = run_decoder(
            self.model,
            self.params,
            self._features,
            self._cache,
            pad(c, np.float32),
            pad(p.labels, np.int32),
            pad(b, np.float32),
            pad(m, np.float32),
            multimask_output=bool(multimask_output),
        )
        out = _to_original(logits, *self._taps)
        out, iou, logits = jax.device_get((out, iou, logits))
        out, iou, logits = out[:k], np.asarray(iou[:k], np.float32), np.asarray(logits[:k])
        if not p.batched:
            return out[0], iou[0], logits[0]
        return out, iou, logits

    # ------------------------------------------------------------------ segment everything

    def generate(self, image: Any, *args: Any, **options: Any) -> list[dict[str, Any]]:
        """Segment everything in `image`: `MaskGenerator(model, params, *args, **options)
        .generate(image)` with this predictor's model, so the same options (points_per_side,
        points_per_batch, pred_iou_thresh, ...), defaults and records. The image set with
        `set_image` is left as it is."""
        from sam_jax.predictors.mask_generator import MaskGenerator  # it imports this module

        return MaskGenerator(self.model, self.params, *args, **options).generate(image)
