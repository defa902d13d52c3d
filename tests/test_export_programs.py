"""Exported programs for serving (`sam_jax.serving`, `sam-jax export`): the programs read
back from disk, without the model code, give what the jit-compiled model gives."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from sam_jax import serving
from sam_jax.cli import main
from sam_jax.predictors.image import encode
from sam_jax.serving import export_programs, load_programs
from sam_jax.tracking import FrameInput, MemoryBank, TrackOutput, empty_bank, make_track_step
from sam_jax.tracking.track_step import COND, STORED, TRACK, encode_frames

SIZE = 64  # small inputs keep the compilations short
# The exported decoder takes any number of points, so it runs the plain attention order;
# the model with a fixed number takes the reassociated one: equal up to float rounding.
TOL = 1e-5


@pytest.fixture(scope="module")
def sam_export(tmp_path_factory):
    """SAM through the command line, parameters as inputs (params.npz)."""
    folder = tmp_path_factory.mktemp("sam")
    argv = ["export", "sam_tiny_shapes", str(folder), "--image-size", str(SIZE)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([*argv, "--params-as-input"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    model, params = sam_jax.load("sam_tiny_shapes", image_size=SIZE)
    return model, params, folder, manifest, printed.getvalue()


@pytest.fixture(scope="module")
def sam2_export(tmp_path_factory):
    """SAM 2 through the library, parameters baked in, lowered for CPU and CUDA."""
    folder = tmp_path_factory.mktemp("sam2")
    model, params = sam_jax.load("sam2_tiny_shapes", image_size=SIZE)
    manifest = export_programs(model, params, folder, platforms="cpu,cuda")
    return model, params, folder, manifest


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), np.uint8)


def _close(got, want) -> None:
    # The exported programs are shape-polymorphic, so attention takes its general form
    # there, not the small-window one (pre-transposed keys) of a static trace: the same
    # math summed in another order, so compared as max |got - want| / max |want|.
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    if want.dtype == bool:
        np.testing.assert_array_equal(got, want)
        return
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert err <= TOL, f"max |got - want| / max |want| = {err:.2e} > {TOL:.0e}"


# Only jax, json and numpy: the program must run without sam-jax's code.
RAW_CALL = """
import json, sys
import numpy as np
from jax import export
folder = sys.argv[1]
manifest = json.load(open(folder + "/manifest.json"))
entry = manifest["programs"]["encoder"]
exported = export.deserialize(bytearray(open(folder + "/" + entry["file"], "rb").read()))
with np.load(folder + "/" + manifest["params"]["file"]) as z:
    params = [z[name] for name in manifest["params"]["names"]]
