"""Per-frame tracking history of a video session: RAM, disk and (for streams) ring stores.

For every object (an integer key) and every frame it was tracked on as a non-conditioning
frame, the history holds the frame's spatial memory (g, g, mem_dim), low-resolution logits
(k, k) with k <= m (m = 4g from the SAM heads; a SAM 3 mask prompt's output is S/4 < 4g
wide), object pointer (ptr_dim,) and object score, so that propagation can resume, or be
re-run, from any frame. The video stores keep pointers and scores in RAM (a few hundred bytes
per frame); they differ in where the two large arrays live:

* `RamHistory`: in numpy arrays in the process;
* `DiskHistory`: in two files per object of fixed-size float32 records (frame f at offset
  f * record size), written and read with pwrite/pread, never mapped into the process, so a
  long video's history does not grow the process memory. The files live in a fresh
  temporary folder; `remove()`/`clear()` delete the objects' files, and the folder goes
  with `close()` or, at the latest, when the store is garbage-collected or the
  interpreter exits.

`make_history` picks the store: "ram", "disk", or "auto" (disk once one object's full
history would exceed `ram_limit` bytes).

`sam_jax.predictors.ring_history.RingHistory` is the store of streams.
"""

from __future__ import annotations

import abc
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np

HISTORY_KINDS = ("auto", "ram", "disk")


@dataclass
class _Pointers:
    """One object's per-frame pointers, scores and presence flags (always in RAM)."""

    ptr: np.ndarray  # (T, ptr_dim) float32
    score: np.ndarray  # (T,) float32
    has: np.ndarray  # (T,) bool

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.score.nbytes + self.has.nbytes


class FrameHistory(abc.ABC):
    """Non-conditioning outputs of tracked frames, per object key and frame index.

    put(key, f, maskmem, low_res, ptr, score) stores or overwrites frame f's entry; has
    says whether it exists (between `put` and `drop`/`remove`/`clear`); reads return
    float32 arrays: maskmem (g, g, mem_dim), low_res (k, k) as put (k <= m; stored in an
    (m, m) record, so what a store holds does not depend on k), ptr (ptr_dim,), and
    score a float. Reading a missing entry is an error of the caller (check `has` first). drop
    forgets one entry, remove every entry of an object (both no-ops where there is none);
    keys lists the objects holding entries; ram_bytes counts the bytes held in the
    process's memory.
    """

    backend: str  # "ram", "disk" or "ring"

    def __init__(self, grid: int, mask_size: int, mem_dim: int, ptr_dim: int) -> None:
        self.grid, self.mask_size, self.mem_dim, self.ptr_dim = grid, mask_size, mem_dim, ptr_dim

    @abc.abstractmethod
    def put(
        self,
        key: int,
        f: int,
        maskmem: np.ndarray,
        low_res: np.ndarray,
        ptr: np.ndarray,
        score: float | np.ndarray,
    ) -> None: ...

    @abc.abstractmethod
    def has(self, key: int, f: int) -> bool: ...

    @abc.abstractmethod
    def drop(self, key: int, f: int) -> None: ...

    @abc.abstractmethod
    def maskmem(self, key: int, f: int) -> np.ndarray: ...

    @abc.abstractmethod
    def low_res(self, key: int, f: int) -> np.ndarray: ...

    @abc.abstractmethod
    def ptr(self, key: int, f: int) -> np.ndarray: ...

    @abc.abstractmethod
    def score(self, key: int, f: int) -> float: ...

    @abc.abstractmethod
    def keys(self) -> list[int]: ...

    @abc.abstractmethod
    def remove(self, key: int) -> None: ...

    @abc.abstractmethod
    def ram_bytes(self) -> int: ...

    def _low_record(self, low_res: np.ndarray) -> tuple[np.ndarray, int]:
        """(k, k) logits -> ((m, m) float32 record with them top-left, zeros elsewhere, k).
        ValueError unless square with k <= m."""
        a = np.asarray(low_res, np.float32)
        k, m = a.shape[-1], self.mask_size
        if a.shape != (k, k) or k > m:
            raise ValueError(f"low_res must be (k, k) with k <= {m}, got {a.shape}")
        if k == m:
            return np.ascontiguousarray(a), k
        record = np.zeros((m, m), np.float32)
        record[:k, :k] = a
        return record, k

    def clear(self) -> None:
        """Forget every entry of every object."""
        for key in self.keys():
            self.remove(key)

    def close(self) -> None:
        """Forget everything and release the store's resources; the store is unusable
        afterwards."""
        self.clear()


