"""Read PyTorch ``.pt``/``.pth`` checkpoints into numpy arrays without torch.

Checkpoints are pickles, and unpickling runs whatever callables the file names, so
``torch.load`` of an untrusted file is remote code execution. This reader accepts only
the handful of globals that ``torch.save`` writes for tensor data (see ``find_class``)
and refuses everything else *before* it could be called. It also lets the converter
run where torch is not installed.

Only the zip container (torch >= 1.6) is supported::

    <archive>/data.pkl        the pickled object; tensors refer to storages by key
    <archive>/data/<key>      raw bytes of one storage
    <archive>/byteorder       "little" or "big" (absent in old files: little)
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "read_state_dict", "read_torch_file"]

# What the legacy (pre-1.6) torch.save format starts with: the pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP_MAGIC = b"PK\x03\x04"

# dtypes numpy lacks; they come from ml_dtypes, imported only when a file needs them.
_ML_DTYPES = frozenset(
    {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}
)

# torch legacy typed storage class -> element dtype (written by _rebuild_tensor_v2).
_STORAGE_DTYPES: Mapping[str, str] = MappingProxyType(
    {
        "DoubleStorage": "float64",
        "FloatStorage": "float32",
        "HalfStorage": "float16",
        "BFloat16Storage": "bfloat16",
        "ComplexDoubleStorage": "complex128",
        "ComplexFloatStorage": "complex64",
        "LongStorage": "int64",
        "IntStorage": "int32",
        "ShortStorage": "int16",
        "CharStorage": "int8",
        "ByteStorage": "uint8",
        "BoolStorage": "bool",
    }
)

# torch dtype objects pickled by name; torch 2.x writes them (with an untyped
# storage and _rebuild_tensor_v3) for dtypes that have no legacy storage class.
_TENSOR_DTYPES = frozenset(_STORAGE_DTYPES.values()) | {"uint16", "uint32", "uint64"} | _ML_DTYPES


class CheckpointError(ValueError):
    """The file is not a checkpoint this reader can load safely."""


@dataclass(frozen=True, slots=True)
class _DType:
    """A torch dtype or storage class as seen in the pickle.

    Frozen with slots and not callable, so a hostile pickle can neither call it
    (REDUCE) nor mutate it (BUILD).
    """

    dtype: np.dtype | None  # None: untyped byte storage, typed later by the tensor


@dataclass(frozen=True, slots=True)
class _Storage:
    """Raw bytes of one ``data/<key>`` member; ``dtype`` None for untyped storages."""

    raw: np.ndarray  # uint8, 1-D
    dtype: np.dtype | None


def _numpy_dtype(name: str, path: str) -> np.dtype:
    """Resolve a dtype name, deferring the ml_dtypes import to files that need it."""
    if name not in _ML_DTYPES:
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise CheckpointError(
            f"{path} holds {name} tensors; install ml_dtypes to read them without torch"
        ) from None
    return np.dtype(getattr(ml_dtypes, name))


def _typed(storage: _Storage, dtype: np.dtype, big_endian: bool) -> np.ndarray:
    """View storage bytes as ``dtype`` elements in native (little) byte order."""
    raw = storage.raw[: storage.raw.size - storage.raw.size % dtype.itemsize]
    if not big_endian or dtype.itemsize == 1:
        return raw.view(dtype)
    # Swap per scalar component: a complex number is two floats, each swapped alone.
    part = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    return raw.view(f"u{part}").byteswap().view(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-building globals and reads storages from the zip."""

    def __init__(
        self, archive: zipfile.ZipFile, stream: Any, prefix: str, path: str, big_endian: bool
    ):
        super().__init__(stream)
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._big_endian = big_endian
        # Read each storage once: several tensors may view the same one.
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Map allowed torch globals to local stand-ins; refuse anything else.

        Bound methods are returned rather than module functions so that a BUILD
        opcode cannot set attributes (e.g. ``__defaults__``) on shared functions.
        """
        qualname = f"{module}.{name}"
        if qualname == "collections.OrderedDict":
            return OrderedDict
        if qualname == "torch._utils._rebuild_tensor_v2":
            return self._rebuild_tensor_v2
        if qualname == "torch._utils._rebuild_tensor_v3":
            return self._rebuild_tensor_v3
        if qualname == "torch._utils._rebuild_parameter":
            return self._rebuild_parameter
        if qualname == "torch.storage.UntypedStorage":
            return _DType(None)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _DType(_numpy_dtype(_STORAGE_DTYPES[name], self._path))
        if module == "torch" and name in _TENSOR_DTYPES:
            return _DType(_numpy_dtype(name, self._path))
        raise CheckpointError(
            f"refusing to load {qualname!r} from {self._path}: only tensor data is allowed "
            "in a checkpoint (the file contains pickled code)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        """Resolve ``('storage', type, key, location, numel)`` to the bytes of data/<key>."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r} in {self._path}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _DType) or not isinstance(key, str) or not isinstance(numel, int):
            raise CheckpointError(f"malformed storage reference {pid!r} in {self._path}")
        if key not in self._storages:
            try:
                data = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise CheckpointError(
                    f"{self._path} is truncated or corrupt: storage data/{key} is missing"
                ) from None
            raw = np.frombuffer(data, dtype=np.uint8)
            itemsize = 1 if kind.dtype is None else kind.dtype.itemsize
            if raw.size < numel * itemsize:
                raise CheckpointError(
                    f"{self._path} is truncated or corrupt: storage data/{key} has "
                    f"{raw.size} bytes, expected {numel * itemsize}"
                )
            self._storages[key] = _Storage(raw, kind.dtype)
        return self._storages[key]

    def _rebuild_tensor_v2(
        self, storage: Any, offset: Any, size: Any, stride: Any, *_grad_hooks_metadata: Any
    ) -> np.ndarray:
        """Stand-in for torch's v2 rebuild: the element dtype comes from the storage class."""
        if not isinstance(storage, _Storage) or storage.dtype is None:
            raise CheckpointError(f"malformed tensor record in {self._path}")
        return self._rebuild(storage, storage.dtype, offset, size, stride)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        dtype: Any,
        *_metadata: Any,
    ) -> np.ndarray:
        """Stand-in for torch's v3 rebuild: an untyped storage plus an explicit dtype."""
        if (
            not isinstance(storage, _Storage)
            or not isinstance(dtype, _DType)
            or dtype.dtype is None
        ):
            raise CheckpointError(f"malformed tensor record in {self._path}")
        return self._rebuild(storage, dtype.dtype, offset, size, stride)

    def _rebuild_parameter(self, data: Any, *_grad_hooks: Any) -> Any:
        """A Parameter is just its tensor once gradients are irrelevant."""
        return data

    def _rebuild(
        self, storage: _Storage, dtype: np.dtype, offset: Any, size: Any, stride: Any
    ) -> np.ndarray:
        """Copy the strided view out of the storage, bounds-checked first.

        ``as_strided`` trusts its arguments and would read arbitrary memory, so sizes,
        strides and offset from the file are validated against the storage length.
        The copy decouples tensors that share a storage and makes transposed views
        C-contiguous.
        """
        ok = (
            isinstance(offset, int)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
        )
        if not ok:
            raise CheckpointError(
                f"malformed tensor geometry in {self._path}: offset={offset!r}, "
                f"size={size!r}, stride={stride!r}"
            )
        if 0 in size:
            return np.empty(size, dtype=dtype)
        elements = _typed(storage, dtype, self._big_endian)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= elements.size:
            raise CheckpointError(
                f"{self._path} is corrupt: a tensor of size {size} reaches element {last} "
                f"of a storage holding {elements.size}"
            )
        itemsize = dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            elements[offset:], shape=size, strides=tuple(s * itemsize for s in stride)
        )
        return np.array(view, order="C", copy=True)


