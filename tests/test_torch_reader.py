"""The torch-free checkpoint reader matches torch.load and refuses pickled code."""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from sam_jax.convert.torch_reader import CheckpointError, read_state_dict, read_torch_file

torch = pytest.importorskip("torch")


def _module_state_dict() -> OrderedDict:
    """A real nn.Module state dict (with _metadata and num_batches_tracked) plus extras."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    sd = model.state_dict()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd["half"] = torch.randn(3, 5).half()
    sd["bf16"] = torch.randn(2, 7).bfloat16()
    sd["int64"] = torch.arange(-5, 5, dtype=torch.int64)
    sd["mask"] = torch.tensor([True, False, True])
    sd["scalar_f"] = torch.tensor(1.5)
    sd["scalar_i"] = torch.tensor(7, dtype=torch.int64)
    sd["empty"] = torch.zeros(0, 3)
    sd["transposed"] = torch.randn(3, 5).t()  # non-contiguous view saved as is
    sd["shared_full"] = base  # these three share one storage
    sd["shared_row"] = base[2]
    sd["shared_strided"] = base[1:, ::2]
    sd["uint16"] = torch.tensor([1, 2, 65535], dtype=torch.uint16)  # written via _rebuild_v3
    return sd


def _assert_matches_torch(ours: dict, path: Path) -> None:
    theirs = torch.load(path, weights_only=True)
    if "model" in theirs:
        theirs = theirs["model"]
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        expected = tensor.detach()
        if expected.dtype == torch.bfloat16:  # numpy via torch has no bfloat16
            expected = expected.view(torch.int16).numpy()
            actual = ours[name].view(np.int16)
            assert ours[name].dtype.name == "bfloat16"
        else:
            expected = expected.numpy()
            actual = ours[name]
        assert actual.dtype == expected.dtype, name
        assert actual.shape == expected.shape, name
        assert actual.flags.c_contiguous, name
        np.testing.assert_array_equal(actual, expected, err_msg=name)


@pytest.mark.torch
def test_state_dict_matches_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "sam1.pth"
    torch.save(_module_state_dict(), path)
    sd = read_state_dict(path)
    _assert_matches_torch(sd, path)
    assert sd["1.num_batches_tracked"].shape == () and sd["1.num_batches_tracked"].dtype == np.int64
    assert sd["scalar_f"].shape == () and sd["scalar_f"] == np.float32(1.5)


@pytest.mark.torch
def test_shared_storage_tensors_are_independent_copies(tmp_path: Path) -> None:
    path = tmp_path / "shared.pt"
    torch.save(_module_state_dict(), path)
    sd = read_state_dict(path)
    sd["shared_full"][:] = -1
    assert sd["shared_row"].tolist() == list(range(12, 18))


@pytest.mark.torch
def test_wrapped_model_and_ordered_dict(tmp_path: Path) -> None:
    inner = OrderedDict(a=torch.ones(2, 2), b=torch.tensor(3))
    path = tmp_path / "sam2.pt"
    torch.save({"model": inner, "epoch": 3}, path)
    sd = read_state_dict(path)
    assert list(sd) == ["a", "b"] and type(sd) is dict
    _assert_matches_torch(sd, path)

    raw = read_torch_file(path)
    assert raw["epoch"] == 3 and isinstance(raw["model"], OrderedDict)


@pytest.mark.torch
def test_parameters_and_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    param = torch.nn.Parameter(torch.randn(2, 3))
    torch.save({"p": param, "meta": {"name": "x", "sizes": [1, 2.5, None, (3,)]}}, path)
    obj = read_torch_file(path)
    np.testing.assert_array_equal(obj["p"], param.detach().numpy())
    assert obj["meta"] == {"name": "x", "sizes": [1, 2.5, None, (3,)]}


@pytest.mark.torch
def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(path)
    path = tmp_path / "nested.pt"
    torch.save({"a": torch.ones(1), "b": {"c": torch.ones(1)}}, path)
    with pytest.raises(CheckpointError, match="entry 'b'"):
        read_state_dict(path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.torch
def test_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load '(posix|nt)\.system'") as err:
        read_state_dict(path)
    assert "pickled code" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def _zip_with_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")


def _rewrite_members(path: Path, edit) -> None:
    """Rewrite a saved checkpoint's zip members through ``edit(name, data) -> data | None``."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            data = edit(name, data)
            if data is not None:
                zf.writestr(name, data)


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"cbuiltins\neval\n(V__import__('os')\ntR.", "builtins.eval"),
        (
            b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06getcwd\x93).",
            "os.getcwd",
        ),
        (b"ctorch\nload\n.", "torch.load"),
        (b"cultralytics.nn.tasks\nDetectionModel\n)\x81.", "ultralytics.nn.tasks.DetectionModel"),
    ],
)
def test_handwritten_malicious_pickles(tmp_path: Path, payload: bytes, refused: str) -> None:
    path = tmp_path / "evil.pt"
    _zip_with_pickle(path, payload)
    with pytest.raises(CheckpointError, match=f"refusing to load '{refused}'"):
        read_torch_file(path)