class _VideoHistory(FrameHistory):
    """A store for a video of `num_frames` frames: pointers, scores and presence flags of
    every frame in RAM; the spatial memories and logits where the subclass keeps them."""

    def __init__(
        self, num_frames: int, grid: int, mask_size: int, mem_dim: int, ptr_dim: int
    ) -> None:
        super().__init__(grid, mask_size, mem_dim, ptr_dim)
        self.num_frames = num_frames
        self._pointers: dict[int, _Pointers] = {}
        self._small: dict[int, dict[int, int]] = {}  # key -> frame -> k where k < m (rare)

    # -- what each store implements: the spatial memories and logits
    @abc.abstractmethod
    def _write(self, key: int, f: int, maskmem: np.ndarray, low_res: np.ndarray) -> None:
        """Store frame f's maskmem (g, g, mem_dim) and (m, m) logits record."""

    @abc.abstractmethod
    def _read_low(self, key: int, f: int) -> np.ndarray:
        """Frame f's (m, m) logits record."""

    @abc.abstractmethod
    def _forget(self, key: int, f: int) -> None:
        """Called by `drop`; frees what a frame holds, if the store can."""

    @abc.abstractmethod
    def _release(self, key: int) -> None:
        """Called by `remove` for an object that had entries: frees all it holds."""

    @abc.abstractmethod
    def _payload_ram_bytes(self) -> int: ...

    # -- shared bookkeeping
    def put(
        self,
        key: int,
        f: int,
        maskmem: np.ndarray,
        low_res: np.ndarray,
        ptr: np.ndarray,
        score: float | np.ndarray,
    ) -> None:
        if key not in self._pointers:
            t = self.num_frames
            self._pointers[key] = _Pointers(
                ptr=np.zeros((t, self.ptr_dim), np.float32),
                score=np.zeros((t,), np.float32),
                has=np.zeros((t,), bool),
            )
        record, k = self._low_record(low_res)
        p = self._pointers[key]
        p.ptr[f], p.score[f], p.has[f] = ptr, score, True
        small = self._small.setdefault(key, {})
        if k < self.mask_size:
            small[f] = k
        else:
            small.pop(f, None)
        self._write(key, f, np.ascontiguousarray(maskmem, np.float32), record)

    def has(self, key: int, f: int) -> bool:
        """Whether frame f holds an entry for object `key` (False outside the video)."""
        p = self._pointers.get(key)
        return p is not None and 0 <= f < self.num_frames and bool(p.has[f])

    def drop(self, key: int, f: int) -> None:
        if key in self._pointers:
            self._pointers[key].has[f] = False
            self._small.get(key, {}).pop(f, None)
            self._forget(key, f)

    def low_res(self, key: int, f: int) -> np.ndarray:
        k = self._small.get(key, {}).get(f, self.mask_size)
        return self._read_low(key, f)[:k, :k]

    def ptr(self, key: int, f: int) -> np.ndarray:
        return self._pointers[key].ptr[f]

    def score(self, key: int, f: int) -> float:
        return float(self._pointers[key].score[f])

    def keys(self) -> list[int]:
        return list(self._pointers)

    def remove(self, key: int) -> None:
        self._small.pop(key, None)
        if self._pointers.pop(key, None) is not None:
            self._release(key)

    def ram_bytes(self) -> int:
        return sum(p.nbytes for p in self._pointers.values()) + self._payload_ram_bytes()


class RamHistory(_VideoHistory):
    """Every array in process memory (copies of what was put)."""

    backend = "ram"

    def __init__(
        self, num_frames: int, grid: int, mask_size: int, mem_dim: int, ptr_dim: int
    ) -> None:
        super().__init__(num_frames, grid, mask_size, mem_dim, ptr_dim)
        self._mem: dict[int, dict[int, np.ndarray]] = {}
        self._low: dict[int, dict[int, np.ndarray]] = {}

    def _write(self, key: int, f: int, maskmem: np.ndarray, low_res: np.ndarray) -> None:
        self._mem.setdefault(key, {})[f] = maskmem.copy()
        self._low.setdefault(key, {})[f] = low_res.copy()

    def _forget(self, key: int, f: int) -> None:
        self._mem.get(key, {}).pop(f, None)
        self._low.get(key, {}).pop(f, None)

    def _release(self, key: int) -> None:
        self._mem.pop(key, None)
        self._low.pop(key, None)

    def _payload_ram_bytes(self) -> int:
        return sum(
            a.nbytes for store in (self._mem, self._low) for d in store.values() for a in d.values()
        )

    def maskmem(self, key: int, f: int) -> np.ndarray:
        return self._mem[key][f]

    def _read_low(self, key: int, f: int) -> np.ndarray:
        return self._low[key][f]


