"""Video frame sources for the video predictor: random access to RGB uint8 frames.

`open_frames(source)` accepts
* a (T, H, W, 3) uint8 array (or a list of (H, W, 3) arrays) - used as is, not copied;
* a folder of JPEG/PNG images - sorted by the number in their names (else by name),
  decoded on demand with Pillow;
* a video file - decoded on demand with OpenCV (`cv2`), `imageio` (v3) or PyAV (`av`),
  whichever is installed (none of them is a dependency of sam-jax; without any, a clear
  ImportError says what to install).

Sources decode lazily, so a long video is never held in memory at once (a small cache
keeps the last few frames).
"""

from __future__ import annotations

import abc
import collections
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


class FrameSource(abc.ABC):
    """Random access to frames: len(src), src[i] -> (H, W, 3) uint8, src.hw."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> np.ndarray: ...

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self[0].shape[:2])

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing open
        """Release what the source holds open (a decoder); a no-op by default."""


def _check_frame(frame: Any, where: str) -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ValueError(f"{where}: frames must be uint8 RGB, got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{where}: frames must be (H, W, 3) RGB, got shape {a.shape}")
    return a[..., :3]


class ArrayFrames(FrameSource):
    """Frames of a (T, H, W, 3) uint8 array or a sequence of (H, W, 3) arrays."""

    def __init__(self, frames: Any) -> None:
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(
                    f"frames must be a (T, H, W, 3) uint8 RGB array; got {frames.shape} {frames.dtype}"
                )
        elif not isinstance(frames, Sequence):
            raise ValueError(f"unsupported frames of type {type(frames).__name__}")
        if len(frames) == 0:
            raise ValueError("the video has no frames")
        self._frames = frames
        shape = _check_frame(frames[0], "frame 0").shape
        self._hw = shape[:2]

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, i: int) -> np.ndarray:
        f = _check_frame(self._frames[i], f"frame {i}")
        if f.shape[:2] != self._hw:
            raise ValueError(f"frame {i} is {f.shape[:2]}, frame 0 is {self._hw}: sizes differ")
        return f

    @property
    def hw(self) -> tuple[int, int]:
        return self._hw


def _natural_key(name: str) -> tuple:
    nums = re.findall(r"\d+", Path(name).stem)
    return (0, int(nums[-1]), name) if nums else (1, 0, name)


class _Cached(FrameSource):
    def __init__(self, size: int = 4) -> None:
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._size = size

    @abc.abstractmethod
    def _load(self, i: int) -> np.ndarray:
        """Decode frame i (bounds already checked)."""

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} outside [0, {len(self)})")
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        f = _check_frame(self._load(i), f"frame {i}")
        self._cache[i] = f
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return f


class FolderFrames(_Cached):
    """JPEG/PNG files of a folder, in natural order of the numbers in their names."""

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__()
        folder = Path(folder)
        names = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not names:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self._paths = [folder / n for n in sorted(names, key=_natural_key)]
        self._hw = self[0].shape[:2]

    def __len__(self) -> int:
        return len(self._paths)

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self._paths[i]) as im:
            f = np.asarray(im.convert("RGB"))
        if hasattr(self, "_hw") and f.shape[:2] != self._hw:
            raise ValueError(f"{self._paths[i].name} is {f.shape[:2]}, the first frame {self._hw}")
        return f

    @property
    def hw(self) -> tuple[int, int]:
        return self._hw


class VideoFileFrames(_Cached):
    """Frames of a video file, decoded sequentially on demand (seeking back re-opens)."""

    def __init__(self, path: str | os.PathLike, backend: str | None = None) -> None:
        super().__init__(size=8)
        self._path = str(path)
        self._backend = backend or _pick_backend()
        self._reader = None
        self._next = 0
        self._n = self._count()
        if self._n == 0:
            raise ValueError(f"could not read any frame from {self._path}")
        self._hw = self[0].shape[:2]

    def _open(self) -> None:
        self.close()
        if self._backend == "cv2":
            import cv2

            self._reader = cv2.VideoCapture(self._path)
            if not self._reader.isOpened():
                raise ValueError(f"OpenCV cannot open {self._path}")
        elif self._backend == "imageio":
            import imageio.v3 as iio

            self._reader = iter(iio.imiter(self._path))
        else:
            import av

            self._container = av.open(self._path)
            self._reader = (f.to_ndarray(format="rgb24") for f in self._container.decode(video=0))
        self._next = 0

    def _read_one(self) -> np.ndarray | None:
        if self._backend == "cv2":
            ok, bgr = self._reader.read()
            return bgr[..., ::-1].copy() if ok else None
        return next(self._reader, None)

    def _count(self) -> int:
        self._open()
        n = 0
        while self._read_one() is not None:
            n += 1
        self._open()
        return n

    def __len__(self) -> int:
        return self._n

    def _load(self, i: int) -> np.ndarray:
        if self._reader is None or i < self._next:
            self._open()
        while self._next <= i:
            f = self._read_one()
            if f is None:
                raise IndexError(f"{self._path}: frame {i} could not be decoded")
            self._next += 1
            if self._next - 1 != i:
                continue
            return np.asarray(f)[..., :3]
        raise IndexError(i)

    def close(self) -> None:
        if self._reader is not None and self._backend == "cv2":
            self._reader.release()
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None
        self._reader = None

    @property
    def hw(self) -> tuple[int, int]:
        return self._hw


def _pick_backend() -> str:
    for name in ("cv2", "imageio", "av"):
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    raise ImportError(
        "reading a video file needs one of OpenCV (pip install opencv-python-headless), "
        "imageio (pip install imageio[pyav]) or PyAV (pip install av); alternatively pass "
        "a (T, H, W, 3) uint8 array or a folder of JPEG/PNG frames"
    )


def open_frames(source: Any) -> FrameSource:
    """A FrameSource for an array, a list of frames, a folder of images or a video file."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            return FolderFrames(p)
        if p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                return ArrayFrames([_check_frame(_load_path(p), str(p))])
            return VideoFileFrames(p)
        raise FileNotFoundError(f"no such file or folder: {p}")
    return ArrayFrames(source)


def _load_path(p: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))
