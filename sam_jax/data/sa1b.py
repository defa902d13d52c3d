"""An SA-1B style folder: `<stem>.jpg` with `<stem>.json` beside it, as an image dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.data._files import IMAGE_SUFFIXES, natural_key, read_rgb
from sam_jax.data.coco import read_json
from sam_jax.data.dataset import ImageDataset
from sam_jax.data.rle import decode_segmentation
from sam_jax.data.sample import ImageSample


def sa1b_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, json) pairs of a folder: every JSON whose stem is also an image's stem."""
    images = {}
    jsons = []
    for n in os.listdir(folder):
        p = folder / n
        if n.lower().endswith(IMAGE_SUFFIXES):
            images[p.stem] = p
        elif n.lower().endswith(".json"):
            jsons.append(p)
    jsons.sort(key=lambda p: natural_key(p.name))
    return [(images[j.stem], j) for j in jsons if j.stem in images]


class Sa1bDataset(ImageDataset):
    """SA-1B's layout: per image a JSON `{"image": {...}, "annotations": [{"id", "segmentation":
    RLE, ...}]}` beside the JPEG of the same stem. All annotations are objects (SA-1B has
    no crowd regions).

    ds[i] -> ImageSample: image (H, W, 3), masks (K, H, W) in annotation order, object_ids
    the annotation ids. JSONs and images are read per call.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: folder not found")
        self._pairs = sa1b_pairs(self.folder)
        if not self._pairs:
            raise ValueError(
                f"{self.folder}: empty dataset, no <name>.json beside an image <name>.jpg"
            )

    def __len__(self) -> int:
        return len(self._pairs)

    def image_path(self, i: int) -> Path:
        """Path of image i."""
        return self._pairs[i][0]

    def _load(self, i: int) -> ImageSample:
        image_path, json_path = self._pairs[i]
        data = read_json(json_path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{json_path}: not an SA-1B annotation file (no 'annotations' list)")
        image = read_rgb(image_path)
        h, w = image.shape[:2]
        masks, ids = [], []
        for k, ann in enumerate(data["annotations"]):
            where = f"{json_path}: annotation {ann.get('id', k)} (image {image_path.name})"
            if "segmentation" not in ann:
                raise ValueError(f"{where}: no 'segmentation'")
            masks.append(decode_segmentation(ann["segmentation"], h, w, where))
            ids.append(ann.get("id", k))
        return ImageSample(
            image=image,
            masks=np.stack(masks) if masks else np.zeros((0, h, w), bool),
            object_ids=np.asarray(ids, np.int64),
            name=str(image_path),
        )