def _remove_files(directory: str, fds: dict[int, tuple[int, int]]) -> None:
    """Close every open record file and delete the folder (run once, by the finalizer)."""
    for pair in fds.values():
        for fd in pair:
            os.close(fd)
    fds.clear()
    shutil.rmtree(directory, ignore_errors=True)


class DiskHistory(_VideoHistory):
    """Spatial memories and logits in per-object record files under a fresh temporary
    folder inside `directory` (the system's temp folder if None); files are created with
    mode 0o600."""

    backend = "disk"

    def __init__(
        self,
        num_frames: int,
        grid: int,
        mask_size: int,
        mem_dim: int,
        ptr_dim: int,
        directory: str | None = None,
    ) -> None:
        super().__init__(num_frames, grid, mask_size, mem_dim, ptr_dim)
        self.directory = tempfile.mkdtemp(prefix="sam_jax_video_", dir=directory)
        self._fds: dict[int, tuple[int, int]] = {}  # key -> (maskmem fd, logits fd)
        # the finalizer holds the folder and the fds, never self, so it can run at collection
        self._finalizer = weakref.finalize(self, _remove_files, self.directory, self._fds)

    def _paths(self, key: int) -> tuple[str, str]:
        base = os.path.join(self.directory, str(key))
        return base + ".mem", base + ".low"

    def _files(self, key: int) -> tuple[int, int]:
        if key not in self._fds:
            flags = os.O_RDWR | os.O_CREAT
            mem_path, low_path = self._paths(key)
            self._fds[key] = (os.open(mem_path, flags, 0o600), os.open(low_path, flags, 0o600))
        return self._fds[key]

    def _write(self, key: int, f: int, maskmem: np.ndarray, low_res: np.ndarray) -> None:
        fd_mem, fd_low = self._files(key)
        os.pwrite(fd_mem, maskmem.tobytes(), f * maskmem.nbytes)
        os.pwrite(fd_low, low_res.tobytes(), f * low_res.nbytes)

    def _forget(self, key: int, f: int) -> None:
        pass  # the record stays in the file until overwritten or the object is removed

    def _release(self, key: int) -> None:
        for fd in self._fds.pop(key, ()):
            os.close(fd)
        for path in self._paths(key):
            if os.path.exists(path):
                os.remove(path)

    def _payload_ram_bytes(self) -> int:
        return 0

    @staticmethod
    def _read(fd: int, f: int, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * 4
        return np.frombuffer(os.pread(fd, n, f * n), np.float32).reshape(shape)

    def maskmem(self, key: int, f: int) -> np.ndarray:
        return self._read(self._fds[key][0], f, (self.grid, self.grid, self.mem_dim))

    def _read_low(self, key: int, f: int) -> np.ndarray:
        return self._read(self._fds[key][1], f, (self.mask_size, self.mask_size))

    def close(self) -> None:
        self.clear()
        self._finalizer()


def make_history(
    kind: str,
    num_frames: int,
    grid: int,
    mask_size: int,
    mem_dim: int,
    ptr_dim: int,
    *,
    ram_limit: int,
    directory: str | None = None,
) -> FrameHistory:
    """The history store for a video of `num_frames` frames.

    kind: "ram", "disk", or "auto": disk when one object's full history (spatial memory
    and logits of every frame, float32) would exceed `ram_limit` bytes, RAM otherwise.
    directory: parent folder of a disk store's temporary folder.
    """
    if kind not in HISTORY_KINDS:
        raise ValueError(f"history must be 'auto', 'ram' or 'disk', got {kind!r}")
    if kind == "auto":
        per_frame = 4 * (grid * grid * mem_dim + mask_size * mask_size)
        kind = "disk" if num_frames * per_frame > ram_limit else "ram"
    if kind == "disk":
        return DiskHistory(num_frames, grid, mask_size, mem_dim, ptr_dim, directory)
    return RamHistory(num_frames, grid, mask_size, mem_dim, ptr_dim)