(out,) = exported.call(*params, np.load(folder + "/image.npy"))
assert not [m for m in sys.modules if m.startswith("sam_jax")]
np.save(folder + "/out.npy", np.asarray(out))
"""


def test_encoder_runs_in_a_process_without_sam_jax(sam_export):
    model, params, folder = sam_export[:3]
    image = _image()
    np.save(folder / "image.npy", image[None])
    done = subprocess.run(
        [sys.executable, "-c", RAW_CALL, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=folder,  # not the repository: `import sam_jax` would not even be possible there
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _close(np.load(folder / "out.npy"), encode(model, params, jnp.asarray(image)))


def _predict_masks(model, params, feats, k, multimask, **prompts):
    """jit `predict_masks` on named encoder outputs of one image, repeated for k prompts."""
    rep = {n: jnp.broadcast_to(f, (k, *f.shape[1:])) for n, f in feats.items()}
    if "image_embeddings" in rep:  # SAM
        features = rep["image_embeddings"]
    else:
        features = {
            "vision_features": rep["vision_features"],
            "high_res_features": [rep["high_res_0"], rep["high_res_1"]],
        }
    run = lambda p, f, pr: model.apply(
        p, f, **pr, multimask_output=multimask, method="predict_masks"
    )
    return jax.jit(run)(params, features, prompts)


def _prompts(k: int, n: int, m: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, SIZE / 2, (k, 2))
    return {
        "point_coords": rng.uniform(0, SIZE, (k, n, 2)).astype(np.float32),
        "point_labels": rng.integers(0, 2, (k, n)).astype(np.int32),
        "boxes": np.concatenate([x0, x0 + SIZE / 3], 1).astype(np.float32),
        "mask_inputs": rng.normal(0, 5, (k, m, m, 1)).astype(np.float32),
    }


def _check_decoder(program, model, params, feats, *, k, n, used, multimask):
    """The exported decoder with the prompts `used` against `predict_masks` with the
    others None; returns the exported outputs."""
    prompts = _prompts(k, n, model.config.mask_input_size)
    switches = {
        "has_points": "point_coords" in used,
        "has_box": "boxes" in used,
        "has_mask": "mask_inputs" in used,
    }
    got = program(**feats, **prompts, **{s: np.bool_(v) for s, v in switches.items()})
    kept = {name: prompts[name] for name in used}
    if "point_coords" in used:
        kept["point_labels"] = prompts["point_labels"]
    want = _predict_masks(model, params, feats, k, multimask, **kept)
    assert list(got) == [o["name"] for o in program.outputs]
    assert len(got) == len(want)
    for g, w in zip(got.values(), want, strict=True):
        assert g.shape == w.shape
        _close(g, w)
    return got


def test_sam_programs_match_the_model(sam_export):
    model, params, folder = sam_export[:3]
    programs = load_programs(folder)
    assert set(programs) == {"encoder", "decoder", "decoder_single"}
    image = _image(3)
    feats = programs["encoder"](image=image[None])
    _close(feats["image_embeddings"], encode(model, params, jnp.asarray(image)))

    dec, single = programs["decoder"], programs["decoder_single"]
    m = model.config.mask_input_size
    # one (K, N) per program: each new shape compiles the 8 prompt layouts again
    clicks = _check_decoder(
        dec, model, params, feats, k=2, n=1, used=("point_coords",), multimask=True
    )
    assert clicks["low_res_logits"].shape == (2, 3, m, m)
    box_only = _check_decoder(dec, model, params, feats, k=2, n=1, used=("boxes",), multimask=True)
    _check_decoder(dec, model, params, feats, k=2, n=1, used=(), multimask=True)
    every = _check_decoder(
        single,
        model,
        params,
        feats,
        k=3,
        n=2,
        used=("point_coords", "boxes", "mask_inputs"),
        multimask=False,
    )
    assert every["iou"].shape == (3, 1)
    assert not np.allclose(clicks["low_res_logits"], box_only["low_res_logits"])


def _random_memory(model, rng) -> tuple[MemoryBank, int]:
    """(bank, frame index): two objects with two conditioning slots, to track frame 3 of
    10, with past frames 1 and 2 in the rings."""
    cfg = model.config
    g, o, c, f = cfg.embed_size, 2, 2, 3
    r, q = cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder - 1
    bank = empty_bank(o, c, g, cfg.mem_dim, cfg.d_model, r, q, num_frames=10)
    normal = lambda a: rng.normal(size=a.shape).astype(np.float32)
    bank = bank.replace(
        cond_feats=normal(bank.cond_feats),
        cond_ptrs=normal(bank.cond_ptrs),
        cond_frames=np.array([[0, 5], [0, 0]], np.int32),
        cond_valid=np.array([[True, True], [True, False]]),
        recent_feats=normal(bank.recent_feats),
        ptr_vals=normal(bank.ptr_vals),
    )
    for past in (1, 2):
        bank.recent_frames[:, past % r], bank.recent_valid[:, past % r] = past, True
        bank.ptr_frames[:, past % q], bank.ptr_valid[:, past % q] = past, True
    return bank, f


def test_sam2_programs_match_the_model(sam2_export):
    model, params, folder, manifest = sam2_export
    assert manifest["platforms"] == ["cpu", "cuda"]
    programs = load_programs(folder)
    assert set(programs) == {"encoder", "decoder", "decoder_single", "track_step"}
    assert all(p.exported.platforms == ("cpu", "cuda") for p in programs.values())

    images = np.stack([_image(4), _image(5)])  # B = 2 through the symbolic batch
    feats = programs["encoder"](images)
    want = jax.jit(encode_frames, static_argnums=0)(model, params, jnp.asarray(images))
    for got, w in zip(feats.values(), want, strict=True):
        _close(got, w)

    one = {name: x[:1] for name, x in feats.items()}
    got = _check_decoder(
        programs["decoder"],
        model,
        params,
        one,
        k=2,
        n=1,
        used=("point_coords", "boxes"),
        multimask=True,
    )
    assert got["object_score_logits"].shape == (2, 1)

    rng = np.random.default_rng(7)
    bank, f = _random_memory(model, rng)
    o = bank.num_objects
    frame = FrameInput(
        frame_idx=np.int32(f),
        vision_features=np.asarray(feats["vision_features"][1]),
        high_res_0=np.asarray(feats["high_res_0"][1]),
        high_res_1=np.asarray(feats["high_res_1"][1]),
        kind=np.array([TRACK, STORED], np.int32),
        stored_feats=rng.normal(size=bank.recent_feats[:, 0].shape).astype(np.float32),
        stored_ptrs=rng.normal(size=(o, model.config.d_model)).astype(np.float32),
    )
    step = programs["track_step"]
    out = step(*jax.tree_util.tree_leaves(bank), *jax.tree_util.tree_leaves(frame))
    want = jax.tree_util.tree_leaves(make_track_step(model, params)(bank, frame))
    assert len(out) == len(want) == 16
    for (name, g), w in zip(out.items(), want, strict=True):
        assert g.shape == w.shape, name
        _close(g, w)
    assert out["memory.recent_frames"][0, f % (model.config.num_maskmem - 1)] == f
    q = model.config.max_obj_ptrs_in_encoder - 1
    assert bool(out["memory.ptr_valid"][1, f % q])  # object 1's stored correction was filed
    kinds = manifest["model"]["track_step"]["kind"]
    assert (
        kinds
        == {"TRACK": TRACK, "COND": COND, "STORED": STORED}
        == {
            "TRACK": 0,
            "COND": 1,
            "STORED": 2,
        }
    )


def test_sam2_manifest_spells_out_the_flattening(sam2_export):
    model, _, folder, manifest = sam2_export
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    step = manifest["programs"]["track_step"]
    bank_fields = [f"memory.{f.name}" for f in dataclasses.fields(MemoryBank)]
    frame_fields = [f"frame.{f.name}" for f in dataclasses.fields(FrameInput)]
    out_fields = [f"outputs.{f.name}" for f in dataclasses.fields(TrackOutput)]
    assert [i["name"] for i in step["inputs"]] == bank_fields + frame_fields
    assert [o["name"] for o in step["outputs"]] == bank_fields + out_fields
    g = model.config.embed_size
    first = step["inputs"][0]
    assert first == {"name": "memory.cond_feats", "shape": ["O", "C", g, g, 64], "dtype": "float32"}
    assert manifest["programs"]["decoder"]["inputs"][3]["shape"] == ["K", "N", 2]
    assert manifest["programs"]["encoder"]["inputs"][0]["shape"] == ["B", SIZE, SIZE, 3]
    pre = manifest["preprocessing"]
    assert (pre["image_size"], pre["pad_value"], pre["mask_size"]) == (SIZE, 114, 4 * g)
    assert pre["pixel_mean"] == list(model.config.pixel_mean)
    assert manifest["jax_version"] == jax.__version__
    assert manifest["sam_jax_version"] == sam_jax.__version__
    assert set(manifest["dims"]) == {"B", "K", "N", "O", "C"}


def test_cli_writes_the_manifest_and_the_files(sam_export, sam2_export):
    _, _, folder, manifest, printed = sam_export
    files = [e["file"] for e in manifest["programs"].values()]
    assert files == ["encoder.jax_export", "decoder.jax_export", "decoder_single.jax_export"]
    assert all((folder / f).is_file() and f in printed for f in files)
    assert manifest["platforms"] == ["cpu"] and "manifest.json" in printed
    assert manifest["params"]["file"] == "params.npz"
    with np.load(folder / "params.npz") as z:
        assert list(z.files) == manifest["params"]["names"]
        nbytes = sum(z[n].nbytes for n in z.files if "image_encoder" in n)
    # as inputs the weights live once, in params.npz; baked, each program holds its own
    assert (folder / "encoder.jax_export").stat().st_size < nbytes / 10
    assert sam2_export[3]["params"] == "baked"
    sam2_encoder_bytes = sum(
        np.asarray(x).nbytes
        for x in jax.tree_util.tree_leaves(sam2_export[1]["params"]["image_encoder"])
    )
    assert (sam2_export[2] / "encoder.jax_export").stat().st_size > sam2_encoder_bytes


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam-jax: error: "), lines
    return lines[0].removeprefix("sam-jax: error: ")


def test_cli_errors(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.safetensors"
    assert main(["export", str(missing), str(out)]) == 1
    line = _error_line(capsys)
    assert "no such checkpoint file" in line and str(missing) in line
    text = tmp_path / "x.safetensors"
    text.write_text("not weights")
    assert main(["export", str(text), str(out)]) == 1
    assert "is not a safetensors file" in _error_line(capsys)
    assert main(["export", "sam_tiny_shapes", str(out), "--platforms", "cpu,gpu"]) == 1
    line = _error_line(capsys)
    assert "unknown platform 'gpu'" in line and "cuda" in line
    assert main(["export", "sam_tiny_shapes", str(out), "--platforms", "cpu,,tpu"]) == 1
    assert "comma-separated" in _error_line(capsys)
    assert main(["export", "sam_tiny_shapes", str(out), "--image-size", "0"]) == 1
    assert "--image-size must be positive" in _error_line(capsys)
    assert not out.exists()


def test_library_errors(tmp_path, monkeypatch):
    model, params = sam_jax.load("sam_tiny_shapes", image_size=64)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        export_programs(model, params, a_file)
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 8"):
        export_programs(model, params, tmp_path / "a", image_size=60)
    with pytest.raises(ValueError, match="platforms are repeated"):
        export_programs(model, params, tmp_path / "a", platforms=("cpu", "cpu"))
    monkeypatch.setattr(serving, "MAX_BAKED_BYTES", 1000)
    with pytest.raises(ValueError, match="params_as_input=True"):
        export_programs(model, params, tmp_path / "b")
    monkeypatch.setitem(sys.modules, "flatbuffers", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"sam-jax\[export\]"):
        export_programs(model, params, tmp_path / "c", params_as_input=True)
    assert not any((tmp_path / d).exists() for d in "abc")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_programs(tmp_path)


def test_loaded_program_names_its_inputs(sam2_export):
    program = load_programs(sam2_export[2])["decoder"]
    with pytest.raises(ValueError, match=r"missing \['has_mask'\]"):
        program(*range(9))
    with pytest.raises(ValueError, match=r"unknown \['points'\]"):
        program(*range(10), points=1)
