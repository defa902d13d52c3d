"""Interactive image segmentation evaluation: mean IoU per prompt protocol.

Protocols, for every object of every image (objects with no pixel outside the sample's
`ignore` region are skipped, they cannot be prompted):

- "click":  one positive click at the object's innermost pixel (of its pixels outside
            `ignore`); of the multimask output, the mask with the highest predicted IoU.
- "box":    the mask's tight box (pixel edges); the single-mask output.
- "clicks": K clicks. Click 1 as "click"; click k + 1 at the centre of the largest error
            region of prediction k (`next_click`), all clicks so far given together with
            prediction k's low-resolution logits as `mask_input`; the single-mask output
            after the first click, as SAM's interactive protocol. Once a prediction has no
            error the remaining rounds keep it.

IoU is measured at the image's original resolution over the pixels outside `ignore`
(`metrics.iou`). Any predictor with `sam_jax.Predictor`'s `set_image(image)` and
`predict(point_coords=, point_labels=, box=, mask_input=, multimask_output=)` -> (masks
(M, H, W), scores (M,), logits (M, h, w)) can be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from sam_jax.data.sample import ImageSample
from sam_jax.evaluation.clicks import first_click, mask_box, next_click
from sam_jax.evaluation.metrics import iou

IMAGE_PROMPTS = ("click", "box", "clicks")


class ImagePredictorLike(Protocol):
    """What the image evaluation calls on a predictor (`sam_jax.Predictor` is one)."""

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(
        self,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _best(masks: np.ndarray, scores: np.ndarray, logits: np.ndarray):
    k = int(np.argmax(scores))
    return np.asarray(masks[k], bool), np.asarray(logits[k])


def click_ious(
    predictor: ImagePredictorLike,
    target: np.ndarray,
    num_clicks: int,
    ignore: np.ndarray | None = None,
) -> list[float]:
    """IoU after each of `num_clicks` clicks of the interactive protocol on object `target`
    (H, W) of the image set on `predictor`: a list of num_clicks floats."""
    coords = [first_click(target if ignore is None else target & ~ignore)]
    labels = [1]
    masks, scores, logits = predictor.predict(
        point_coords=np.array(coords, np.float32),
        point_labels=np.array(labels, np.int32),
        multimask_output=True,
    )
    pred, low = _best(masks, scores, logits)
    ious = [iou(pred, target, ignore)]
    while len(ious) < num_clicks:
        click = next_click(pred, target, ignore)
        if click is None:  # nothing left to correct
            ious.append(ious[-1])
            continue
        coords.append(click[0])
        labels.append(click[1])
        masks, scores, logits = predictor.predict(
            point_coords=np.array(coords, np.float32),
            point_labels=np.array(labels, np.int32),
            mask_input=low,
            multimask_output=False,
        )
        pred, low = _best(masks, scores, logits)
        ious.append(iou(pred, target, ignore))
    return ious


def box_iou(
    predictor: ImagePredictorLike, target: np.ndarray, ignore: np.ndarray | None = None
) -> float:
    """IoU of the single-mask prediction from the tight box of `target` (H, W)."""
    masks, scores, logits = predictor.predict(box=mask_box(target), multimask_output=False)
    return iou(_best(masks, scores, logits)[0], target, ignore)


def evaluate_sample(
    predictor: ImagePredictorLike, sample: ImageSample, prompt: str = "click", clicks: int = 5
) -> dict[str, Any]:
    """One image's result: {"name", "object_ids", "ious", "miou"} (one IoU per evaluated
    object, the last round's for "clicks"; their mean, None without objects), plus "ious_per_click" (objects x clicks) for "clicks" and
    "skipped" (ids of objects with no pixel outside `ignore`)."""
    if prompt not in IMAGE_PROMPTS:
        raise ValueError(f"image prompt must be one of {IMAGE_PROMPTS}; got {prompt!r}")
    ignore = sample.ignore if sample.ignore.any() else None
    visible = sample.masks & ~sample.ignore
    present = visible.any(axis=(1, 2))
    rows = []
    if present.any():
        predictor.set_image(sample.image)
    for k in np.flatnonzero(present):
        if prompt == "box":
            rows.append([box_iou(predictor, sample.masks[k], ignore)])
        else:
            n = clicks if prompt == "clicks" else 1
            rows.append(click_ious(predictor, sample.masks[k], n, ignore))
    ids = [int(i) for i in sample.object_ids[present]]
    skipped = [int(i) for i in sample.object_ids[~present]]
    result: dict[str, Any] = {
        "name": sample.name,
        "object_ids": ids,
        "ious": [r[-1] for r in rows],
        "miou": float(np.mean([r[-1] for r in rows])) if rows else None,
        "skipped": skipped,
    }
    if prompt == "clicks":
        result["ious_per_click"] = rows
    return result


def summarize_images(per_image: list[dict[str, Any]], prompt: str) -> dict[str, Any]:
    """The dataset's result from per-image results: "miou" (mean over all evaluated objects;
    None when there is none), "num_objects", "num_images", "prompt", "per_image", and for
    "clicks" "miou_per_click" (mean IoU after 1..K clicks)."""
    ious = [v for r in per_image for v in r["ious"]]
    out: dict[str, Any] = {
        "miou": float(np.mean(ious)) if ious else None,
        "num_objects": len(ious),
        "num_images": len(per_image),
        "prompt": prompt,
    }
    if prompt == "clicks":
        table = [row for r in per_image for row in r["ious_per_click"]]
        out["miou_per_click"] = [float(v) for v in np.mean(table, axis=0)] if table else []
    out["per_image"] = per_image
    return out


def evaluate_images(
    predictor: ImagePredictorLike,
    samples: Iterable[ImageSample],
    prompt: str = "click",
    clicks: int = 5,
) -> dict[str, Any]:
    """Mean IoU of `predictor` over `samples` (an image dataset or any iterable of
    ImageSample) with one protocol ("click", "box" or "clicks" with `clicks` rounds);
    the result of `summarize_images`."""
    if prompt not in IMAGE_PROMPTS:
        raise ValueError(f"image prompt must be one of {IMAGE_PROMPTS}; got {prompt!r}")
    if prompt == "clicks" and clicks < 1:
        raise ValueError(f"the clicks protocol needs at least 1 click; got {clicks}")
    per_image = [evaluate_sample(predictor, s, prompt, clicks) for s in samples]
    return summarize_images(per_image, prompt)
