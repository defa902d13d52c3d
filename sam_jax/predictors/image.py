"""Image predictor: prompts in original-image pixels in, masks at the original size out.

p = sam_jax.Predictor(model, params)          # SAM, MobileSAM or SAM 2
p.set_image(image)                            # (H, W, 3) uint8 RGB, a PIL image or a path
masks, scores, logits = p.predict(point_coords=[[500, 375]], point_labels=[1])
p.set_image_batch([image_a, image_b])         # one encoder call (`image_batch`)
masks, scores, logits = p.predict_batch(point_coords_batch=[pts_a, None], ...)
records = p.generate(image)                   # segment everything (`MaskGenerator`)

Preprocessing and postprocessing follow the ultralytics predictor, so that the same weights
give the same masks: the image is letterboxed into the model's S x S input (aspect kept,
top-left, padded with 114; see `sam_jax.transforms`), prompts are scaled by the letterbox
ratio, and the (S/4 x S/4) mask logits are cropped to the image and resized bilinearly to
the original size, then thresholded at `mask_threshold` (0 by default).

Compilation: the encoder compiles once per model (and batch size for `set_image_batch`);
the decoder once per prompt layout (number of points per prompt, box or not, mask or not,
multimask or not) and bucket of the number of prompts K (powers of two); the resize to the
original size once per image size, bucket and output kind (bool masks or logits).
Changing only the values of prompts or of `mask_threshold` never recompiles. The number of
points is NOT padded: padding tokens would take part in the decoder's attention and change
the masks.

Every prompt goes through the model's `predict_masks`; the decoder's prompt-independent
work is done once per image (`decoder_cache`) and shared by every prompt without a mask
input (sam_jax.models.two_way_transformer).

The jitted pieces are module functions with the model as a static argument, so that every
Predictor and MaskGenerator of equal models shares one compilation cache; `TRACE_COUNTS`
counts their compilations.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.predictors.concept import ConceptPredictor, is_concept_model
from sam_jax.predictors.image_input import load_image, prepare_image
from sam_jax.predictors.resample import Taps, lerp

_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)

# How many times each jitted function of the image predictors was traced (compiled).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def normalize_pixels(model: Any, image_u8: jnp.ndarray) -> jnp.ndarray:
    """(..., 3) uint8 -> float32 (x - mean) / std with the model's pixel statistics."""
    cfg = model.config
    mean = np.asarray(getattr(cfg, "pixel_mean", _PIXEL_MEAN), np.float32)
    std = np.asarray(getattr(cfg, "pixel_std", _PIXEL_STD), np.float32)
    return (image_u8.astype(jnp.float32) - mean) / std


@functools.partial(jax.jit, static_argnums=0)
def encode(
    model: Any, params: Any, image_u8: jnp.ndarray, crop_taps: tuple[Taps, Taps] | None = None
) -> Any:
    """(S, S, 3) uint8 letterboxed image -> the model's features of a batch of one. With
    crop_taps (taps_y, taps_x), that crop of the normalised input is first resized to S x S."""
    TRACE_COUNTS["encode"] += 1
    x = normalize_pixels(model, image_u8)
    if crop_taps is not None:
        x = lerp(lerp(x, crop_taps[1], axis=1), crop_taps[0], axis=0)
    return model.apply(params, x[None], method="encode_image")


@functools.partial(jax.jit, static_argnums=(0, 7))
def _decode_scored(model, params, features, coords, labels, boxes, masks, multimask_output, cache):
    """Prompts with a leading axis K -> (logits (K, M, m, m), iou (K, M), object score logits
    (K,) for SAM 2 else None); the features of the one image are shared by the K prompts,
    and so is `cache` (the decoder's per-image work, or None)."""
    TRACE_COUNTS["decode"] += 1
    out = model.apply(
        params,
        features,
        point_coords=coords,
        point_labels=labels,
        boxes=boxes,
        mask_inputs=masks,
        multimask_output=multimask_output,
        decoder_cache=cache,
        method="predict_masks",
    )
    return out[0], out[1], (out[2][:, 0] if len(out) > 2 else None)


def _decode(model, params, features, coords, labels, boxes, masks, multimask_output):
    """`_decode_scored` without the object scores: (logits (K, M, m, m), iou (K, M))."""
    out = _decode_scored(
        model, params, features, coords, labels, boxes, masks, multimask_output, None
    )
    return out[0], out[1]


@functools.partial(jax.jit, static_argnums=0)
def _image_cache(model, params, features):
    TRACE_COUNTS["image_cache"] += 1
    return model.apply(params, features, method="decoder_cache")


def decoder_cache(model: Any, params: Any, features: Any) -> Any:
    """The mask decoder's per-image work on one image's features (the model's
    `decoder_cache`), shared by every prompt without a mask input."""
    return _image_cache(model, params, features)