@pytest.mark.torch
def test_out_of_bounds_tensor_is_rejected(tmp_path: Path) -> None:
    """A hostile size/stride must not make as_strided read past the storage."""
    path = tmp_path / "oob.pt"
    torch.save({"w": torch.ones(4)}, path)

    def grow(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        # size (4,) -> (9,): BININT1 4 inside TUPLE1 becomes BININT1 9.
        assert data.count(b"K\x04\x85") == 1
        return data.replace(b"K\x04\x85", b"K\x09\x85")

    _rewrite_members(path, grow)
    with pytest.raises(CheckpointError, match="corrupt"):
        read_torch_file(path)


@pytest.mark.torch
def test_truncated_checkpoint(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save(_module_state_dict(), good)
    data = good.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


@pytest.mark.torch
def test_missing_storage_member(tmp_path: Path) -> None:
    path = tmp_path / "nostorage.pt"
    torch.save({"w": torch.ones(3)}, path)
    _rewrite_members(path, lambda name, data: None if name.endswith("/data/0") else data)
    with pytest.raises(CheckpointError, match="truncated or corrupt: storage data/0 is missing"):
        read_torch_file(path)


@pytest.mark.torch
def test_big_endian_storages(tmp_path: Path) -> None:
    tensors = {
        "f": torch.randn(2, 3),
        "i": torch.arange(-3, 3, dtype=torch.int64),
        "c": torch.randn(4, dtype=torch.complex64),
        "h": torch.randn(5).bfloat16(),
    }
    path = tmp_path / "big.pt"
    torch.save(tensors, path)
    # Storage keys are numbered in order of first use, i.e. the dict order above.
    swap = {"0": "<f4", "1": "<i8", "2": "<f4", "3": "<u2"}

    def to_big_endian(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        folder, _, key = name.rpartition("/")
        if folder.endswith("/data"):
            return np.frombuffer(data, swap[key]).byteswap().tobytes()
        return data

    _rewrite_members(path, to_big_endian)
    ours = read_torch_file(path)
    for name, tensor in tensors.items():
        expected = tensor.view(torch.int16) if name == "h" else tensor
        actual = ours[name].view(np.int16) if name == "h" else ours[name]
        np.testing.assert_array_equal(actual, expected.numpy(), err_msg=name)


def test_allowed_globals_cannot_be_misused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    _zip_with_pickle(path, b"ctorch\nFloatStorage\n)R.")  # "call" a storage class
    with pytest.raises(CheckpointError, match="corrupt or unsupported data.pkl"):
        read_torch_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (np.random.default_rng(0).bytes(4096), "not a PyTorch zip checkpoint"),
        (b"PK\x03\x04" + b"\x00" * 100, "truncated or corrupt"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        read_torch_file(path)
    assert str(path) in str(err.value)


@pytest.mark.torch
def test_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy .* not a PyTorch zip checkpoint"):
        read_state_dict(path)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_torch_file(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="no such file") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


def test_checkpoint_error_is_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)
