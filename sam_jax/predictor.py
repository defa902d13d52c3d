"""Image predictor: prompts in original-image pixels in, masks at the original size out.

p = sam_jax.Predictor(model, params)          # SAM, MobileSAM or SAM 2
p.set_image(image)                            # (H, W, 3) uint8 RGB
masks, scores, logits = p.predict(point_coords=[[500, 375]], point_labels=[1])
records = p.generate(image)                   # segment everything

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
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import amg, fast_decoder
from sam_jax.transforms import ceil_pow2, letterbox, letterbox_geometry, linear_taps

_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)
_LABELS = (-1, 0, 1, 2, 3)  # padding, background, foreground, box corners
_CHUNK = 16  # masks per call in the segment-everything post-processing


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Check an image and return it as a contiguous (H, W, 3) uint8 RGB array.

    Accepted: (H, W, 3) uint8 RGB; (H, W) or (H, W, 1) uint8 grayscale, repeated to RGB.
    Refused with a ValueError: other dtypes (no guess at a value range), RGBA (drop or
    composite the alpha channel yourself), other channel counts and empty images.
    """
    if image is None:
        raise ValueError("image is None; expected an (H, W, 3) uint8 RGB array")
    arr = np.asarray(image)
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


def _lerp(x: jnp.ndarray, taps: tuple[jnp.ndarray, ...], axis: int) -> jnp.ndarray:
    """Bilinear resampling along one axis: x[lo] * (1 - frac) + x[hi] * frac."""
    lo, hi, frac = taps[:3]
    shape = [1] * x.ndim
    shape[axis] = -1
    f = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1.0 - f) + jnp.take(x, hi, axis=axis) * f


def _taps(lo, hi, frac, valid=None) -> tuple[jnp.ndarray, ...]:
    out = (jnp.asarray(lo, jnp.int32), jnp.asarray(hi, jnp.int32), jnp.asarray(frac, jnp.float32))
    return out if valid is None else (*out, jnp.asarray(valid, bool))


def _unletterbox_taps(height: int, width: int, size: int, mask_size: int):
    """Taps taking an (m, m) map over the letterboxed input back to (height, width).

    Along each axis the image covers span = round(n r) * m / S mask pixels; output pixel i
    samples (i + 0.5) * span / n - 0.5. If both spans are whole numbers the map is cropped to
    them first (samples clamped inside the span), otherwise samples are clamped inside the
    whole map, as the reference resampler does in each case.
    """
    _, nh, nw = letterbox_geometry(height, width, size)
    span_h, span_w = nh * mask_size / size, nw * mask_size / size
    whole = abs(span_h - round(span_h)) + abs(span_w - round(span_w)) <= 1e-3
    out = []
    for n, span in ((height, span_h), (width, span_w)):
        last = max(round(span), 1) - 1 if whole else mask_size - 1
        span_used = round(span) if whole else span
        pos = (np.arange(n, dtype=np.float64) + 0.5) * span_used / n - 0.5
        pos = np.clip(pos, 0.0, last)
        lo = np.floor(pos).astype(np.int64)
        out.append(_taps(lo, np.minimum(lo + 1, last), pos - lo))
    return tuple(out)


def _crop_taps(crop: Sequence[int], size: int, src: int):
    """Per-axis taps placing an (src x src) map, resized to the crop, into the S x S frame.
    Rows/columns outside the crop are flagged invalid."""
    x0, y0, x1, y1 = crop
    out = []
    for a0, a1 in ((y0, y1), (x0, x1)):
        n = a1 - a0
        lo = np.zeros(size, np.int64)
        hi = np.zeros(size, np.int64)
        frac = np.zeros(size, np.float32)
        l_, h_, f_ = linear_taps(src, n)
        lo[a0:a1], hi[a0:a1], frac[a0:a1] = l_, h_, f_
        valid = np.zeros(size, bool)
        valid[a0:a1] = True
        out.append(_taps(lo, hi, frac, valid))
    return tuple(out)


def _image_crop_taps(crop: Sequence[int], size: int):
    """Per-axis taps resizing the crop of the S x S input back to S x S."""
    x0, y0, x1, y1 = crop
    out = []
    for a0, a1 in ((y0, y1), (x0, x1)):
        lo, hi, frac = linear_taps(a1 - a0, size)
        out.append(_taps(lo + a0, hi + a0, frac))
    return tuple(out)