def decode_prompts(
    model: Any,
    params: Any,
    features: Any,
    cache: Any,
    coords: jnp.ndarray | None,
    labels: jnp.ndarray | None,
    boxes: jnp.ndarray | None,
    masks: jnp.ndarray | None,
    multimask_output: bool,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
    """K prompts in the letterboxed frame (coords (K, N, 2), labels (K, N), boxes (K, 4),
    masks (K, m, m, 1)) on one image -> (logits (K, M, m, m), iou (K, M), object score
    logits (K,) for SAM 2 models, None for SAM / MobileSAM), M = 3 with multimask_output
    else 1. The decoder's per-image work `cache` is used where it applies (no mask input)."""
    cache = cache if masks is None else None
    return _decode_scored(
        model, params, features, coords, labels, boxes, masks, multimask_output, cache
    )


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
    """`decode_prompts` without the object scores: (logits (K, M, m, m), iou (K, M))."""
    out = decode_prompts(
        model, params, features, cache, coords, labels, boxes, masks, multimask_output
    )
    return out[0], out[1]


class Predictor:
    """Promptable segmentation of one image, or of a batch of images, plus segment-everything.

    Works with any model of this package: SAM / MobileSAM (`encode_image` returns an array,
    `predict_masks` returns (logits, iou)) and SAM 2 (`encode_image` returns a dict,
    `predict_masks` returns (logits, iou, object_score_logits)). `mask_threshold` (a logit,
    0.0 by default; an attribute that may be changed) is where the logits become the bool
    masks.

    Compiled functions are shared by all predictors of equal models; `TRACE_COUNTS` in this
    module counts their compilations.
    """

    def __init__(self, model: Any, params: Any, *, mask_threshold: float = 0.0) -> None:
        self.model = model
        self.params = params
        self.image_size = int(model.config.image_size)
        self.mask_size = int(model.config.mask_input_size)
        self.mask_threshold = mask_threshold  # checked where it is used: it may be reassigned
        # SAM 3's concept model takes text / exemplar prompts: see predictors/concept.py.
        self._concept = ConceptPredictor(model, params) if is_concept_model(model) else None
        self.reset_image()

    # ------------------------------------------------------------------ image state

    def reset_image(self) -> None:
        """Forget the current image (or batch of images) and its features."""
        self._images: list[Any] = []  # image_batch.EncodedImage, one per image
        self._is_batch = False
        if self._concept is not None:
            self._concept.reset_image()

    @property
    def is_image_set(self) -> bool:
        """True after `set_image` or `set_image_batch`, until `reset_image`."""
        return bool(self._images) or (self._concept is not None and self._concept.is_image_set)

    @property
    def is_batch(self) -> bool:
        """True when the images were set with `set_image_batch` (use `predict_batch`)."""
        return self._is_batch

    def set_image(self, image: Any) -> None:
        """Letterbox, normalise and encode `image`: an (H, W, 3) uint8 RGB array ((H, W) or
        (H, W, 1) grayscale is repeated to RGB), a PIL image (converted to RGB) or the path
        of an image file (str or pathlib.Path; read with Pillow, EXIF orientation applied,
        converted to RGB). RGBA and non-uint8 arrays, missing or unreadable files raise a
        ValueError and leave the predictor as it was. The features are cached for `predict`.
        """
        from sam_jax.predictors.image_batch import encoded_image  # it imports this module

        if self._concept is not None:  # stretched, not letterboxed: see predictors/concept.py
            self._concept.mask_threshold = self.mask_threshold
            return self._concept.set_image(image)
        rgb, boxed, _ = prepare_image(load_image(image), self.image_size)
        features = encode(self.model, self.params, jnp.asarray(boxed))
        self._images = [encoded_image(self.model, self.params, features, rgb.shape[:2])]
        self._is_batch = False

    def set_image_batch(self, images: list[Any]) -> None:
        """Encode a list of B images (each anything `set_image` takes, of any sizes) as one
        (B, S, S, 3) batch in one encoder call, for `predict_batch`. See `image_batch`."""
        from sam_jax.predictors.image_batch import encode_images

        self._images = encode_images(self.model, self.params, images)
        self._is_batch = True

    def get_image_embedding(self) -> Any:
        """The cached features of the current image (an array for SAM, a dict for SAM 2), of a
        batch of one; after `set_image_batch`, of the B images (leading axis B)."""
        if not self._images:
            raise ValueError("no image set: call set_image(image) first")
        if not self._is_batch:
            return self._images[0].features
        return jax.tree_util.tree_map(
            lambda *f: jnp.concatenate(f), *(im.features for im in self._images)
        )

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        return_object_score: bool = False,
        *,
        text: str | list[str] | None = None,
        box_labels: Any = None,
        conf: float | None = None,
        iou: float | None = None,
    ) -> tuple[Any, ...]:
        """Masks for prompts on the current image.

        With SAM 3's concept model (`sam3_semantic`) the prompts are captions `text` and/or
        exemplar boxes `box` (K, 4) with `box_labels` (K,) (1 positive, 0 negative), and the
        result is a `concept.ConceptResult` (masks, boxes, scores, classes, names) holding
        every detected instance with score > `conf` (0.25) after NMS at `iou` (0.7); see
        sam_jax.predictors.concept.

        point_coords (N, 2) pixels (x, y) of the original image, point_labels (N,) with 1
        foreground and 0 background (all 1 if omitted); box (4,) x0, y0, x1, y1; mask_input
        (S/4, S/4) or (1, S/4, S/4) low-resolution logits, e.g. a previous `logits` entry.
        Several prompts at once: point_coords (K, N, 2), point_labels (K, N), box (K, 4),
        mask_input (K, S/4, S/4); they are run as one batch. Prompts are checked by
        `sam_jax.predictors.prompts.check_prompts` (ValueError on bad shapes or values).
        normalize_coords (Meta's meaning): True, the default, takes points and boxes in
        pixels of the original image; False takes them as fractions of its width (x) and
        height (y), in [0, 1] inside the image.

        Returns masks (M, H, W) bool (logits > `mask_threshold`), or with return_logits
        float32 logits at the original size; scores (M,) and logits (M, S/4, S/4) float32,
        with M = 3 if multimask_output else 1, or (K, M, ...) when batched. With
        return_object_score a fourth value: SAM 2's object score logit, float32 () or (K,)
        (> 0: the object is judged present; where it is not, SAM 2's logits are -1024),
        None for SAM / MobileSAM. Points outside the image are used as given (not clipped),
        like the reference. With no prompt at all the model's unprompted output is returned.
        """
        from sam_jax.predictors.image_batch import predict_encoded

        if self._concept is not None or text is not None or box_labels is not None:
            concept = dict(box_labels=box_labels, conf=conf, iou=iou, return_logits=return_logits)
            return self._predict_concept(point_coords, mask_input, box, text, **concept)
        if not self._images:
            raise ValueError("no image set: call set_image(image) before predict(...)")
        if self._is_batch:
            raise ValueError(
                "a batch of images is set (set_image_batch): use predict_batch(...), or "
                "set_image(image) to predict on one image"
            )
        opts = dict(multimask_output=multimask_output, return_logits=return_logits)
        opts.update(normalize_coords=normalize_coords, mask_threshold=self.mask_threshold)
        out = predict_encoded(
            self.model,
            self.params,
            self._images[0],
            point_coords,
            point_labels,
            box,
            mask_input,
            **opts,
        )
        return out if return_object_score else out[:3]

    def _predict_concept(self, points, mask_input, box, text, **options):
        if self._concept is None:
            raise ValueError(
                "text / box_labels prompts need SAM 3's concept model: "
                "sam_jax.load('sam3.pt', variant='sam3_semantic')"
            )
        if points is not None or mask_input is not None:
            raise ValueError(
                "SAM 3's concept model takes text and exemplar boxes, not points or masks"
            )
        self._concept.mask_threshold = self.mask_threshold
        return self._concept.predict(text, box, **options)

    def predict_batch(
        self,
        point_coords_batch: Any = None,
        point_labels_batch: Any = None,
        box_batch: Any = None,
        mask_input_batch: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        return_object_score: bool = False,
    ) -> tuple[list[Any], ...]:
        """`predict` on each image of `set_image_batch`: every *_batch argument is None or a
        list with one entry per image (an entry may be None); the other arguments apply to
        all images. Returns lists (masks, scores, logits[, object_scores]) with one entry
        per image, each what `set_image(image_i); predict(...)` returns for that image.
        See `image_batch.predict_images`."""
        from sam_jax.predictors.image_batch import predict_images

        if not self._images:
            raise ValueError("no images set: call set_image_batch(images) before predict_batch")
        if not self._is_batch:
            raise ValueError(
                "one image is set (set_image): use predict(...), or set_image_batch(images) "
                "for predict_batch"
            )
        opts = dict(multimask_output=multimask_output, return_logits=return_logits)
        opts.update(normalize_coords=normalize_coords, mask_threshold=self.mask_threshold)
        batches = (point_coords_batch, point_labels_batch, box_batch, mask_input_batch)
        out = predict_images(self.model, self.params, self._images, *batches, **opts)
        return out if return_object_score else out[:3]

    # ------------------------------------------------------------------ segment everything

    def generate(self, image: Any, *args: Any, **options: Any) -> list[dict[str, Any]]:
        """Segment everything in `image`: `MaskGenerator(model, params, *args, **options)
        .generate(image)` with this predictor's model, so the same options (points_per_side,
        points_per_batch, pred_iou_thresh, ...), defaults and records; `image` may be
        anything `set_image` takes; `mask_threshold` defaults to this predictor's. The image
        set with `set_image` is left as it is."""
        from sam_jax.predictors.mask_generator import MaskGenerator  # it imports this module

        options.setdefault("mask_threshold", self.mask_threshold)
        return MaskGenerator(self.model, self.params, *args, **options).generate(load_image(image))
