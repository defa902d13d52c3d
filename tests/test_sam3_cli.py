"""`sam-jax segment` with SAM 3's concept model: --text captions and exemplar --box prompts
(negative ones included) give every instance as a label PNG, an overlay and one JSON
record each (caption, score, box), equal to ConceptPredictor's results on the same image;
over folders; a SAM 3 torch file loads as the concept model for --text; and every command
line the concept model cannot run is one clear error line, written before any output.

The model is a reduced concept model with random weights (test_sam3_semantic's SMALL)
saved with sam_jax.save: no torch, except where a torch file is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config, init_params
from sam_jax.cli import main
from sam_jax.cli.images import label_image
from sam_jax.config import VARIANTS
from sam_jax.predictors.amg_output import rle_to_mask
from sam_jax.predictors.concept import ConceptPredictor
from tests.tiny_configs import SAM3_SEMANTIC_SMALL

SMALL = SAM3_SEMANTIC_SMALL
# Random weights score every query near 0.2, under the default --conf 0.25: the tests that
# need instances lower it (and tighten --iou so the two flags visibly act).
LOW = ["--conf", "0.17", "--iou", "0.5"]


@dataclasses.dataclass(frozen=True)
class Concept:
    path: Path  # the .safetensors file
    model: object
    params: dict


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> Concept:
    model = build_from_config(SMALL)
    # A key under which the random model scores every query under the default --conf (the
    # draws follow flax's parameter layout: re-pick when the modules' parameters change).
    params = init_params(model, jax.random.key(5))
    path = tmp_path_factory.mktemp("ckpt") / "concept.safetensors"
    sam_jax.save(path, model, params)
    return Concept(path, model, params)


def _image(path: Path, seed: int = 0, shape: tuple[int, int] = (72, 96)) -> np.ndarray:
    from PIL import Image

    image = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sam-jax: error: ")
    return lines[0].removeprefix("sam-jax: error: ")


def _expected(concept: Concept, image: np.ndarray, **prompts):
    p = ConceptPredictor(concept.model, concept.params)
    p.set_image(image)
    return p.predict(**prompts)


def _check_outputs(png: Path, image: np.ndarray, want, mode: str = "uncompressed_rle") -> list:
    """The PNG, overlay and records of `png` hold exactly the instances `want` holds."""
    records = json.loads(png.with_suffix(".json").read_text())
    assert len(records) == len(want.scores)
    masks = []
    for i, r in enumerate(records):
        assert r["instance_id"] == i + 1
        assert r["caption"] == want.names[want.classes[i]]
        np.testing.assert_allclose(r["score"], want.scores[i], rtol=1e-5)
        np.testing.assert_allclose(r["box"], want.boxes[i], rtol=1e-5, atol=1e-3)
        if mode == "binary_mask":
            mask = _png(png.parent / r["segmentation"]) == 255
        else:
            mask = rle_to_mask(r["segmentation"])
        np.testing.assert_array_equal(mask, want.masks[i])
        assert r["area"] == int(mask.sum())
        masks.append(mask)
    ids = list(range(1, len(masks) + 1))
    np.testing.assert_array_equal(_png(png), label_image(image.shape[:2], masks, ids))
    overlay = _png(png.with_name(png.stem + "_overlay.png"))
    assert overlay.shape == image.shape
    return records


def test_text_writes_every_instance(concept, tmp_path, capsys):
    image = _image(tmp_path / "photo.png")
    out = tmp_path / "out" / "photo.png"
    args = ["segment", str(tmp_path / "photo.png"), "--checkpoint", str(concept.path)]
    assert main([*args, "--out", str(out), "--text", "red car", "--text", "dog", *LOW]) == 0
    want = _expected(concept, image, text=["red car", "dog"], conf=0.17, iou=0.5)
    assert 1 < len(want.scores) < 2 * SMALL.detector.num_queries  # --conf and --iou acted
    records = _check_outputs(out, image, want)
    assert {r["caption"] for r in records} <= {"red car", "dog"}
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    assert f"{len(records)} instances" in capsys.readouterr().out
    # The default --conf 0.25 keeps none of this random model's queries: empty outputs.
    assert main([*args, "--out", str(tmp_path / "none.png"), "--text", "dog", "-q"]) == 0
    assert json.loads((tmp_path / "none.json").read_text()) == []
    assert not _png(tmp_path / "none.png").any()


def test_exemplar_boxes_positive_and_negative(concept, tmp_path):
    image = _image(tmp_path / "photo.png", seed=1)
    out = tmp_path / "photo_seg.png"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "photo.png"),
                "--checkpoint",
                str(concept.path),
                "--out",
                str(out),
                "--text",
                "dog",
                "--box",
                "10,10,50,50",
                "--box",
                "40,20,90,70,0",
                "--conf",
                "0.12",
                "--output-mode",
                "binary_mask",
                "-q",
            ]
        )  # fmt: skip
        == 0
    )
    want = _expected(
        concept, image, text="dog", box=[[10, 10, 50, 50], [40, 20, 90, 70]],
        box_labels=[1, 0], conf=0.12,
    )  # fmt: skip
    assert len(want.scores) > 0
    flipped = _expected(
        concept, image, text="dog", box=[[10, 10, 50, 50], [40, 20, 90, 70]], conf=0.12
    )
    assert not np.array_equal(want.scores, flipped.scores)  # the label reached the model
    _check_outputs(out, image, want, mode="binary_mask")


def test_concept_checkpoint_takes_boxes_alone_over_a_folder(concept, tmp_path, capsys):
    """Without --text a concept .safetensors still runs the concept model: the boxes are
    exemplars of the caption "visual"; every image of a folder gets its outputs."""
    images = {name: _image(tmp_path / "in" / f"{name}.png", seed=s) for s, name in enumerate("ab")}
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "in"),
                "--checkpoint",
                str(concept.path),
                "--out",
                str(out),
                "--box",
                "8,8,60,50",
                "--conf",
                "0.15",
                "-q",
            ]
        )  # fmt: skip
        == 0
    )
    for name, image in images.items():
        want = _expected(concept, image, box=[[8, 8, 60, 50]], conf=0.15)
        assert want.names == ["visual"] and len(want.scores) > 0
        _check_outputs(out / f"{name}.png", image, want)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--text", "dog", "--point", "5,5"], "takes no clicks: drop --point"),
        (["--text", "dog", "--everything"], "--everything all; drop one"),
        (["--text", "a", "--text", "b", "--box", "1,1,5,5"], "go with one caption; got 2"),
        (["--text", "dog", "--conf", "2"], "--conf must be in [0, 1]"),
    ],
)
def test_refused_before_loading(flags, message, tmp_path, capsys):
    _image(tmp_path / "im.png")
    out = tmp_path / "o.png"
    argv = ["segment", str(tmp_path / "im.png"), "--checkpoint", "missing.pt", "--out", str(out)]
    assert main(argv + flags) == 1
    assert message in _error_line(capsys)  # not "no such checkpoint": nothing was loaded
    assert not out.exists()


@pytest.mark.parametrize(
    "checkpoint, flags, message",
    [
        ("sam_tiny_shapes", ["--text", "dog"],
         "text prompts need SAM 3's concept model: a SAM 3 checkpoint"),
        ("sam2_tiny_shapes", ["--text", "dog", "--variant", "sam2_tiny_shapes"],
         "holds sam2_tiny_shapes"),
        ("sam_tiny_shapes", ["--point", "5,5", "--iou", "0.5"], "--conf / --iou apply"),
        ("sam_tiny_shapes", ["--box", "1,1,5,5,0"], "LABEL 0 is a negative exemplar"),
        ("concept", ["--point", "5,5"], "not --point or --everything"),
        ("concept", ["--everything"], "not --point or --everything"),
        ("concept", ["--text", "dog", "--box", "1,1,5,5@2"], "drop @OBJ"),
    ],
)  # fmt: skip
def test_refused_after_loading(checkpoint, flags, message, concept, tmp_path, capsys):
    _image(tmp_path / "im.png")
    out = tmp_path / "o.png"
    ckpt = str(concept.path) if checkpoint == "concept" else checkpoint
    argv = ["segment", str(tmp_path / "im.png"), "--checkpoint", ckpt, "--out", str(out), "-q"]
    assert main(argv + flags) == 1
    assert message in _error_line(capsys)
    assert not out.exists()


def test_text_with_a_torch_file_that_is_not_sam3(tmp_path, capsys):
    """A torch file is read as SAM 3's concept model for --text; one that is not says so."""
    import pickle
    import zipfile

    path = tmp_path / "sam_b.pt"
    with zipfile.ZipFile(path, "w") as z:  # laid out as torch.save writes, no tensors
        z.writestr("archive/data.pkl", pickle.dumps({"epoch": 3}, protocol=2))
    _image(tmp_path / "im.png")
    argv = ["segment", str(tmp_path / "im.png"), "--checkpoint", str(path), "--out", "o.png", "-q"]
    assert main([*argv, "--text", "dog"]) == 1
    line = _error_line(capsys)
    assert line.startswith("text prompts need SAM 3's concept model") and "sam_b.pt is not" in line


