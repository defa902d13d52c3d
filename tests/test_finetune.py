"""`sam-jax finetune` and sam_jax.train.finetune: end to end on the tests' tiny 64-px models
(the bundled ones where a test names them) with datasets of a few small synthetic images
written here; resume reaches the parameters of an
uninterrupted run; a LoRA run saves base + merged update; bad input gives one error line."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from PIL import Image

import sam_jax
from sam_jax.checkpoint import build_from_config
from sam_jax.cli import main
from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.train import finetune as ft
from sam_jax.train.checkpoints import TrainCheckpoints
from sam_jax.train.lora import lora_merge
from sam_jax.train.metrics_log import MetricsLog, read_metrics
from sam_jax.train.step import TrainState
from sam_jax.train.video_prompts import SAM2_TRAINING, VideoPrompting
from tests.tiny_configs import TINY2_1, TINY_SAM, random_variables

SIZE = 48  # the images on disk; the models letterbox them to their own input size


def _palette_png(ids: np.ndarray, path) -> None:
    png = Image.fromarray(ids.astype(np.uint8), mode="P")
    png.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0, 0, 0] * 252)
    png.save(path)


def write_mask_folder(root, n=4, size=SIZE):
    """n synthetic-shape images with their instance-id PNGs (images/ + masks/)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, masks = scene(200 + i, size, num_objects=(1, 3))
        ids = np.zeros((size, size), np.uint8)
        for k, m in enumerate(masks):
            ids[m] = k + 1
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        _palette_png(ids, root / "masks" / f"im{i}.png")
    return root


def write_davis(root, frames=3, size=SIZE):
    """One DAVIS-layout video of two moving shapes."""
    rgb, masks = video(7, frames, size, num_objects=2, max_speed=0.02)
    (root / "JPEGImages" / "v").mkdir(parents=True)
    (root / "Annotations" / "v").mkdir(parents=True)
    for t in range(frames):
        Image.fromarray(rgb[t]).save(root / "JPEGImages" / "v" / f"{t:05d}.jpg", quality=95)
        ids = np.zeros((size, size), np.uint8)
        for k in range(masks.shape[1]):
            ids[masks[t, k]] = k + 1
        _palette_png(ids, root / "Annotations" / "v" / f"{t:05d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """{"sam": path, "sam2": path}: the tests' tiny 64-px SAM and SAM 2 (tests/tiny_configs)
    with random weights, saved as checkpoints, for the runs whose claim does not need the
    bundled 256-px models (a run on those compiles its step at four times the pixels)."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    paths = {}
    for name, config in (("sam", TINY_SAM), ("sam2", TINY2_1)):
        model = build_from_config(config)
        paths[name] = str(root / f"{name}.safetensors")
        sam_jax.save(paths[name], model, random_variables(model))
    return paths


def _flat(variables):
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(dict(variables)).items()}


def _options(data, out, **kw):
    base = dict(
        checkpoint="sam_tiny_shapes",
        train=str(data),
        out=str(out),
        steps=2,
        batch_size=1,
        objects_per_image=2,
        log_every=1,
        quiet=True,
    )
    return ft.FinetuneOptions(**{**base, **kw})


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sam-jax: error: ")
    return lines[0]


# ---------------------------------------------------------------------------- end to end