# How many times each jitted function below was traced (compiled), for tests and curiosity.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def _pixel_stats(model: Any) -> tuple[np.ndarray, np.ndarray]:
    cfg = model.config
    mean = np.asarray(getattr(cfg, "pixel_mean", _PIXEL_MEAN), np.float32)
    std = np.asarray(getattr(cfg, "pixel_std", _PIXEL_STD), np.float32)
    return mean, std


# The jitted pieces are module functions with the model as a static argument, so that every
# Predictor of equal models shares one compilation cache.


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, image_u8, crop_taps=None):
    """(S, S, 3) uint8 letterboxed image -> features of a batch of one. With crop_taps, the
    given crop of the normalised input is first resized back to S x S."""
    TRACE_COUNTS["encode"] += 1
    mean, std = _pixel_stats(model)
    x = (image_u8.astype(jnp.float32) - mean) / std
    if crop_taps is not None:
        x = _lerp(_lerp(x, crop_taps[1], axis=1), crop_taps[0], axis=0)
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


def _resample(x, taps_h, taps_w):
    x = _lerp(x, taps_w, axis=x.ndim - 1)  # along the width first, as the reference
    return _lerp(x, taps_h, axis=x.ndim - 2)


@jax.jit
def _to_original(logits, taps_h, taps_w):
    """(..., m, m) logits -> (..., H, W) bool masks at the original size."""
    TRACE_COUNTS["to_original"] += 1
    return _resample(logits, taps_h, taps_w) > 0.0


def _crop_logits(logits, taps_y, taps_x):
    """(c, m, m) logits -> (c, S, S) logits of the masks resized to the crop and placed in the
    S x S frame; -inf outside the crop."""
    x = _resample(logits, taps_y, taps_x)
    valid = taps_y[3][:, None] & taps_x[3][None, :]
    return jnp.where(valid, x, -jnp.inf)


@jax.jit
def _crop_stats(logits, index, taps_y, taps_x, offset):
    """Stability scores, boxes (xyxy in the S x S frame) and non-emptiness of logits[index]."""
    TRACE_COUNTS["crop_stats"] += 1
    x = _crop_logits(jnp.take(logits, index, axis=0), taps_y, taps_x)
    s = x.shape[-1]
    idx = jnp.arange(s)

    def stats(m):  # one mask at a time: XLA's CPU reductions fuse badly over the stack
        inter = jnp.sum(m > offset, dtype=jnp.int32)
        union = jnp.sum(m > -offset, dtype=jnp.int32)
        rows, cols = (m > 0.0).any(axis=1), (m > 0.0).any(axis=0)
        box = jnp.stack(
            [
                jnp.min(jnp.where(cols, idx, s)),
                jnp.min(jnp.where(rows, idx, s)),
                jnp.max(jnp.where(cols, idx, -1)),
                jnp.max(jnp.where(rows, idx, -1)),
            ]
        )
        return inter / union, box, rows.any()

    return jax.lax.map(stats, x)


@jax.jit
def _crop_masks(logits, taps_y, taps_x):
    """(c, m, m) logits -> (c, S, S) bool masks in the letterboxed frame."""
    TRACE_COUNTS["crop_masks"] += 1
    return _crop_logits(logits, taps_y, taps_x) > 0.0


