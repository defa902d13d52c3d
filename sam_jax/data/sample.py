"""What a dataset yields: one image with its instance masks, or one video clip with its.

Both are frozen keyword-only dataclasses of numpy arrays, checked on construction: a sample
that exists has consistent shapes and dtypes, so a reader's mistake (a mask whose size does
not match its image) surfaces where the sample is built, with the sample's name.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageSample:
    """One RGB image and its K instance masks.

    image       (H, W, 3) uint8 RGB.
    masks       (K, H, W) bool, one mask per object; K may be 0. Masks may overlap (COCO,
                SA-1B) and may be empty (an annotation with no pixels after decoding).
    object_ids  (K,) int64, the dataset's id of each object (COCO annotation id, SA-1B
                annotation id, the value in an instance-id PNG).
    ignore      (H, W) bool, pixels to leave out of losses and metrics (COCO crowd regions);
                all False when the dataset marks none (the default).
    name        where the sample comes from (an image path), for error messages and logs.
    """

    image: np.ndarray
    masks: np.ndarray
    object_ids: np.ndarray
    ignore: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise _fail(
                self.name, f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        h, w = image.shape[:2]
        masks = np.asarray(self.masks)
        if masks.dtype != np.bool_ or masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise _fail(
                self.name,
                f"masks must be (K, {h}, {w}) bool to match the image, "
                f"got {masks.shape} {masks.dtype}",
            )
        ids = np.asarray(self.object_ids, np.int64).reshape(-1)
        if ids.shape != (masks.shape[0],):
            raise _fail(self.name, f"{ids.size} object ids for {masks.shape[0]} masks")
        ignore = np.zeros((h, w), bool) if self.ignore is None else np.asarray(self.ignore)
        if ignore.dtype != np.bool_ or ignore.shape != (h, w):
            raise _fail(self.name, f"ignore must be ({h}, {w}) bool, got {ignore.shape}")
        for field, value in (("image", image), ("masks", masks), ("object_ids", ids)):
            object.__setattr__(self, field, value)
        object.__setattr__(self, "ignore", ignore)

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[0], self.image.shape[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoSample:
    """T frames of one video and the masks of its K objects in each.

    frames       (T, H, W, 3) uint8 RGB.
    masks        (T, K, H, W) bool; object k's mask in frame t (all False where the object
                 is absent or the frame has no annotation).
    object_ids   (K,) int64, the objects' ids (the palette index in DAVIS / MOSE PNGs).
    annotated    (T,) bool, whether frame t has a ground-truth annotation at all (datasets
                 such as YouTube-VOS annotate every fifth frame); all True by default.
    ignore       (T, H, W) bool, pixels to leave out of losses and metrics: void pixels
                 (DAVIS / MOSE value 255) and every pixel of a frame without annotation;
                 all False by default.
    frame_names  the T frames' file stems.
    name         the video's name.
    """

    frames: np.ndarray
    masks: np.ndarray
    object_ids: np.ndarray
    annotated: np.ndarray | None = None
    ignore: np.ndarray | None = None
    frame_names: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
            raise _fail(
                self.name, f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        t, h, w = frames.shape[:3]
        masks = np.asarray(self.masks)
        if (
            masks.dtype != np.bool_
            or masks.ndim != 4
            or masks.shape[0] != t
            or masks.shape[2:] != (h, w)
        ):
            raise _fail(
                self.name,
                f"masks must be ({t}, K, {h}, {w}) bool to match the frames, "
                f"got {masks.shape} {masks.dtype}",
            )
        ids = np.asarray(self.object_ids, np.int64).reshape(-1)
        if ids.shape != (masks.shape[1],):
            raise _fail(self.name, f"{ids.size} object ids for {masks.shape[1]} objects")
        annotated = np.ones(t, bool) if self.annotated is None else np.asarray(self.annotated)
        if annotated.dtype != np.bool_ or annotated.shape != (t,):
            raise _fail(self.name, f"annotated must be ({t},) bool, got {annotated.shape}")
        ignore = np.zeros((t, h, w), bool) if self.ignore is None else np.asarray(self.ignore)
        if ignore.dtype != np.bool_ or ignore.shape != (t, h, w):
            raise _fail(self.name, f"ignore must be ({t}, {h}, {w}) bool, got {ignore.shape}")
        names = tuple(self.frame_names)
        if names and len(names) != t:
            raise _fail(self.name, f"{len(names)} frame names for {t} frames")
        values = dict(frames=frames, masks=masks, object_ids=ids, annotated=annotated)
        values.update(ignore=ignore, frame_names=names)
        for field, value in values.items():
            object.__setattr__(self, field, value)

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def present(self) -> np.ndarray:
        """(T, K) bool: object k has at least one pixel in frame t."""
        return self.masks.any(axis=(2, 3))
