"""The DAVIS / MOSE / YouTube-VOS video layout as a video dataset.

    root/JPEGImages/<video>/<frame>.jpg
    root/Annotations/<video>/<frame>.png   palette PNG: index = object id, 0 = background,
                                           255 = void (not an object; the `ignore` mask)

DAVIS's `JPEGImages/480p/<video>` level is found by itself (or named with `resolution`).
A frame without an annotation PNG of its stem is returned with `annotated` False, no
object in it and all its pixels in `ignore` (nothing is known there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam_jax.data._files import check_hw, list_images, natural_key, read_ids, read_rgb
from sam_jax.data.dataset import VideoDataset
from sam_jax.data.sample import VideoSample


def video_roots(root: Path, resolution: str | None) -> tuple[Path, Path]:
    """(frames folder, annotations folder) holding one subfolder per video."""
    frames, anns = root / "JPEGImages", root / "Annotations"
    if resolution is None and (frames / "480p").is_dir() and (anns / "480p").is_dir():
        resolution = "480p"
    if resolution is not None:
        frames, anns = frames / resolution, anns / resolution
    for d in (frames, anns):
        if not d.is_dir():
            raise FileNotFoundError(
                f"{d}: folder not found (expected JPEGImages/ and Annotations/)"
            )
    return frames, anns


class VideoFolderDataset(VideoDataset):
    """One video per subfolder of JPEGImages/, its masks in the same subfolder of
    Annotations/.

    ds[i] -> VideoSample of the whole video; ds.clip(i, frames) decodes only those frames.
    A sample's objects are the ids found in its annotated frames (sorted): masks (T, K, H, W)
    with object k all False in the frames where it is absent. Frames are ordered by the
    numbers in their names.
    """

    def __init__(
        self, root: str | os.PathLike, *, resolution: str | None = None, void: int | None = 255
    ) -> None:
        self.root = Path(root)
        self.void = void
        frames_dir, anns_dir = video_roots(self.root, resolution)
        names = sorted((d.name for d in os.scandir(frames_dir) if d.is_dir()), key=natural_key)
        self._videos: list[str] = []
        self._frames: list[list[Path]] = []
        self._anns: list[list[Path | None]] = []
        for name in names:
            frames = list_images(frames_dir / name)
            if not frames:
                continue
            ann_dir = anns_dir / name
            pngs = {p.stem: p for p in ann_dir.glob("*.png")} if ann_dir.is_dir() else {}
            anns = [pngs.get(f.stem) for f in frames]
            if not any(a is not None for a in anns):
                raise FileNotFoundError(
                    f"{ann_dir}: no annotation <frame>.png for any frame of video {name} "
                    f"({frames[0].name} ...)"
                )
            self._videos.append(name)
            self._frames.append(frames)
            self._anns.append(anns)
        if not self._videos:
            raise ValueError(f"{frames_dir}: empty dataset, no video folder with frames")

    def __len__(self) -> int:
        return len(self._videos)

    @property
    def names(self) -> list[str]:
        """The videos' names, in dataset order."""
        return list(self._videos)

    def num_frames(self, i: int) -> int:
        return len(self._frames[i])

    def _load(self, i: int, frames: list[int]) -> VideoSample:
        images = [read_rgb(self._frames[i][t]) for t in frames]
        hw = images[0].shape[:2]
        for t, im in zip(frames, images, strict=True):
            if im.shape[:2] != hw:
                raise ValueError(
                    f"{self._frames[i][t]}: frame size {im.shape[0]}x{im.shape[1]} differs "
                    f"from {self._frames[i][frames[0]].name} ({hw[0]}x{hw[1]})"
                )
        maps = []
        for t in frames:
            path = self._anns[i][t]
            if path is None:
                maps.append(None)
                continue
            ids_map = read_ids(path)
            check_hw(path, ids_map.shape, self._frames[i][t], hw)
            maps.append(ids_map)
        annotated = np.array([m is not None for m in maps])
        present = [np.unique(m) for m in maps if m is not None]
        ids = np.unique(np.concatenate(present)) if present else np.zeros(0, np.int64)
        ids = ids[(ids > 0) & (ids != (-1 if self.void is None else self.void))]
        stacked = np.stack([np.zeros(hw, np.int64) if m is None else m for m in maps])
        ignore = ~annotated[:, None, None] & np.ones_like(stacked, bool)  # (T, H, W)
        if self.void is not None:
            ignore |= stacked == self.void
        return VideoSample(
            frames=np.stack(images),
            masks=stacked[:, None] == ids[None, :, None, None],
            object_ids=ids,
            annotated=annotated,
            ignore=ignore,
            frame_names=tuple(self._frames[i][t].stem for t in frames),
            name=self._videos[i],
        )