@jax.jit
def _bool_to_original(masks, taps_h, taps_w):
    """(c, S, S) bool masks in the letterboxed frame -> (c, H, W) bool at the original size:
    resampled bilinearly as 0/1 and kept where positive, as the reference does."""
    TRACE_COUNTS["bool_to_original"] += 1
    return _resample(masks.astype(jnp.float32), taps_h, taps_w) > 0.0


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

    def _decoder_cache(self, features):
        """Per-image decoder work for `fast_decoder` (SAM / MobileSAM), else None."""
        if not fast_decoder.supported(self.model):
            return None
        return _image_cache(self.model, self.params, features)

    def _run_decoder(self, features, cache, coords, labels, boxes, masks, multimask_output):
        if cache is not None and masks is None and (coords is not None or boxes is not None):
            return _fast_decode(
                self.model, self.params, cache, coords, labels, boxes, multimask_output
            )
        return _decode(
            self.model, self.params, features, coords, labels, boxes, masks, multimask_output
        )

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

    def _prepare(self, image: Any) -> tuple[np.ndarray, np.ndarray, float]:
        rgb = as_rgb_uint8(image)
        h, w = rgb.shape[:2]
        r, _, _ = letterbox_geometry(h, w, self.image_size)
        return rgb, letterbox(rgb, self.image_size), r

    def set_image(self, image: Any) -> None:
        """Letterbox, normalise and encode `image` ((H, W, 3) uint8 RGB; (H, W) or (H, W, 1)
        grayscale is repeated to RGB; RGBA and non-uint8 arrays are refused with a
        ValueError). The features are cached for `predict`."""
        rgb, boxed, r = self._prepare(image)
        h, w = rgb.shape[:2]
        self._features = _encode(self.model, self.params, jnp.asarray(boxed))
        self._cache = self._decoder_cache(self._features)
        self._orig_hw = (h, w)
        self._ratio = r
        self._taps = _unletterbox_taps(h, w, self.image_size, self.mask_size)

    def get_image_embedding(self) -> Any:
        """The cached features of the current image (an array for SAM, a dict for SAM 2)."""
        if self._features is None:
            raise ValueError("no image set: call set_image(image) first")
        return self._features

    # ------------------------------------------------------------------ prompts

    def _check_prompts(self, point_coords, point_labels, box, mask_input):
        """Validate and batch the prompts: returns (coords, labels, boxes, masks, k, batched)
        with a leading prompt axis of size k on each array given."""
        sizes: dict[str, int] = {}
        batched = False
        coords = labels = boxes = masks = None
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if point_coords is not None:
            coords = np.asarray(point_coords, np.float64)
            if coords.ndim == 2 and coords.shape[-1] == 2:
                coords = coords[None]
            elif coords.ndim == 3 and coords.shape[-1] == 2:
                batched = True
            else:
                raise ValueError(
                    f"point_coords must be (N, 2) or (K, N, 2) pixels (x, y); got shape {coords.shape}"
                )
            if coords.shape[1] == 0:
                raise ValueError("point_coords holds no points; pass None instead")
            if not np.all(np.isfinite(coords)):
                raise ValueError("point_coords contains NaN or infinite values")
            if point_labels is None:
                labels = np.ones(coords.shape[:2], np.int32)  # all foreground
            else:
                raw = np.asarray(point_labels)
                lab = raw[None] if raw.ndim == 1 and not batched else raw
                if lab.shape != coords.shape[:2]:
                    want = coords.shape[:2] if batched else coords.shape[1:2]
                    raise ValueError(
                        f"point_labels must have one label per point, shape {tuple(want)}; "
                        f"got shape {raw.shape}"
                    )
                if not np.all(np.isfinite(lab.astype(np.float64))) or np.any(
                    lab.astype(np.float64) != np.round(lab.astype(np.float64))
                ):
                    raise ValueError("point_labels must be integers")
                labels = lab.astype(np.int32)
                bad = ~np.isin(labels, _LABELS)
                if bad.any():
                    raise ValueError(
                        "point_labels must be 1 (foreground) or 0 (background) (-1 padding, 2/3 "
                        f"box corners are also accepted); got {sorted(set(labels[bad].tolist()))}"
                    )
            sizes["point_coords"] = coords.shape[0]
        if box is not None:
            boxes = np.asarray(box, np.float64)
            if boxes.shape == (4,):
                boxes = boxes[None]
            elif boxes.ndim == 2 and boxes.shape[1] == 4:
                batched = True
            else:
                raise ValueError(
                    f"box must be (4,) or (K, 4) as x0, y0, x1, y1; got shape {boxes.shape}"
                )
            if not np.all(np.isfinite(boxes)):
                raise ValueError("box contains NaN or infinite values")
            flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
            if flipped.any():
                i = int(np.argmax(flipped))
                raise ValueError(
                    f"box {i} is {boxes[i].tolist()}: expected x0, y0, x1, y1 with x1 >= x0 and y1 >= y0"
                )
            sizes["box"] = boxes.shape[0]
        if mask_input is not None:
            m = self.mask_size
            masks = np.asarray(mask_input, np.float32)
            if masks.shape == (m, m):
                masks = masks[None]
            elif masks.ndim == 4 and masks.shape[1:] == (1, m, m):
                masks = masks[:, 0]
                batched = batched or masks.shape[0] > 1
            elif masks.ndim == 3 and masks.shape[1:] == (m, m):
                batched = batched or masks.shape[0] > 1
            else:
                raise ValueError(
                    f"mask_input must be low-resolution logits ({m}, {m}), (1, {m}, {m}) or "
                    f"(K, {m}, {m}) (as returned in `logits`); got shape {masks.shape}"
                )
            if not np.all(np.isfinite(masks)):
                raise ValueError("mask_input contains NaN or infinite values")
            sizes["mask_input"] = masks.shape[0]
        if len(set(sizes.values())) > 1:
            # A single mask may go with a batch of prompts; other mismatches are errors.
            if (
                "mask_input" in sizes
                and sizes["mask_input"] == 1
                and len(set(sizes.values()) - {1}) == 1
            ):
                k = max(sizes.values())
                masks = np.repeat(masks, k, axis=0)
                sizes["mask_input"] = k
            if len(set(sizes.values())) > 1:
                desc = ", ".join(f"{n}: {s}" for n, s in sizes.items())
                raise ValueError(
                    f"the prompts disagree on the number of prompts K ({desc}); give point_coords "
                    "(K, N, 2), point_labels (K, N), box (K, 4) and mask_input (K, m, m) alike"
                )
        k = next(iter(sizes.values()), 1)
        return coords, labels, boxes, masks, k, batched

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
        mask_input (K, S/4, S/4); they are run as one batch.

        Returns masks (M, H, W) bool, scores (M,) and logits (M, S/4, S/4) float32, with
        M = 3 if multimask_output else 1, or (K, M, ...) when batched. Points outside the
        image are used as given (not clipped), like the reference. With no prompt at all the
        model's unprompted output is returned.
        """
        if self._features is None:
            raise ValueError("no image set: call set_image(image) before predict(...)")
        coords, labels, boxes, masks, k, batched = self._check_prompts(
            point_coords, point_labels, box, mask_input
        )
        r = np.float32(self._ratio)
        kp = ceil_pow2(k)

        def pad(a, dtype):
            if a is None:
                return None
            a = np.asarray(a, dtype)
            if kp > k:  # extra rows repeat the first prompt; their outputs are dropped
                a = np.concatenate([a, np.repeat(a[:1], kp - k, axis=0)])
            return jnp.asarray(a)

        c = None if coords is None else coords.astype(np.float32) * r
        b = None if boxes is None else boxes.astype(np.float32) * r
        m = None if masks is None else masks[..., None]
        logits, iou = self._run_decoder(
            self._features,
            self._cache,
            pad(c, np.float32),
            pad(labels, np.int32),
            pad(b, np.float32),
            pad(m, np.float32),
            multimask_output=bool(multimask_output),
        )
        out = _to_original(logits, *self._taps)
        out, iou, logits = jax.device_get((out, iou, logits))
        out, iou, logits = out[:k], np.asarray(iou[:k], np.float32), np.asarray(logits[:k])
        if not batched:
            return out[0], iou[0], logits[0]
        return out, iou, logits

    # ------------------------------------------------------------------ segment everything

    def generate(
        self,
        image: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 0.95,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        progress: bool | Callable[[int], Any] = False,
    ) -> list[dict[str, Any]]:
        """Segment everything: prompt a grid of single points and keep the good masks.

        Meta's argument names with ultralytics' default values (ultralytics names:
        points_stride, points_batch_size, conf_thres, crop_downscale_factor; box_nms_thresh
        is its predictor's `iou`). Follows the ultralytics pipeline: crops are taken in the
        letterboxed S x S frame, point grids cover the image part of each crop; masks pass
        when predicted IoU > pred_iou_thresh and stability > stability_score_thresh, are
        dropped when near a crop edge that is not an image edge, then box NMS within crops
        (box_nms_thresh) and across crops (crop_nms_thresh, smaller crops preferred). With
        min_mask_region_area > 0 (original pixels), holes and islands smaller than that are
        removed and NMS (at max(box_nms_thresh, crop_nms_thresh)) runs again.
        `point_grids` (one (n, 2) array in [0, 1] per crop layer) replaces the regular grids.
        `progress=True` shows a tqdm bar over the decoder batches.

        Returns a list of dicts: segmentation (H, W) bool, area (pixels), bbox [x, y, w, h]
        of the mask, predicted_iou, stability_score, point_coords [[x, y]] (the prompt, in
        original pixels), crop_box [x, y, w, h] (original pixels).
        """
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1; got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0; got {crop_n_layers}")
        rgb, boxed, gain = self._prepare(image)
        h0, w0 = rgb.shape[:2]
        s, m = self.image_size, self.mask_size
        crops, layers = amg.generate_crop_boxes((s, s), crop_n_layers, crop_overlap_ratio)
        if point_grids is None:
            if points_per_side is None:
                raise ValueError("give points_per_side or point_grids")
            point_grids = amg.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        point_grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in point_grids]
        if len(point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(point_grids)} grid(s); crop_n_layers={crop_n_layers} "
                f"needs {crop_n_layers + 1}"
            )

        todo = []  # (crop, layer, fill) for crops that show some of the image
        for crop, layer in zip(crops, layers, strict=True):
            x0, y0, x1, y1 = crop
            cw, ch = x1 - x0, y1 - y0
            fill = np.minimum(np.array([w0, h0]) * gain - [x0, y0], [cw, ch]) / [cw, ch]
            if np.all(fill > 0):
                todo.append((crop, layer, fill))
        n_batches = sum(math.ceil(len(point_grids[lay]) / points_per_batch) for _, lay, _ in todo)
        bar = _progress_bar(progress, n_batches)
        boxed_dev = jnp.asarray(boxed)
        pieces = []  # per crop: logits (n, m, m), boxes, scores, stability, points, crop
        for crop, layer, fill in todo:
            x0, y0, x1, y1 = crop
            cw, ch = x1 - x0, y1 - y0
            feats = _encode(self.model, self.params, boxed_dev, _image_crop_taps(crop, s))
            cache = self._decoder_cache(feats)
            points = point_grids[layer] * fill * [s, s]  # in the crop resized to S x S
            taps_y, taps_x = _crop_taps(crop, s, m)
            kept = collections.defaultdict(list)
            for start in range(0, len(points), points_per_batch):
                batch = points[start : start + points_per_batch]
                n = len(batch)
                padded = np.concatenate([batch, np.repeat(batch[:1], points_per_batch - n, 0)])
                logits, iou = self._run_decoder(
                    feats,
                    cache,
                    jnp.asarray(padded[:, None, :], jnp.float32),
                    jnp.ones((points_per_batch, 1), jnp.int32),
                    None,
                    None,
                    multimask_output=True,
                )
                iou = np.asarray(jax.device_get(iou))[:n]  # (n, M)
                nm = iou.shape[1]
                flat_logits = logits.reshape(-1, m, m)
                cand = np.nonzero(iou.reshape(-1) > pred_iou_thresh)[0]
                for c0 in range(0, len(cand), _CHUNK):
                    idx = cand[c0 : c0 + _CHUNK]
                    idx_p = np.concatenate([idx, np.repeat(idx[:1], _CHUNK - len(idx))])
                    stab, bxs, nonempty = jax.device_get(
                        _crop_stats(
                            flat_logits,
                            jnp.asarray(idx_p, jnp.int32),
                            taps_y,
                            taps_x,
                            jnp.float32(stability_score_offset),
                        )
                    )
                    stab, bxs, nonempty = stab[: len(idx)], bxs[: len(idx)], nonempty[: len(idx)]
                    bxs = np.where(nonempty[:, None], bxs, [x0, y0, x0, y0])
                    ok = stab > stability_score_thresh
                    ok &= ~amg.is_box_near_crop_edge(bxs, crop, [0, 0, s, s])
                    if not ok.any():
                        continue
                    sel = idx[ok]
                    kept["logits"].append(np.asarray(jnp.take(flat_logits, jnp.asarray(sel), 0)))
                    kept["boxes"].append(bxs[ok])
                    kept["scores"].append(iou.reshape(-1)[sel])
                    kept["stability"].append(stab[ok])
                    kept["points"].append(batch[sel // nm])
                bar.update(1)
            if not kept:
                continue
            piece = {k: np.concatenate(v) for k, v in kept.items()}
            keep = amg.nms(piece["boxes"], piece["scores"], box_nms_thresh)
            piece = {k: v[keep] for k, v in piece.items()}
            # prompt points back to the S x S frame
            piece["points"] = piece["points"] * [cw / s, ch / s] + [x0, y0]
            piece["crop"] = np.repeat(np.asarray([crop]), len(keep), axis=0)
            piece["crop_area"] = np.full(len(keep), float(cw * ch))
            pieces.append(piece)
        bar.close()
        if not pieces:
            return []
        data = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        if len(todo) > 1:  # duplicates across crops: prefer masks from smaller crops
            keep = amg.nms(data["boxes"], 1.0 / data["crop_area"], crop_nms_thresh)
            data = {k: v[keep] for k, v in data.items()}

        # Masks in the letterboxed frame, then at the original size.
        taps_h, taps_w = _unletterbox_taps(h0, w0, s, s)
        frame_masks = self._frame_masks(data["logits"], data["crop"])
        if min_mask_region_area > 0:
            frame_masks, keep = _remove_small_regions(
                np.asarray(jax.device_get(frame_masks)),
                min_mask_region_area * gain * gain,
                max(box_nms_thresh, crop_nms_thresh),
            )
            data = {k: v[keep] for k, v in data.items()}
        segs = []
        for c0 in range(0, len(frame_masks), _CHUNK):
            chunk = jnp.asarray(frame_masks[c0 : c0 + _CHUNK])
            n = chunk.shape[0]
            if n < _CHUNK:
                chunk = jnp.concatenate([chunk, jnp.zeros((_CHUNK - n, s, s), bool)])
            segs.append(np.asarray(jax.device_get(_bool_to_original(chunk, taps_h, taps_w)))[:n])
        segs = np.concatenate(segs)

        records = []
        for i, seg in enumerate(segs):
            x0, y0, x1, y1 = data["crop"][i]
            cx0, cy0 = min(round(x0 / gain), w0), min(round(y0 / gain), h0)
            cx1, cy1 = min(round(x1 / gain), w0), min(round(y1 / gain), h0)
            records.append(
                {
                    "segmentation": seg,
                    "area": int(seg.sum()),
                    "bbox": amg.box_xyxy_to_xywh(amg.masks_to_boxes(seg)),
                    "predicted_iou": float(data["scores"][i]),
                    "stability_score": float(data["stability"][i]),
                    "point_coords": [[float(v) for v in data["points"][i] / gain]],
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return records

    def _frame_masks(self, logits: np.ndarray, crops: np.ndarray) -> jnp.ndarray:
        """(n, m, m) low-resolution logits of masks from the given crops -> (n, S, S) bool in
        the letterboxed frame, in fixed-size chunks (one compilation)."""
        s, m = self.image_size, self.mask_size
        out = []
        order = np.lexsort(crops.T[::-1])  # group by crop, keep order within a crop
        inverse = np.argsort(order)
        logits, crops = logits[order], crops[order]
        start = 0
        while start < len(logits):
            crop = crops[start]
            same = np.all(crops[start:] == crop, axis=1)
            stop = start + (int(np.argmin(same)) if not same.all() else len(same))
            taps_y, taps_x = _crop_taps(tuple(int(v) for v in crop), s, m)
            for c0 in range(start, stop, _CHUNK):
                chunk = logits[c0 : min(c0 + _CHUNK, stop)]
                n = len(chunk)
                chunk = np.concatenate([chunk, np.zeros((_CHUNK - n, m, m), np.float32)])
                out.append(_crop_masks(jnp.asarray(chunk), taps_y, taps_x)[:n])
            start = stop
        return jnp.concatenate(out)[jnp.asarray(inverse)]


def _remove_small_regions(masks: np.ndarray, min_area: float, nms_thresh: float):
    """Fill small holes and drop small islands of each mask; masks that changed rank below
    unchanged ones in the NMS that removes the duplicates this creates."""
    cleaned, scores = [], []
    for mask in masks:
        mask, changed_holes = amg.remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = amg.remove_small_regions(mask, min_area, "islands")
        cleaned.append(mask)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    cleaned = np.stack(cleaned) if cleaned else masks
    keep = amg.nms(amg.masks_to_boxes(cleaned), np.asarray(scores), nms_thresh)
    return cleaned[keep], keep


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(progress: bool | Callable[[int], Any], total: int):
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="segment everything", unit="batch")
    if callable(progress):
        return progress(total)
    return _NoBar()