@pytest.mark.parametrize(
    "command, box, message",
    [
        ("segment", "1,2,3,4,2", "--box label must be 1 (positive exemplar) or 0"),
        ("segment", "1,2,3,4,1,1", "--box must be X0,Y0,X1,Y1 or X0,Y0,X1,Y1,LABEL"),
        ("track", "1,2,3,4,0", "--box must be X0,Y0,X1,Y1 (then"),  # no labels there
    ],
)
def test_box_labels_are_parsed_where_they_mean_something(command, box, message, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "x", "--checkpoint", "c", "--out", "o.png", "--box", box])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.torch
def test_sam3_torch_file_loads_the_concept_model_for_text(concept, tmp_path, monkeypatch, capsys):
    """--text reads a SAM 3 torch file (detector keys, as sam3.pt holds them) as variant
    sam3_semantic: the same instances as the .safetensors file."""
    from sam_jax.convert.export import export_torch

    monkeypatch.setitem(VARIANTS, "sam3_semantic", dataclasses.replace(SMALL, name="sam3_semantic"))
    export_torch(tmp_path / "sam3.pt", concept.model, concept.params)
    image = _image(tmp_path / "im.png", seed=2)
    out = tmp_path / "o.png"
    argv = ["segment", str(tmp_path / "im.png"), "--checkpoint", str(tmp_path / "sam3.pt")]
    assert main([*argv, "--out", str(out), "--text", "red car", *LOW, "-q"]) == 0
    want = _expected(concept, image, text="red car", conf=0.17, iou=0.5)
    assert len(want.scores) > 0
    _check_outputs(out, image, want)
    # A SAM 1 torch file with --text: the same clear error, no wall of missing keys.
    export_torch(tmp_path / "sam.pt", *sam_jax.load("sam_tiny_shapes"))
    assert (
        main(
            [
                *argv[:3],
                str(tmp_path / "sam.pt"),
                "--out",
                str(tmp_path / "x.png"),
                "--text",
                "dog",
                "-q",
            ]
        )
        == 1
    )
    line = _error_line(capsys)
    assert line.startswith("text prompts need SAM 3's concept model") and "sam.pt is not" in line