def _open_archive(path: str) -> zipfile.ZipFile:
    """Open the zip, turning every way a file can be wrong into one clear error."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a PyTorch zip checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes), not a PyTorch zip checkpoint")
    if head.startswith(_LEGACY_MAGIC):
        raise CheckpointError(
            f"{path} is in the legacy (pre-1.6) torch.save format, not a PyTorch zip "
            "checkpoint; re-save it with a recent torch"
        )
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head.startswith(_ZIP_MAGIC):
            raise CheckpointError(f"{path} is truncated or corrupt (bad zip archive)") from None
        raise CheckpointError(f"{path} is not a PyTorch zip checkpoint") from None


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The top folder (its name varies with the file name torch saw) holding data.pkl."""
    for name in archive.namelist():
        folder, _, base = name.rpartition("/")
        if base == "data.pkl" and "/" not in folder:
            return f"{folder}/" if folder else ""
    raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")


def _big_endian(archive: zipfile.ZipFile, prefix: str, path: str) -> bool:
    """Storages are little-endian unless the archive says otherwise."""
    try:
        order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    except KeyError:
        return False
    if order not in ("little", "big"):
        raise CheckpointError(f"{path} has unknown byteorder {order!r}")
    return order == "big"


def read_torch_file(path: str | os.PathLike[str]) -> object:
    """Unpickle ``data.pkl`` with a restricted Unpickler; tensors become numpy arrays.

    Raises CheckpointError for anything that is not a readable zip checkpoint made only
    of containers, plain values and tensors; no global outside the allow-list is called.
    """
    path = os.fspath(path)
    with _open_archive(path) as archive:
        prefix = _archive_prefix(archive, path)
        try:
            big_endian = _big_endian(archive, prefix, path)
            with archive.open(f"{prefix}data.pkl") as stream:
                return _RestrictedUnpickler(archive, stream, prefix, path, big_endian).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
        except (pickle.UnpicklingError, struct.error, TypeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"{path} has a corrupt or unsupported data.pkl: {e}") from e
        except (AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"{path} has a corrupt or unsupported data.pkl: {e!r}") from e


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a checkpoint's state dict as ``{name: array}``, preserving key order.

    SAM2 checkpoints wrap the weights as ``{"model": state_dict}``; SAM1 and MobileSAM
    files are the bare state dict. Both are accepted so callers need not know which.
    """
    obj = read_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{os.fspath(path)} holds a {type(obj).__name__}, not a state dict of tensors"
        )
    state: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            what = f"a {type(value).__name__}" if isinstance(name, str) else "not named by text"
            raise CheckpointError(
                f"{os.fspath(path)} holds no model state dict: entry {name!r} is {what}, not "
                "a named tensor (expected {name: tensor} or {'model': {name: tensor}})"
            )
        state[name] = value
    return state
