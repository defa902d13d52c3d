"""`open_dataset`: the reader for whatever dataset layout is on disk at a path."""

from __future__ import annotations

import os
from pathlib import Path

from sam_jax.data.coco import CocoDataset, is_coco, read_json
from sam_jax.data.dataset import ImageDataset, VideoDataset
from sam_jax.data.mask_folder import MaskFolderDataset
from sam_jax.data.sa1b import Sa1bDataset, sa1b_pairs
from sam_jax.data.video_folder import VideoFolderDataset

LAYOUTS = """\
  COCO:        a COCO JSON file with 'images' and 'annotations' (images next to it or in images=DIR),
               or a folder holding exactly one such JSON
  SA-1B:       a folder of <name>.jpg images each with a <name>.json of RLE annotations beside it
  mask folder: a folder with images/ and masks/ (one instance-id PNG per image, same stem)
  DAVIS/MOSE:  a folder with JPEGImages/<video>/*.jpg and Annotations/<video>/*.png"""


def _no_layout(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}; the dataset layouts read are:\n{LAYOUTS}")


def open_dataset(
    path: str | os.PathLike, images: str | os.PathLike | None = None
) -> ImageDataset | VideoDataset:
    """The dataset at `path`, its layout detected from what is on disk.

    A `.json` file is a COCO file (`images` names its images folder). A folder is, checked in
    this order: DAVIS / MOSE (JPEGImages/ and Annotations/), a mask folder (images/ and
    masks/), SA-1B (JSONs beside images of the same stem), COCO (exactly one COCO JSON in
    it). Raises FileNotFoundError for a missing path and a ValueError listing the layouts
    when none matches.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise _no_layout(path, "a file that is not a COCO .json")
        return CocoDataset(path, images)
    if (path / "JPEGImages").is_dir() and (path / "Annotations").is_dir():
        layout = VideoFolderDataset
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        layout = MaskFolderDataset
    elif sa1b_pairs(path):
        layout = Sa1bDataset
    else:
        jsons = sorted(path.glob("*.json"))
        cocos = [j for j in jsons if is_coco(read_json(j))] if len(jsons) <= 8 else []
        if len(cocos) == 1:
            return CocoDataset(cocos[0], images)
        why = "several COCO JSONs, name one" if cocos else "no dataset layout found"
        raise _no_layout(path, why)
    if images is not None:
        raise ValueError(f"{path}: images= applies to a COCO JSON only, not to {layout.__name__}")
    return layout(path)
