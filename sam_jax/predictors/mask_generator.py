"""Segment everything: prompt a grid of single points and keep the good masks.

gen = sam_jax.MaskGenerator(model, params, points_per_side=32, pred_iou_thresh=0.88)
records = gen.generate(image)                 # (H, W, 3) uint8 RGB

Options have Meta's `SamAutomaticMaskGenerator` / `SAM2AutomaticMaskGenerator` names; the
defaults are ultralytics' for SAM / MobileSAM and Meta's SAM 2 generator's for SAM 2
(`FAMILY_DEFAULTS`). The pipeline is ultralytics' (its names: points_stride,
points_batch_size, conf_thres, crop_downscale_factor; box_nms_thresh is its predictor's
`iou`), so that the same weights give the same masks: crops are taken in the letterboxed
S x S frame and point grids cover the image part of each crop; masks pass when predicted
IoU > pred_iou_thresh and stability > stability_score_thresh, are dropped when near a crop
edge that is not an image edge, then box NMS runs within crops (box_nms_thresh) and across
crops (crop_nms_thresh, smaller crops preferred). With min_mask_region_area > 0 (original
pixels), holes and islands smaller than that are removed and NMS (at max(box_nms_thresh,
crop_nms_thresh)) runs again. With use_m2m (SAM 2's "mask to mask" step), each candidate is
decoded once more from its point with its own low-resolution logits as the mask prompt, and
the single refined mask and its predicted IoU replace it before the filters.

The encoder and decoder are the image predictor's compiled functions (`image.TRACE_COUNTS`
counts all compilations); masks are post-processed in fixed chunks of 16 so that each
post-processing function compiles once per image size.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import Sam2Config
from sam_jax.predictors import amg, amg_output
from sam_jax.predictors.image import TRACE_COUNTS, decoder_cache, encode, prepare_image, run_decoder
from sam_jax.predictors.resample import (
    Taps,
    crop_paste_taps,
    crop_zoom_taps,
    resample,
    unletterbox_taps,
)

_CHUNK = 16  # masks per call in the post-processing

# The options whose default depends on the model family (None selects it).
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "sam": {"pred_iou_thresh": 0.88, "stability_score_offset": 0.95},  # ultralytics'
    "sam2": {"pred_iou_thresh": 0.8, "stability_score_offset": 1.0},  # Meta's SAM 2 generator
}


def model_family(model: Any) -> str:
    """'sam2' for SAM 2 / 2.1 models, 'sam' for SAM and MobileSAM."""
    return "sam2" if isinstance(model.config, Sam2Config) else "sam"


def _crop_logits(logits: jnp.ndarray, taps_y: Taps, taps_x: Taps) -> jnp.ndarray:
    """(c, m, m) logits -> (c, S, S) logits of the masks resized to the crop and placed in the
    S x S frame; -inf outside the crop."""
    x = resample(logits, taps_y, taps_x)
    valid = taps_y[3][:, None] & taps_x[3][None, :]
    return jnp.where(valid, x, -jnp.inf)


@jax.jit
def _crop_stats(logits, index, taps_y, taps_x, offset, threshold):
    """Stability scores, boxes (xyxy in the S x S frame) and non-emptiness of logits[index],
    masks being logits > threshold."""
    TRACE_COUNTS["crop_stats"] += 1
    x = _crop_logits(jnp.take(logits, index, axis=0), taps_y, taps_x)
    s = x.shape[-1]
    idx = jnp.arange(s)

    def stats(m):  # one mask at a time: XLA's CPU reductions fuse badly over the stack
        inter = jnp.sum(m > threshold + offset, dtype=jnp.int32)
        union = jnp.sum(m > threshold - offset, dtype=jnp.int32)
        rows, cols = (m > threshold).any(axis=1), (m > threshold).any(axis=0)
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
def _crop_masks(logits, taps_y, taps_x, threshold):
    """(c, m, m) logits -> (c, S, S) bool masks (logits > threshold) in the letterboxed
    frame."""
    TRACE_COUNTS["crop_masks"] += 1
    return _crop_logits(logits, taps_y, taps_x) > threshold


@jax.jit
def _bool_to_original(masks, taps_h, taps_w):
    """(c, S, S) bool masks in the letterboxed frame -> (c, H, W) bool at the original size:
    resampled bilinearly as 0/1 and kept where positive, as the reference does."""
    TRACE_COUNTS["bool_to_original"] += 1
    return resample(masks.astype(jnp.float32), taps_h, taps_w) > 0.0


class MaskGenerator:
    """Segment-everything for SAM, MobileSAM and SAM 2 models.

    Options (Meta's names): points_per_side (n x n grid per crop layer; None with
    point_grids), points_per_batch (points per decoder call), pred_iou_thresh,
    stability_score_thresh, stability_score_offset, box_nms_thresh, crop_n_layers (extra
    layers of overlapping crops), crop_nms_thresh, crop_overlap_ratio,
    crop_n_points_downscale_factor (points per side divided by this per layer), point_grids
    (one (n, 2) array in [0, 1] per crop layer, replacing the regular grids),
    min_mask_region_area (original pixels; 0 keeps masks as predicted), progress (True
    shows a tqdm bar over the decoder batches; a callable gets the number of batches and
    returns an object with update(n) and close()), output_mode (how `segmentation` is
    returned: "binary_mask", "uncompressed_rle" or "coco_rle", see `amg_output`),
    multimask_output (three candidates per point, else one), mask_threshold (logit above
    which a pixel is in the mask; the stability score thresholds it +- the offset) and
    use_m2m (refine each candidate once from its own logits, see the module docstring).

    pred_iou_thresh and stability_score_offset left at None take the model family's value
    (`FAMILY_DEFAULTS`: 0.88 / 0.95 for SAM and MobileSAM, 0.8 / 1.0 for SAM 2); a value
    passed explicitly is always used. Invalid options raise a ValueError here.
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float | None = None,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        progress: bool | Callable[[int], Any] = False,
        *,
        output_mode: str = "binary_mask",
        multimask_output: bool = True,
        mask_threshold: float = 0.0,
        use_m2m: bool = False,
    ) -> None:
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1; got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0; got {crop_n_layers}")
        if not math.isfinite(mask_threshold):
            raise ValueError(f"mask_threshold must be a finite number; got {mask_threshold}")
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
        family = FAMILY_DEFAULTS[model_family(model)]
        self.model = model
        self.params = params
        self.image_size = int(model.config.image_size)
        self.mask_size = int(model.config.mask_input_size)
        self.point_grids = point_grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = _or(pred_iou_thresh, family["pred_iou_thresh"])
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = _or(stability_score_offset, family["stability_score_offset"])
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.progress = progress
        self.output_mode = amg_output.check_output_mode(output_mode)
        self.multimask_output = bool(multimask_output)
        self.mask_threshold = float(mask_threshold)
        self.use_m2m = bool(use_m2m)

    def generate(self, image: Any) -> list[dict[str, Any]]:
        """Segment everything in `image` ((H, W, 3) uint8 RGB or (H, W) grayscale).

        Returns a list of dicts: segmentation ((H, W) bool, or an RLE dict per
        `output_mode`), area (pixels), bbox [x, y, w, h] of the mask, predicted_iou,
        stability_score, point_coords [[x, y]] (the prompt, in original pixels), crop_box
        [x, y, w, h] (original pixels).
        """
        rgb, boxed, gain = prepare_image(image, self.image_size)
        h0, w0 = rgb.shape[:2]
        s = self.image_size
        crops, layers = amg.generate_crop_boxes((s, s), self.crop_n_layers, self.crop_overlap_ratio)
        todo = []  # (crop, layer, fill) for crops that show some of the image
        for crop, layer in zip(crops, layers, strict=True):
            x0, y0, x1, y1 = crop
            cw, ch = x1 - x0, y1 - y0
            fill = np.minimum(np.array([w0, h0]) * gain - [x0, y0], [cw, ch]) / [cw, ch]
            if np.all(fill > 0):
                todo.append((crop, layer, fill))
        n_batches = sum(
            math.ceil(len(self.point_grids[lay]) / self.points_per_batch) for _, lay, _ in todo
        )
        bar = _progress_bar(self.progress, n_batches)
        boxed_dev = jnp.asarray(boxed)
        pieces = [self._crop_masks(boxed_dev, *item, bar) for item in todo]
        pieces = [p for p in pieces if p is not None]
        bar.close()
        if not pieces:
            return []
        data = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        if len(todo) > 1:  # duplicates across crops: prefer masks from smaller crops
            keep = amg.nms(data["boxes"], 1.0 / data["crop_area"], self.crop_nms_thresh)
            data = {k: v[keep] for k, v in data.items()}
        return self._records(data, h0, w0, gain)

    def _crop_masks(self, boxed_dev, crop, layer, fill, bar) -> dict[str, np.ndarray] | None:
        """The masks of one crop that pass the filters and the in-crop NMS: logits (n, m, m),
        boxes (n, 4) and points (n, 2) in the S x S frame, scores, stability, crop, crop_area;
        None if no mask passes."""
        s, m = self.image_size, self.mask_size
        x0, y0, x1, y1 = crop
        cw, ch = x1 - x0, y1 - y0
        feats = encode(self.model, self.params, boxed_dev, crop_zoom_taps(crop, s))
        cache = decoder_cache(self.model, self.params, feats)
        points = self.point_grids[layer] * fill * [s, s]  # in the crop resized to S x S
        taps = crop_paste_taps(crop, s, m)
        kept = collections.defaultdict(list)
        for start in range(0, len(points), self.points_per_batch):
            self._batch_masks(
                feats, cache, points[start : start + self.points_per_batch], crop, taps, kept
            )
            bar.update(1)
        if not kept:
            return None
        piece = {k: np.concatenate(v) for k, v in kept.items()}
        keep = amg.nms(piece["boxes"], piece["scores"], self.box_nms_thresh)
        piece = {k: v[keep] for k, v in piece.items()}
        piece["points"] = piece["points"] * [cw / s, ch / s] + [x0, y0]  # to the S x S frame
        piece["crop"] = np.repeat(np.asarray([crop]), len(keep), axis=0)
        piece["crop_area"] = np.full(len(keep), float(cw * ch))
        return piece

    def _batch_masks(self, feats, cache, batch, crop, taps, kept) -> None:
        """Decode one batch of single-point prompts in a crop and append the masks that pass
        the IoU, stability and crop-edge filters to the lists in `kept`."""
        s, m = self.image_size, self.mask_size
        x0, y0 = crop[:2]
        n, size = len(batch), self.points_per_batch
        padded = np.concatenate([batch, np.repeat(batch[:1], size - n, 0)])
        logits, iou = run_decoder(
            self.model,
            self.params,
            feats,
            cache,
            jnp.asarray(padded[:, None, :], jnp.float32),
            jnp.ones((size, 1), jnp.int32),
            None,
            None,
            multimask_output=self.multimask_output,
        )
        if self.use_m2m:
            logits, iou = self._refine(feats, padded, logits)
        iou = np.asarray(jax.device_get(iou))[:n]  # (n, M)
        nm = iou.shape[1]
        flat_logits = logits.reshape(-1, m, m)
        cand = np.nonzero(iou.reshape(-1) > self.pred_iou_thresh)[0]
        offset = jnp.float32(self.stability_score_offset)
        threshold = jnp.float32(self.mask_threshold)
        for c0 in range(0, len(cand), _CHUNK):
            idx = cand[c0 : c0 + _CHUNK]
            idx_p = jnp.asarray(
                np.concatenate([idx, np.repeat(idx[:1], _CHUNK - len(idx))]), jnp.int32
            )
            stab, bxs, nonempty = jax.device_get(
                _crop_stats(flat_logits, idx_p, *taps, offset, threshold)
            )
            stab, bxs, nonempty = stab[: len(idx)], bxs[: len(idx)], nonempty[: len(idx)]
            bxs = np.where(nonempty[:, None], bxs, [x0, y0, x0, y0])
            ok = stab > self.stability_score_thresh
            ok &= ~amg.is_box_near_crop_edge(bxs, crop, [0, 0, s, s])
            if not ok.any():
                continue
            sel = idx[ok]
            kept["logits"].append(np.asarray(jnp.take(flat_logits, jnp.asarray(sel), 0)))
            kept["boxes"].append(bxs[ok])
            kept["scores"].append(iou.reshape(-1)[sel])
            kept["stability"].append(stab[ok])
            kept["points"].append(batch[sel // nm])

    def _refine(self, feats, padded: np.ndarray, logits: jnp.ndarray):
        """SAM 2's mask-to-mask step: (K, M, m, m) logits of K single-point prompts -> the
        (K, M, m, m) logits and (K, M) IoUs of the single mask decoded from each candidate's
        point with the candidate's own logits as the mask prompt (K = points_per_batch, so
        one compilation)."""
        coords = jnp.asarray(padded[:, None, :], jnp.float32)
        labels = jnp.ones((len(padded), 1), jnp.int32)
        model, params = self.model, self.params
        outs = [
            run_decoder(
                model, params, feats, None, coords, labels, None, logits[:, j, ..., None], False
            )
            for j in range(logits.shape[1])
        ]
        return jnp.concatenate([o[0] for o in outs], 1), jnp.concatenate([o[1] for o in outs], 1)

    def _records(self, data: dict[str, np.ndarray], h0: int, w0: int, gain: float) -> list[dict]:
        """The kept masks at the original (h0, w0) size as records (see `generate`)."""
        s = self.image_size
        frame_masks = self._frame_masks(data["logits"], data["crop"])
        if self.min_mask_region_area > 0:
            frame_masks, keep = amg.postprocess_small_regions(
                np.asarray(jax.device_get(frame_masks)),
                self.min_mask_region_area * gain * gain,
                max(self.box_nms_thresh, self.crop_nms_thresh),
            )
            data = {k: v[keep] for k, v in data.items()}
        taps_h, taps_w = unletterbox_taps(h0, w0, s, s)
        segs = []
        for c0 in range(0, len(frame_masks), _CHUNK):
            chunk = jnp.asarray(frame_masks[c0 : c0 + _CHUNK])
            n = chunk.shape[0]
            if n < _CHUNK:
                chunk = jnp.concatenate([chunk, jnp.zeros((_CHUNK - n, s, s), bool)])
            segs.append(np.asarray(jax.device_get(_bool_to_original(chunk, taps_h, taps_w)))[:n])
        records = []
        for i, seg in enumerate(np.concatenate(segs)):
            x0, y0, x1, y1 = data["crop"][i]
            cx0, cy0 = min(round(x0 / gain), w0), min(round(y0 / gain), h0)
            cx1, cy1 = min(round(x1 / gain), w0), min(round(y1 / gain), h0)
            records.append(
                {
                    "segmentation": amg_output.encode_mask(seg, self.output_mode),
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
        threshold = jnp.float32(self.mask_threshold)
        out = []
        order = np.lexsort(crops.T[::-1])  # group by crop, keep order within a crop
        inverse = np.argsort(order)
        logits, crops = logits[order], crops[order]
        start = 0
        while start < len(logits):
            crop = crops[start]
            same = np.all(crops[start:] == crop, axis=1)
            stop = start + (int(np.argmin(same)) if not same.all() else len(same))
            taps_y, taps_x = crop_paste_taps(tuple(int(v) for v in crop), s, m)
            for c0 in range(start, stop, _CHUNK):
                chunk = logits[c0 : min(c0 + _CHUNK, stop)]
                n = len(chunk)
                chunk = np.concatenate([chunk, np.zeros((_CHUNK - n, m, m), np.float32)])
                out.append(_crop_masks(jnp.asarray(chunk), taps_y, taps_x, threshold)[:n])
            start = stop
        return jnp.concatenate(out)[jnp.asarray(inverse)]


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


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
