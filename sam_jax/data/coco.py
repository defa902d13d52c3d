"""A COCO instance-segmentation JSON (`images`, `annotations`) as an image dataset."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.data._files import read_rgb
from sam_jax.data.dataset import ImageDataset
from sam_jax.data.rle import decode_segmentation
from sam_jax.data.sample import ImageSample


def read_json(path: Path) -> Any:
    """The parsed JSON file, or a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from e


def is_coco(data: Any) -> bool:
    """Whether parsed JSON has COCO's top-level `images` and `annotations` lists."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    )


class CocoDataset(ImageDataset):
    """Images and instance masks of a COCO JSON.

    Each image's `file_name` is looked up under `images` (default: the JSON's folder).
    Segmentations may be polygons, uncompressed or compressed RLE (decoded by pycocotools).
    Crowd annotations (`iscrowd: 1`) are not objects: as in COCO's evaluation they mark
    regions to ignore, returned as the sample's `ignore` mask. With skip_empty (the
    default) images without a non-crowd annotation are left out.

    ds[i] -> ImageSample: image (H, W, 3), masks (K, H, W) in annotation order, object_ids
    the annotation ids. The JSON is read once here; images are decoded per call.
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        images: str | os.PathLike | None = None,
        *,
        skip_empty: bool = True,
    ) -> None:
        self.path = Path(annotations)
        data = read_json(self.path)
        if not is_coco(data):
            raise ValueError(
                f"{self.path}: not a COCO file (needs top-level 'images' and 'annotations' lists)"
            )
        self.root = self.path.parent if images is None else Path(images)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: images folder not found")
        by_image: dict[Any, list[dict]] = defaultdict(list)
        known = {im.get("id") for im in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") not in known:
                raise ValueError(
                    f"{self.path}: annotation {ann.get('id')} refers to image "
                    f"{ann.get('image_id')}, which is not in 'images'"
                )
            by_image[ann["image_id"]].append(ann)
        self._images: list[dict] = []
        self._anns: list[list[dict]] = []
        for im in data["images"]:
            anns = by_image.get(im["id"], [])
            if skip_empty and not any(not a.get("iscrowd", 0) for a in anns):
                continue
            if "file_name" not in im:
                raise ValueError(f"{self.path}: image {im['id']} has no 'file_name'")
            self._images.append(im)
            self._anns.append(anns)
        if not self._images:
            what = "images with annotations" if skip_empty else "images"
            raise ValueError(f"{self.path}: empty dataset, no {what}")
        first = self.root / self._images[0]["file_name"]
        if not first.is_file():
            hint = "" if images is not None else " (pass images=DIR if they are elsewhere)"
            raise FileNotFoundError(f"{first}: image of {self.path} not found{hint}")

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, i: int) -> Path:
        """Path of image i."""
        return self.root / self._images[i]["file_name"]

    def _load(self, i: int) -> ImageSample:
        record, path = self._images[i], self.image_path(i)
        image = read_rgb(path)
        h, w = image.shape[:2]
        want = (record.get("height", h), record.get("width", w))
        if want != (h, w):
            raise ValueError(
                f"{path}: image is {h}x{w} (HxW) but {self.path} gives {want[0]}x{want[1]}"
            )
        masks, ids = [], []
        ignore = np.zeros((h, w), bool)
        for ann in self._anns[i]:
            where = f"{self.path}: annotation {ann.get('id')} of {path.name}"
            if "segmentation" not in ann:
                raise ValueError(f"{where}: no 'segmentation'")
            m = decode_segmentation(ann["segmentation"], h, w, where)
            if ann.get("iscrowd", 0):
                ignore |= m
            else:
                masks.append(m)
                ids.append(ann.get("id", len(ids)))
        return ImageSample(
            image=image,
            masks=np.stack(masks) if masks else np.zeros((0, h, w), bool),
            object_ids=np.asarray(ids, np.int64),
            ignore=ignore,
            name=str(path),
        )
