"""`evaluate_model`: a model on a dataset, the protocol chosen by what the dataset holds."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from sam_jax import Predictor, VideoPredictor
from sam_jax.data.dataset import ImageDataset, VideoDataset
from sam_jax.evaluation.image import IMAGE_PROMPTS, evaluate_images
from sam_jax.evaluation.video import VIDEO_PROMPTS, evaluate_videos


def default_prompt(dataset: ImageDataset | VideoDataset) -> str:
    """ "click" for an image dataset, "mask" (semi-supervised) for a video dataset."""
    return "mask" if isinstance(dataset, VideoDataset) else "click"


def check_prompt(dataset: ImageDataset | VideoDataset, prompt: str) -> None:
    """ValueError when `prompt` is not a protocol of this kind of dataset."""
    video = isinstance(dataset, VideoDataset)
    allowed = VIDEO_PROMPTS if video else IMAGE_PROMPTS
    if prompt not in allowed:
        kind = "a video" if video else "an image"
        raise ValueError(
            f"prompt {prompt!r} does not apply to {kind} dataset; use one of {allowed}"
        )


def evaluate_model(
    model: Any,
    params: Any,
    dataset: ImageDataset | VideoDataset,
    *,
    prompt: str | None = None,
    clicks: int = 5,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` with `params` on the first `limit` samples (all by default) of
    `dataset` (`sam_jax.data.open_dataset`). Image datasets: `evaluate_images` through a
    `sam_jax.Predictor` (prompt "click" by default, "box" or "clicks" with `clicks`
    rounds). Video datasets: `evaluate_videos` through a `sam_jax.VideoPredictor` with
    non-overlapping output masks (each pixel to one object, as a DAVIS label map is); SAM 2
    models only; prompt "mask" by default, "click" or "box"."""
    prompt = prompt or default_prompt(dataset)
    check_prompt(dataset, prompt)
    n = len(dataset) if limit is None else max(0, min(int(limit), len(dataset)))
    samples = tqdm((dataset[i] for i in range(n)), total=n, desc="evaluate", disable=not progress)
    if isinstance(dataset, VideoDataset):
        if not hasattr(model.config, "num_maskmem"):
            raise ValueError(
                f"a video dataset needs a SAM 2 model; this one is {model.config.name}"
            )
        vp = VideoPredictor(model, params, non_overlap_masks=True, progress=False)
        return evaluate_videos(vp, samples, prompt)
    return evaluate_images(Predictor(model, params), samples, prompt, clicks)