def test_cli_images_end_to_end(tmp_path, capsys, tiny_checkpoints):
    """(On the tiny 64-px SAM: the command line and the run folder are the driver's,
    whatever the model; the bundled models load by name in test_errors_are_one_line.)"""
    data, out = write_mask_folder(tmp_path / "data"), tmp_path / "run"
    ckpt = tiny_checkpoints["sam"]
    argv = ["finetune", "--checkpoint", ckpt, "--train", str(data)]
    argv += ["--val", str(data), "--out", str(out), "--steps", "2", "--batch-size", "1"]
    argv += ["--objects-per-image", "2", "--log-every", "1", "--eval-every", "0", "-q"]
    argv += ["--corrections", "1"]  # one corrective click (default two): less to compile
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 2, loss ") and "val mIoU" in line and "embedding cache" in line
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all({"loss", "iou_first", "iou_last", "lr"} <= set(r) for r in train)
    assert [r["step"] for r in evals] == [0, 2]  # before training and at the end
    assert all(0.0 <= r["eval"]["miou"] <= 1.0 and r["eval"]["prompt"] == "click" for r in evals)
    assert list(out.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    # final.safetensors is an ordinary model: the decoder moved, the rest did not
    model, variables = sam_jax.load(out / "final.safetensors")
    base_model, base = sam_jax.load(ckpt)
    assert model.config == base_model.config
    got, want = _flat(variables), _flat(base)
    assert got.keys() == want.keys()
    moved = {k for k in got if not np.array_equal(got[k], want[k])}
    assert moved and all(k.startswith("params/mask_decoder/") for k in moved)


def test_video_end_to_end(tmp_path, tiny_checkpoints):
    """A SAM 2 run on a video dataset (the tiny 64-px SAM 2: the video path is the driver's,
    whatever the model): clips trained, evaluated by J&F with mask prompts, the image
    encoder frozen."""
    data, out = write_davis(tmp_path / "davis"), tmp_path / "run"
    options = _options(
        data,
        out,
        checkpoint=tiny_checkpoints["sam2"],
        val=str(data),
        steps=1,
        objects_per_image=1,
        clip_len=2,
        warmup=0,  # the one step at the peak rate (a warm-up starts at 0)
        corrections=0,  # no corrective click (default one): less to compile
    )
    summary = ft.finetune(options)
    assert not summary["embedding_cache"]  # clips are encoded in the step
    records = read_metrics(out / "metrics.jsonl")
    (record,) = [r for r in records if "eval" not in r]
    assert record["step"] == 1 and np.isfinite(record["loss"]) and "iou_tracked" in record
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [0, 1] and summary["eval"] == evals[-1]["eval"]
    assert all(0.0 <= r["eval"]["J&F"] <= 1.0 and r["eval"]["prompt"] == "mask" for r in evals)
    model, variables = sam_jax.load(summary["final"])
    _, base = sam_jax.load(tiny_checkpoints["sam2"])
    got, want = _flat(variables), _flat(base)
    moved = {k for k in got if not np.array_equal(got[k], want[k])}
    assert moved and not any(k.startswith("params/image_encoder/") for k in moved)


# -------------------------------------------------------------------------------- resume


class Crash(Exception):
    """Stands for a run killed between two steps."""


def test_resume_reaches_the_uninterrupted_parameters(tmp_path, monkeypatch, tiny_checkpoints):
    data = write_mask_folder(tmp_path / "data")
    # augmentation on and two micro-batches per step: the data order, the augmentation
    # draws, the step keys and the optimizer state must all continue where they stopped
    # (on the tiny 64-px SAM, one corrective click instead of the default two: resuming is
    # the driver's, whatever the model, and the click still draws from the step keys)
    kw = dict(steps=2, save_every=1, hflip=0.5, accumulate=2, trainable=("prompt_decoder",))
    kw.update(checkpoint=tiny_checkpoints["sam"], corrections=1)
    whole = ft.finetune(_options(data, tmp_path / "whole", **kw))
    assert not whole["embedding_cache"]  # augmentation is on

    loader = ft.image_loader

    def crashing(*args, **kwargs):
        batches = loader(*args, **kwargs)
        yield next(batches)  # step 1 runs and is saved, step 2 never comes
        raise Crash

    monkeypatch.setattr(ft, "image_loader", crashing)
    with pytest.raises(Crash):
        ft.finetune(_options(data, tmp_path / "cut", **kw))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="already holds a run"):
        ft.finetune(_options(data, tmp_path / "cut", **kw))
    resumed = ft.finetune(_options(data, tmp_path / "cut", resume=True, **kw))
    assert resumed["start_step"] == 1

    got = _flat(sam_jax.load(resumed["final"])[1])
    want = _flat(sam_jax.load(whole["final"])[1])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    assert strip(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == strip(
        read_metrics(tmp_path / "whole" / "metrics.jsonl")
    )


# ---------------------------------------------------------------------------------- LoRA


def test_lora_final_is_base_plus_merged_update(tmp_path, tiny_checkpoints):
    data, out = write_mask_folder(tmp_path / "data"), tmp_path / "run"
    # adapters on the decoder's attention only: the encoder stays as loaded (cache used);
    # the tiny 64-px SAM: merging is LoRA's, whatever the model
    options = _options(
        data,
        out,
        checkpoint=tiny_checkpoints["sam"],
        lora=2,
        lora_targets=("*mask_decoder/transformer/*_proj/kernel",),
        learning_rate=1e-2,
        corrections=1,  # one corrective click (default two): less to compile
    )
    summary = ft.finetune(options)
    assert summary["embedding_cache"]
    run = ft.setup(options)
    like = TrainState.create(run.variables, run.tx)
    tree = TrainCheckpoints(out / "checkpoints").restore(like).variables["params"]
    _, base = sam_jax.load(tiny_checkpoints["sam"])
    np.testing.assert_equal(_flat(tree["base"]), _flat(base["params"]))  # base frozen
    assert any(np.abs(b).max() > 0 for b in jax.tree.leaves(tree["lora"]))  # it trained
    merged = _flat(lora_merge(tree, run.transform.keywords["config"]))
    final = _flat(sam_jax.load(summary["final"])[1]["params"])
    assert final.keys() == merged.keys()
    for k in merged:
        np.testing.assert_allclose(final[k], merged[k], rtol=1e-6, atol=1e-7, err_msg=k)
    changed = {k for k in final if not np.array_equal(final[k], _flat(base["params"])[k])}
    assert changed and all(k.endswith("_proj/kernel") for k in changed)


# ----------------------------------------------------------------------------- the log


def test_metrics_log_records_and_resume(tmp_path):
    log = MetricsLog(tmp_path)
    log.train(1, {"loss": np.float32(0.5), "iou_first": float("nan")})
    log.eval(1, {"prompt": "click", "miou": 0.25, "per_image": [{"ious": [0.25]}]})
    log.train(2, {"loss": 0.4})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 0.5, "iou_first": None},  # NaN is written as null
        {"step": 1, "eval": {"prompt": "click", "miou": 0.25}},  # scalars only
        {"step": 2, "loss": 0.4},
    ]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    # resumed at step 1: what the interrupted run wrote after step 1 goes
    MetricsLog(tmp_path, start_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 1]
    MetricsLog(tmp_path).close()  # a fresh run starts a fresh log
    assert read_metrics(tmp_path / "metrics.jsonl") == []


