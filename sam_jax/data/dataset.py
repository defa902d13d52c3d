"""The random-access dataset interface every reader implements.

A dataset indexes what is on disk when it is built (file names, JSON annotations) and
decodes an image or a clip only when it is asked for one, so building it is cheap and
`ds[i]` can be called from any worker in any order.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

from sam_jax.data.sample import ImageSample, VideoSample


def _index(i: int, n: int, owner: object) -> int:
    i = int(i)
    if not -n <= i < n:
        raise IndexError(f"{type(owner).__name__}: index {i} out of range for {n} items")
    return i % n


class ImageDataset(abc.ABC):
    """len(ds) images; ds[i] -> ImageSample, decoded from disk on each call."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def _load(self, i: int) -> ImageSample: ...

    def __getitem__(self, i: int) -> ImageSample:
        return self._load(_index(i, len(self), self))

    def __iter__(self) -> Iterator[ImageSample]:
        return (self[i] for i in range(len(self)))


class VideoDataset(abc.ABC):
    """len(ds) videos; ds[i] -> the whole video as a VideoSample, ds.clip(i, frames) -> some
    of its frames (only those are decoded)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def num_frames(self, i: int) -> int:
        """Number of frames of video i."""

    @abc.abstractmethod
    def _load(self, i: int, frames: list[int]) -> VideoSample: ...

    def clip(self, i: int, frames: list[int] | range) -> VideoSample:
        """Video i restricted to the given frame indices, in that order: (T', ...) arrays."""
        i = _index(i, len(self), self)
        n = self.num_frames(i)
        idx = [_index(f, n, self) for f in frames]
        if not idx:
            raise ValueError(f"{type(self).__name__}: a clip needs at least one frame")
        return self._load(i, idx)

    def __getitem__(self, i: int) -> VideoSample:
        i = _index(i, len(self), self)
        return self._load(i, list(range(self.num_frames(i))))

    def __iter__(self) -> Iterator[VideoSample]:
        return (self[i] for i in range(len(self)))
