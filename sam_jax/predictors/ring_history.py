"""`RingHistory`: the tracking history of a stream of unknown length, per object fixed-size
arrays of the last `capacity` frames (frame f in slot f % capacity), so what it holds never
grows with the number of frames."""

from __future__ import annotations

import numpy as np

from sam_jax.predictors.history import FrameHistory


class RingHistory(FrameHistory):
    """The last `capacity` frames of each object, in arrays allocated on the object's first
    `put`: frame f lives in slot f % capacity, so writing frame f forgets frame
    f - capacity. For streams: frame indices have no upper bound and the bytes held
    depend only on the number of objects. Reading a frame not held raises KeyError."""

    backend = "ring"

    def __init__(
        self, capacity: int, grid: int, mask_size: int, mem_dim: int, ptr_dim: int
    ) -> None:
        super().__init__(grid, mask_size, mem_dim, ptr_dim)
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._frames: dict[int, np.ndarray] = {}  # key -> (capacity,) frame per slot, -1 none
        self._data: dict[int, dict[str, np.ndarray]] = {}  # key -> name -> (capacity, ...)

    def put(
        self,
        key: int,
        f: int,
        maskmem: np.ndarray,
        low_res: np.ndarray,
        ptr: np.ndarray,
        score: float | np.ndarray,
    ) -> None:
        c, g, m = self.capacity, self.grid, self.mask_size
        if key not in self._data:
            self._frames[key] = np.full((c,), -1, np.int64)
            self._data[key] = {
                "maskmem": np.zeros((c, g, g, self.mem_dim), np.float32),
                "low_res": np.zeros((c, m, m), np.float32),
                "low_size": np.zeros((c,), np.int32),  # k of the (k, k) logits put
                "ptr": np.zeros((c, self.ptr_dim), np.float32),
                "score": np.zeros((c,), np.float32),
            }
        record, k = self._low_record(low_res)
        s, data = f % c, self._data[key]
        self._frames[key][s] = f
        data["maskmem"][s], data["low_res"][s], data["low_size"][s] = maskmem, record, k
        data["ptr"][s], data["score"][s] = ptr, score

    def has(self, key: int, f: int) -> bool:
        frames = self._frames.get(key)
        return frames is not None and f >= 0 and int(frames[f % self.capacity]) == f

    def drop(self, key: int, f: int) -> None:
        if self.has(key, f):
            self._frames[key][f % self.capacity] = -1

    def _read(self, key: int, f: int, name: str) -> np.ndarray:
        if not self.has(key, f):  # overwritten by a later frame: its slot holds another
            raise KeyError(f"frame {f} of object key {key} is not held")
        return self._data[key][name][f % self.capacity]

    def maskmem(self, key: int, f: int) -> np.ndarray:
        return self._read(key, f, "maskmem")

    def low_res(self, key: int, f: int) -> np.ndarray:
        k = int(self._read(key, f, "low_size"))
        return self._read(key, f, "low_res")[:k, :k]

    def ptr(self, key: int, f: int) -> np.ndarray:
        return self._read(key, f, "ptr")

    def score(self, key: int, f: int) -> float:
        return float(self._read(key, f, "score"))

    def keys(self) -> list[int]:
        return list(self._data)

    def remove(self, key: int) -> None:
        self._frames.pop(key, None)
        self._data.pop(key, None)

    def ram_bytes(self) -> int:
        arrays = [a for d in self._data.values() for a in d.values()]
        return sum(a.nbytes for a in [*arrays, *self._frames.values()])