# -------------------------------------------------------------------------------- errors


def test_errors_are_one_line(tmp_path, capsys):
    data = write_mask_folder(tmp_path / "data", n=1)
    out = tmp_path / "run"
    argv = ["finetune", "--checkpoint", "sam_tiny_shapes", "--out", str(out), "--steps", "1"]

    def fails(*extra):
        assert main([*argv, *extra]) == 1
        return _error_line(capsys)

    assert "dataset not found" in fails("--train", str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert "empty dataset" in fails("--train", str(tmp_path / "empty"))
    davis = write_davis(tmp_path / "davis", frames=2)
    assert "trains SAM 2 checkpoints" in fails("--train", str(davis))
    assert "names no parameter" in fails("--train", str(data), "--trainable", "nothing/*")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    assert "is not a safetensors file" in fails("--train", str(data), "--checkpoint", str(junk))
    # a mask of another size than its image: the file is named, nothing is left in --out
    Image.fromarray(np.zeros((SIZE, SIZE + 3), np.uint8)).save(data / "masks" / "im0.png")
    assert "does not match its image" in fails("--train", str(data))
    assert not (out / "options.json").exists()
    # --out holding a run: refused without --resume, and with other options
    out.mkdir(exist_ok=True)
    record = ft.options_record(_options(data, out, steps=5))
    (out / "options.json").write_text(json.dumps(record))
    assert "already holds a run" in fails("--train", str(data))
    line = fails(
        "--train",
        str(data),
        "--batch-size",
        "1",
        "--objects-per-image",
        "2",
        "--log-every",
        "1",
        "-q",
        "--resume",
    )
    assert "other options" in line and "--steps 5 -> 1" in line


def test_options_are_checked_and_listed_in_help(capsys):
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        ft.FinetuneOptions(checkpoint="c", train="t", out="o", steps=0)
    with pytest.raises(ValueError, match="hflip"):
        ft.FinetuneOptions(checkpoint="c", train="t", out="o", steps=1, hflip=2.0)
    base = dict(checkpoint="c", train="t", out="o", steps=1)
    assert ft.FinetuneOptions(**base).prompting() == VideoPrompting()
    sam2 = ft.FinetuneOptions(**base, video_prompts="sam2", prob_box=0.25, cond_frames=1)
    assert sam2.prompting() == dataclasses.replace(SAM2_TRAINING, prob_box=0.25, num_cond_frames=1)
    with pytest.raises(ValueError, match="prob_mask must be in"):
        ft.FinetuneOptions(**base, prob_mask=1.5)
    with pytest.raises(ValueError, match="num_correct_frames"):
        ft.FinetuneOptions(**base, cond_frames=2, correct_frames=1)
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--checkpoint CKPT",
        "--train DATA",
        "--val DATA",
        "--out DIR",
        "--steps N",
        "--batch-size B",
        "--trainable WHAT [WHAT ...]",
        "--lr LR",
        "--encoder-lr",
        "--lora RANK",
        "--accumulate N",
        "--bf16",
        "--remat",
        "--eval-every",
        "--save-every N",
        "--resume",
        "--warmup",
        "--images",
        "--scale LO,HI",
        "--video-prompts {click,sam2}",
        "--prob-mask P",
        "--cond-frames N",
    ):
        assert flag in text, flag
