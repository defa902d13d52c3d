"""Datasets for fine-tuning: readers of common segmentation layouts, and mask utilities.

    from sam_jax.data import open_dataset, letterbox_mask, sample_objects
    ds = open_dataset("instances.json", images="train2017/")   # or a folder; layout detected
    sample = ds[0]              # ImageSample: image (H, W, 3) uint8, masks (K, H, W) bool
    masks, valid = sample_objects(sample.masks, 8, np.random.default_rng(0))
    masks = letterbox_mask(masks, 1024)                          # (8, 1024, 1024)

Readers: `CocoDataset` (COCO JSON), `Sa1bDataset` (SA-1B folders), `MaskFolderDataset`
(images/ + masks/ instance PNGs), `VideoFolderDataset` (DAVIS / MOSE). COCO and SA-1B masks
need pycocotools: pip install 'sam-jax[data]'.

Training input: `Augment` with `augment_image` / `augment_clip` (flip, scale and colour
jitter of an image or a whole clip with its masks), and the grain loaders `image_loader` /
`clip_loader` (endless, shuffled, host-sharded, resumable batches): pip install
'sam-jax[train]'.
"""

from sam_jax.data.augment import NO_AUGMENT, Augment, augment_clip, augment_image
from sam_jax.data.coco import CocoDataset
from sam_jax.data.dataset import ImageDataset, VideoDataset
from sam_jax.data.detect import open_dataset
from sam_jax.data.letterbox import letterbox_mask
from sam_jax.data.loader import clip_loader, image_loader, images_at
from sam_jax.data.mask_folder import MaskFolderDataset
from sam_jax.data.objects import sample_object_indices, sample_objects
from sam_jax.data.sa1b import Sa1bDataset
from sam_jax.data.sample import ImageSample, VideoSample
from sam_jax.data.video_folder import VideoFolderDataset

__all__ = [
    "NO_AUGMENT",
    "Augment",
    "CocoDataset",
    "ImageDataset",
    "ImageSample",
    "MaskFolderDataset",
    "Sa1bDataset",
    "VideoDataset",
    "VideoFolderDataset",
    "VideoSample",
    "augment_clip",
    "augment_image",
    "clip_loader",
    "image_loader",
    "images_at",
    "letterbox_mask",
    "open_dataset",
    "sample_object_indices",
    "sample_objects",
]
