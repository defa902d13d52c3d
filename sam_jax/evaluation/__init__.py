"""Evaluation on annotated datasets: interactive image mIoU and video J / F / J&F.

    from sam_jax.data import open_dataset
    from sam_jax.evaluation import evaluate_model
    result = evaluate_model(model, params, open_dataset("val.json"), prompt="clicks", clicks=5)
    result["miou"], result["miou_per_click"]

Images (`evaluate_images`): one click at the object's innermost pixel, its box, or K
clicks of SAM's interactive protocol, IoU at the original resolution. Videos
(`evaluate_videos`): the semi-supervised protocol (first-frame ground-truth mask) or a
first-frame click or box, DAVIS's region similarity J and boundary F-measure F. The drivers
take any object with the interface of `sam_jax.Predictor` / `sam_jax.VideoPredictor`;
the metrics (`iou`, `boundary_f`, `next_click`) are plain numpy.
"""

from sam_jax.evaluation.clicks import first_click, largest_region, mask_box, next_click
from sam_jax.evaluation.image import (
    IMAGE_PROMPTS,
    click_ious,
    evaluate_images,
    evaluate_sample,
)
from sam_jax.evaluation.metrics import (
    boundary,
    boundary_f,
    boundary_prf,
    dilate_disk,
    iou,
    tolerance,
)
from sam_jax.evaluation.run import evaluate_model
from sam_jax.evaluation.video import VIDEO_PROMPTS, evaluate_video, evaluate_videos

__all__ = [
    "IMAGE_PROMPTS",
    "VIDEO_PROMPTS",
    "boundary",
    "boundary_f",
    "boundary_prf",
    "click_ious",
    "dilate_disk",
    "evaluate_images",
    "evaluate_model",
    "evaluate_sample",
    "evaluate_video",
    "evaluate_videos",
    "first_click",
    "iou",
    "largest_region",
    "mask_box",
    "next_click",
    "tolerance",
]
