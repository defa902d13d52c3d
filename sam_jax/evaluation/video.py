"""Semi-supervised video object segmentation evaluation: J, F and J&F as DAVIS reports them.

Protocol, per video: every object is prompted on its first annotated frame where it is
present (its "prompt frame") with its ground-truth mask (`add_new_mask`, "mask", the
semi-supervised protocol), one positive click at its innermost pixel ("click") or its tight
box ("box"); all objects are then tracked together by one forward `propagate_in_video`.
An object is scored on every annotated frame after its prompt frame: J (`metrics.iou`)
and F (`metrics.boundary_f`, DAVIS's tolerance) of `logits > 0` against its mask there,
over the pixels outside the frame's `ignore` (DAVIS's void pixels). Frames without
annotation are skipped; the prompt frame itself is not scored (its mask was given). Unlike
the DAVIS toolkit, the last frame is scored too.

Means: an object's J and F are means over its scored frames; a sequence's are means over
its objects; the dataset's are means over all objects of all sequences (each object
weighs the same, as DAVIS averages); J&F = (J + F) / 2 at each level. An object with no
scored frame (annotated on one frame only) counts in no mean.

Any predictor with `sam_jax.VideoPredictor`'s `init_state`, `add_new_mask`,
`add_new_points_or_box` and `propagate_in_video` (and optionally `close`) can be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sam_jax.data.sample import VideoSample
from sam_jax.evaluation.clicks import first_click, mask_box
from sam_jax.evaluation.metrics import boundary_f, iou, tolerance

VIDEO_PROMPTS = ("mask", "click", "box")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _scores(j: list[float], f: list[float]) -> dict[str, Any]:
    mj, mf = _mean(j), _mean(f)
    jf = None if mj is None else (mj + mf) / 2
    return {"J": mj, "F": mf, "J&F": jf}


def _prompt(vp: Any, state: Any, frame: int, obj_id: int, mask: np.ndarray, prompt: str) -> None:
    if prompt == "mask":
        vp.add_new_mask(state, frame, obj_id, mask)
    elif prompt == "click":
        point = np.array([first_click(mask)], np.float32)
        vp.add_new_points_or_box(state, frame, obj_id, points=point, labels=np.ones(1, np.int32))
    else:
        vp.add_new_points_or_box(state, frame, obj_id, box=mask_box(mask))


def evaluate_video(
    vp: Any, sample: VideoSample, prompt: str = "mask", radius: int | None = None
) -> dict[str, Any]:
    """One video's result: {"name", "J", "F", "J&F", "objects": {id: {"J", "F", "J&F",
    "prompt_frame", "frames"}}}; means are None where nothing was scored. `radius` is F's
    matching distance in pixels (default DAVIS's, from the frame size)."""
    if prompt not in VIDEO_PROMPTS:
        raise ValueError(f"video prompt must be one of {VIDEO_PROMPTS}; got {prompt!r}")
    r = tolerance(sample.hw) if radius is None else int(radius)
    visible = sample.masks & ~sample.ignore[:, None]  # (T, K, H, W)
    seen = visible.any(axis=(2, 3)) & sample.annotated[:, None]  # (T, K)
    objects = [k for k in range(len(sample.object_ids)) if seen[:, k].any()]
    first = {k: int(np.argmax(seen[:, k])) for k in objects}
    ids = {k: int(sample.object_ids[k]) for k in objects}
    js: dict[int, list[float]] = {k: [] for k in objects}
    fs: dict[int, list[float]] = {k: [] for k in objects}
    if objects:
        state = vp.init_state(sample.frames)
        try:
            for k in objects:
                _prompt(vp, state, first[k], ids[k], visible[first[k], k], prompt)
            for f, obj_ids, logits in vp.propagate_in_video(state):
                if not sample.annotated[f]:
                    continue
                row = {int(o): i for i, o in enumerate(obj_ids)}
                ignore = sample.ignore[f] if sample.ignore[f].any() else None
                for k in objects:
                    if f <= first[k]:
                        continue
                    pred = np.asarray(logits[row[ids[k]]]) > 0
                    js[k].append(iou(pred, sample.masks[f, k], ignore))
                    fs[k].append(boundary_f(pred, sample.masks[f, k], ignore, r))
        finally:
            if hasattr(vp, "close"):
                vp.close(state)
    per_object = {
        str(ids[k]): {**_scores(js[k], fs[k]), "prompt_frame": first[k], "frames": len(js[k])}
        for k in objects
    }
    scored = [o for o in per_object.values() if o["frames"]]
    result = {"name": sample.name}
    result.update(_scores([o["J"] for o in scored], [o["F"] for o in scored]))
    result["objects"] = per_object
    return result


def summarize_videos(per_video: list[dict[str, Any]], prompt: str) -> dict[str, Any]:
    """The dataset's result: "J", "F", "J&F" (means over every scored object; None when
    none), "num_objects" (scored), "num_sequences", "prompt", and "per_sequence" (name ->
    that video's result without its name)."""
    scored = [o for v in per_video for o in v["objects"].values() if o["frames"]]
    summary = _scores([o["J"] for o in scored], [o["F"] for o in scored])
    out: dict[str, Any] = dict(summary)
    out.update(num_objects=len(scored), num_sequences=len(per_video), prompt=prompt)
    out["per_sequence"] = {
        v["name"] or str(i): {k: x for k, x in v.items() if k != "name"}
        for i, v in enumerate(per_video)
    }
    return out


def evaluate_videos(
    vp: Any,
    samples: Iterable[VideoSample],
    prompt: str = "mask",
    radius: int | None = None,
) -> dict[str, Any]:
    """J, F and J&F of video predictor `vp` over `samples` (a video dataset or any iterable
    of VideoSample) with the semi-supervised protocol ("mask") or a first-frame "click" or
    "box"; the result of `summarize_videos`."""
    if prompt not in VIDEO_PROMPTS:
        raise ValueError(f"video prompt must be one of {VIDEO_PROMPTS}; got {prompt!r}")
    return summarize_videos([evaluate_video(vp, s, prompt, radius) for s in samples], prompt)
