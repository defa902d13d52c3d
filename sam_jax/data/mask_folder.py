"""A folder with `images/` and `masks/` (one instance-id PNG per image) as an image dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.data._files import check_hw, list_images, read_ids, read_rgb
from sam_jax.data.dataset import ImageDataset
from sam_jax.data.sample import ImageSample


class MaskFolderDataset(ImageDataset):
    """`root/images/<stem>.<jpg|png|...>` with `root/masks/<stem>.png`: each mask PNG holds
    one object id per pixel (palette index or 8/16-bit grey value), 0 = background.

    ds[i] -> ImageSample: image (H, W, 3), masks (K, H, W) with one mask per id present,
    object_ids those ids in increasing order. Every image must have its mask (checked here);
    masks without an image are not read. With `void` set (e.g. 255 for Pascal VOC), pixels of
    that value are no object but the sample's `ignore` mask.
    """

    def __init__(self, root: str | os.PathLike, *, void: int | None = None) -> None:
        self.root = Path(root)
        self.void = void
        images, masks = self.root / "images", self.root / "masks"
        for d in (images, masks):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: folder not found (expected images/ and masks/)")
        self._images = list_images(images)
        if not self._images:
            raise ValueError(f"{images}: empty dataset, no images")
        self._masks = [masks / f"{p.stem}.png" for p in self._images]
        missing = [m for m in self._masks if not m.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]}: mask not found ({len(missing)} of {len(self._images)} "
                f"images in {images} have no <stem>.png in {masks})"
            )

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, i: int) -> Path:
        """Path of image i."""
        return self._images[i]

    def _load(self, i: int) -> ImageSample:
        image = read_rgb(self._images[i])
        ids_map = read_ids(self._masks[i])
        check_hw(self._masks[i], ids_map.shape, self._images[i], image.shape[:2])
        ids = np.unique(ids_map)
        ids = ids[(ids != 0) & (ids != (-1 if self.void is None else self.void))]
        return ImageSample(
            image=image,
            masks=ids_map[None] == ids[:, None, None],
            object_ids=ids,
            ignore=None if self.void is None else ids_map == self.void,
            name=str(self._images[i]),
        )
