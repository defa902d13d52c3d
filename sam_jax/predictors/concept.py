"""Concept segmentation with SAM 3's concept model: every instance of a caption's concept.

    p = ConceptPredictor(model, params)          # or Predictor(model, params): it delegates
    p.set_image(image)
    result = p.predict(text=["a red car", "dog"])
    result.masks (N, H, W) bool, result.boxes (N, 4) xyxy pixels, result.scores (N,),
    result.classes (N,) index into result.names

Ultralytics' SAM3SemanticPredictor is what this reproduces: the image is stretched to
S x S (no letterbox; OpenCV's bilinear resize) and scaled to [-1, 1]; each caption is one
prompt; exemplar boxes (xyxy pixels, label 1 positive / 0 negative) make one prompt with
the first caption, or with the caption "visual" when none is given. A query's score is
sigmoid(logit) * sigmoid(presence logit); queries above `conf` (0.25) are kept, then
non-maximum suppression at IoU `iou` (0.7) per caption (all captions together with
`agnostic_nms`); masks are the logits resized bilinearly to the image and thresholded at
`mask_threshold` (0.0); boxes are scaled from [0, 1] to the image's pixels. Results are
ordered by decreasing score.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import Sam3SemanticConfig
from sam_jax.models.resize import linear_weights
from sam_jax.predictors.amg import nms
from sam_jax.predictors.image_input import load_image
from sam_jax.text import CLIPTokenizer
from sam_jax.transforms import resize_bilinear_u8

# The reference's per-call caption batch: longer caption lists run in chunks of this many.
MAX_TEXT_BATCH = 16
# Offset separating the captions' boxes in non-agnostic NMS (the reference's, in [0, 1] units).
_CLASS_OFFSET = 7680.0


class ConceptResult(NamedTuple):
    """Detections on the original image, by decreasing score (N may be 0)."""

    masks: np.ndarray  # (N, H, W) bool (or float32 logits with return_logits)
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in pixels
    scores: np.ndarray  # (N,) float32 in [0, 1]
    classes: np.ndarray  # (N,) int64, index into names
    names: list[str]  # the captions (["visual"] for boxes alone)


def is_concept_model(model: Any) -> bool:
    return isinstance(getattr(model, "config", None), Sam3SemanticConfig)


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, image):
    return model.apply(params, image, method="encode_image")


@functools.partial(jax.jit, static_argnums=0)
def _detect(model, params, features, ids, boxes, labels):
    text = model.apply(params, ids, method="encode_text")
    out = model.apply(params, features, text, boxes, labels, method="detect")
    scores = jax.nn.sigmoid(out["pred_logits"]) * jax.nn.sigmoid(out["presence_logit"])[:, None]
    return scores, out["pred_boxes_xyxy"], out["pred_masks"]


class ConceptPredictor:
    """Text / exemplar prompts on one image with a `sam3_semantic` model (module docstring)."""

    def __init__(
        self,
        model: Any,
        params: Any,
        *,
        conf: float = 0.25,
        iou: float = 0.7,
        mask_threshold: float = 0.0,
        agnostic_nms: bool = False,
    ) -> None:
        if not is_concept_model(model):
            raise ValueError(
                "text prompts need SAM 3's concept model: "
                "sam_jax.load('sam3.pt', variant='sam3_semantic')"
            )
        self.model, self.params = model, params
        self.conf, self.iou, self.mask_threshold = conf, iou, mask_threshold
        self.agnostic_nms = agnostic_nms
        self.tokenizer = CLIPTokenizer()
        self._features: Any = None
        self._shape: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    def reset_image(self) -> None:
        self._features, self._shape = None, None

    def set_image(self, image: Any) -> None:
        """Stretch, normalise and encode `image` (anything `Predictor.set_image` takes)."""
        rgb = load_image(image)
        cfg = self.model.config
        s = cfg.image_size
        x = resize_bilinear_u8(rgb, s, s).astype(np.float32)
        x = (x - np.float32(cfg.pixel_mean)) / np.float32(cfg.pixel_std)
        self._features = _encode(self.model, self.params, jnp.asarray(x[None]))
        self._shape = rgb.shape[:2]

    def predict(
        self,
        text: str | list[str] | None = None,
        box: Any = None,
        box_labels: Any = None,
        *,
        conf: float | None = None,
        iou: float | None = None,
        return_logits: bool = False,
    ) -> ConceptResult:
        """Every instance of each caption in `text` (or of the exemplars `box` (K, 4) xyxy
        pixels with `box_labels` (K,) 1 / 0, all positive by default). `conf` / `iou`
        override the predictor's score threshold and NMS IoU for this call. See the module
        docstring for what is kept and how it is ordered."""
        if self._features is None:
            raise ValueError("no image set: call set_image(image) before predict(...)")
        names, boxes, labels = self._prompts(text, box, box_labels)
        scores, xyxy, logits = [], [], []
        for i in range(0, len(names), MAX_TEXT_BATCH):
            chunk = names[i : i + MAX_TEXT_BATCH]
            ids = jnp.asarray(self.tokenizer(chunk, self.model.config.text.context_length))
            out = _detect(self.model, self.params, self._features, ids, boxes, labels)
            for part, value in zip((scores, xyxy, logits), out, strict=True):
                part.append(np.asarray(value))
        conf = self.conf if conf is None else conf
        iou = self.iou if iou is None else iou
        return self._postprocess(
            np.concatenate(scores), np.concatenate(xyxy), np.concatenate(logits), names,
            conf, iou, return_logits,
        )  # fmt: skip

    def _prompts(self, text, box, box_labels):
        """(captions, boxes (1, K, 4) normalised cxcywh or None, labels (1, K) or None)."""
        if isinstance(text, str):
            text = [text]
        if text is not None and (not text or not all(isinstance(t, str) for t in text)):
            raise ValueError(
                f"text must be a caption or a non-empty list of captions; got {text!r}"
            )
        if box is None and text is None:
            raise ValueError("give text=..., exemplar boxes box=..., or both")
        parsed = parse_boxes(box, box_labels, self._shape)
        if parsed is None:
            return list(text), None, None
        boxes, labels = parsed
        # Exemplars make one prompt with the first caption (the reference's priority).
        names = [text[0]] if text else ["visual"]
        return names, boxes, labels

    def _postprocess(self, scores, xyxy, logits, names, conf, iou, return_logits) -> ConceptResult:
        h, w = self._shape
        t, q = scores.shape
        classes = np.repeat(np.arange(t), q)
        scores, xyxy, logits = (
            scores.reshape(-1),
            xyxy.reshape(-1, 4),
            logits.reshape(t * q, *logits.shape[2:]),
        )
        keep = np.flatnonzero(scores > conf)
        offset = 0.0 if self.agnostic_nms else _CLASS_OFFSET
        order = nms(xyxy[keep] + offset * classes[keep, None], scores[keep], iou)
        keep = keep[order]
        wh = linear_weights(logits.shape[1], h)
        ww = linear_weights(logits.shape[2], w)
        full = np.einsum("oh,nhw,pw->nop", wh, logits[keep], ww)
        masks = full if return_logits else full > self.mask_threshold
        boxes = xyxy[keep] * np.float32([w, h, w, h])
        return ConceptResult(masks, boxes.astype(np.float32), scores[keep], classes[keep], names)


def parse_boxes(
    box: Any, box_labels: Any, hw: tuple[int, int]
) -> tuple[jnp.ndarray, jnp.ndarray] | None:
    """xyxy pixels (K, 4) -> ((1, K, 4) cxcywh in [0, 1], (1, K) labels)."""
    if box is None:
        if box_labels is not None:
            raise ValueError("box_labels given without box")
        return None
    b = np.asarray(box, np.float32)
    b = b[None] if b.ndim == 1 else b
    if b.ndim != 2 or b.shape[-1] != 4 or not len(b):
        raise ValueError(f"box must be (4,) or (K, 4) x0, y0, x1, y1; got shape {b.shape}")
    lab = np.ones(len(b), np.int32) if box_labels is None else np.asarray(box_labels)
    if lab.shape != (len(b),) or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"box_labels must be {len(b)} values of 1 / 0; got {box_labels!r}")
    h, w = hw
    cxcywh = np.stack(
        [(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
         (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=-1,
    )  # fmt: skip
    return jnp.asarray(cxcywh[None]), jnp.asarray(lab[None].astype(np.int32))
