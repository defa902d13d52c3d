"""The `sam-jax` command line: flags shared across sub-commands, and every error about the
user's input shown as one line `sam-jax: error: ...` with exit status 1. No model runs here."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import sam_jax
from sam_jax.cli import flags, main

CANONICAL = {
    "convert": ["--variant"],
    "segment": [
        "--checkpoint CKPT",
        "--variant NAME",
        "--out OUT.png",
        "--image-size S",
        "--point X,Y[,LABEL]",
        "--box X0,Y0,X1,Y1",
        "--points-per-side N",
        "--points-per-batch N",
        "--pred-iou-thresh T",
        "--stability-score-thresh T",
        "--crop-n-layers N",
        "--min-mask-region-area A",
        "-q, --quiet",
    ],
    "track": [
        "--checkpoint CKPT",
        "--variant NAME",
        "--out DIR",
        "--point X,Y[,LABEL]",
        "--box X0,Y0,X1,Y1",
        "-q, --quiet",
    ],
    "demo": ["--checkpoint", "--stability-score-thresh"],
}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the failed command wrote to stderr, without its prefix."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sam-jax: error: ")
    return lines[0].removeprefix("sam-jax: error: ")


def _torch_zip(path: Path, obj: object) -> Path:
    """A file laid out as torch.save writes it, pickling `obj` (no tensors), without torch."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "im.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", sorted(CANONICAL))
def test_help_lists_the_canonical_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for flag in CANONICAL[command]:
        assert flag in text


def test_shared_flags_read_the_same_in_every_sub_command(capsys):
    helps = {}
    for command in ("segment", "track"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for line in ("--variant NAME use this model variant", "-q, --quiet no progress messages"):
        assert all(line in text for text in helps.values())


def test_hidden_alias_sets_the_canonical_flag(capsys):
    parser = argparse.ArgumentParser()
    flags.add_checkpoint(parser, required=False, default="sam_tiny_shapes", aliases=["--model"])
    flags.add_generator_flags(parser, ["stability_score_thresh"], stability_score_thresh=0.85)
    flags.add_hidden_alias(parser, "--stability-thresh", "stability_score_thresh", type=float)
    args = parser.parse_args(["--model", "x.pt", "--stability-thresh", "0.5"])
    assert (args.checkpoint, args.stability_score_thresh) == ("x.pt", 0.5)
    args = parser.parse_args([])
    assert (args.checkpoint, args.stability_score_thresh) == ("sam_tiny_shapes", 0.85)
    help_text = parser.format_help()
    assert "--model" not in help_text and "--stability-thresh " not in help_text
    assert "(0.85)" in help_text


def test_text_file_named_safetensors(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_text("hello, not weights")
    assert main(["convert", str(bad), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(bad) in line and "is not a safetensors file" in line
    with pytest.raises(ValueError, match="is not a safetensors file"):
        sam_jax.load(bad)


def test_safetensors_without_sam_jax_metadata(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path))
    assert main(["convert", str(path), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(path) in line and "--variant" in line


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["convert", str(missing), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert "no such checkpoint file" in line and str(missing) in line
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        sam_jax.load(missing)


def test_folder_as_checkpoint(tmp_path, capsys):
    assert main(["convert", str(tmp_path), str(tmp_path / "y.safetensors")]) == 1
    assert "is a folder, not a checkpoint file" in _error_line(capsys)


def test_garbage_torch_files(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    assert main(["convert", str(garbage), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(garbage) in line and "not a PyTorch zip checkpoint" in line

    training_state = _torch_zip(tmp_path / "state.pt", {"epoch": 3, "lr": 0.1})
    assert main(["convert", str(training_state), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(training_state) in line and "holds no model state dict: entry 'epoch'" in line

    empty = _torch_zip(tmp_path / "empty.pth", {})
    assert main(["convert", str(empty), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(empty) in line and "cannot tell the model variant" in line
    assert not (tmp_path / "y.safetensors").exists()


def test_unknown_checkpoint_suffix(tmp_path, capsys):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"weights")
    assert main(["convert", str(weights), str(tmp_path / "y.safetensors")]) == 1
    line = _error_line(capsys)
    assert str(weights) in line and ".safetensors, .pt, .pth" in line


def test_convert_refuses_an_unknown_destination_before_loading(tmp_path, capsys):
    assert main(["convert", "sam_tiny_shapes", str(tmp_path / "model.onnx")]) == 1
    assert "DST must end in .safetensors, .pt, .pth; got 'model.onnx'" in _error_line(capsys)


def test_segment_unreadable_image(tmp_path, capsys):
    text = tmp_path / "photo.jpg"
    text.write_text("not a picture")
    argv = ["segment", str(text), "--checkpoint", "sam_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"cannot read image {text}")


def test_segment_missing_image(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    argv = ["segment", str(missing), "--checkpoint", "sam_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    assert _error_line(capsys) == f"no such image file: {missing}"


def test_segment_bad_checkpoint(tmp_path, image, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"{}")
    argv = ["segment", str(image), "--checkpoint", str(bad), "--box", "1,1,4,4"]
    assert main([*argv, "--out", str(tmp_path / "m.png"), "-q"]) == 1
    assert str(bad) in _error_line(capsys)


def test_track_missing_frames(tmp_path, capsys):
    missing = tmp_path / "no_video.mp4"
    argv = ["track", str(missing), "--checkpoint", "sam2_tiny_shapes", "--point", "1,2"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    assert str(missing) in _error_line(capsys)


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "convert", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "SRC" in done.stdout
