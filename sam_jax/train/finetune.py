"""Fine-tune a SAM or SAM 2 checkpoint on an annotated dataset: the driver of `sam-jax finetune`.

    summary = finetune(FinetuneOptions(checkpoint="sam_tiny_shapes", train="data/",
                                       out="runs/a", steps=1000, val="val/"))

What trains on what:
* an image dataset (COCO, SA-1B, images/ + masks/) trains SAM or SAM 2 (image mode) with
  `interactive_loss`: per image K objects, each from a click or a box plus corrective clicks;
* a video dataset (DAVIS / MOSE layout) trains SAM 2 on clips through the tracking scan
  with `clip_loss`.

The run folder `out` receives options.json (what the run is), metrics.jsonl and
TensorBoard events (`MetricsLog`), checkpoints/<step>/ (orbax: variables, optimizer state,
step; the newest `keep_checkpoints` kept) and, at the end, final.safetensors: an ordinary
model (LoRA adapters merged) that `sam_jax.load` reads.

A run folder holds one run. Without `resume`, an `out` that already holds a run
(options.json) is refused, whatever its options, so nothing is overwritten by accident.
With `resume`, the run continues from its newest checkpoint (from step 0 when it has none)
with the same data order and random draws: batch n and its key are functions of (seed, n)
alone. The options must be the run's own, except those in RUN_ONLY.

Embedding cache: when no image-encoder parameter trains (LoRA adapters included), the data
are images and augmentation is off, each image is encoded once into an `EmbeddingCache`
(in out/embeddings) and the step gets the embeddings instead of the images.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from sam_jax.checkpoint import build_from_config, load, save
from sam_jax.config import Sam2Config
from sam_jax.data import open_dataset
from sam_jax.data.augment import NO_AUGMENT
from sam_jax.data.dataset import VideoDataset
from sam_jax.data.loader import clip_loader, image_loader, images_at
from sam_jax.evaluation.run import evaluate_model
from sam_jax.train.batching import normalise
from sam_jax.train.checkpoints import (
    CHECKPOINTS_DIR,
    TrainCheckpoints,
    run_start_step,
    write_run_record,
)
from sam_jax.train.finetune_options import RUN_ONLY, FinetuneOptions, flag, options_record
from sam_jax.train.lora import LORA_TRAINABLE, LoraConfig, lora_init, lora_merge
from sam_jax.train.metrics_log import MetricsLog
from sam_jax.train.optimizer import (
    TRAINABLE,
    glob_rule,
    make_optimizer,
    trainable_labels,
    trains,
)
from sam_jax.train.schedule import warmup_cosine
from sam_jax.train.step import TrainState, interactive_loss, make_train_step
from sam_jax.train.video_step import clip_loss

__all__ = ["FINAL_FILE", "RUN_ONLY", "FinetuneOptions", "finetune", "model_variables", "setup"]

FINAL_FILE = "final.safetensors"
_ENCODER = re.compile(r"(?:^|/)image_encoder/")


def _trainable(options: FinetuneOptions, params: Any, video: bool) -> Any:
    """The trainable rule over the state's parameters (a LoRA tree with --lora), checked to
    train something."""
    names = options.trainable
    if names is None:
        rule = None if options.lora else TRAINABLE["all_but_encoder" if video else "decoder"]
    else:
        rule = glob_rule(names)
    paths = ["/".join(k) for k in flax.traverse_util.flatten_dict(params)]
    if options.lora:
        base = trains(rule) if rule is not None else lambda p: False
        lora = trains(LORA_TRAINABLE)
        rule = lambda p: lora(p) or (p.startswith("base/") and base(p[len("base/") :]))
    if not any(trains(rule)(p) for p in paths):
        roots = sorted({p.split("/")[0] for p in paths})
        raise ValueError(
            f"--trainable {' '.join(names or ())} names no parameter of this model; presets: "
            f"{', '.join(TRAINABLE)}; parameter paths start with {', '.join(roots)}"
        )
    return rule


def _schedule(options: FinetuneOptions, peak: float | None) -> optax.Schedule | None:
    """Warm-up and cosine decay over the run's steps, peaking at `peak`."""
    if peak is None:
        return None
    steps, warm = options.steps, options.warmup
    if warm is None:
        return warmup_cosine(peak, steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warm, max(steps, warm + 1), peak * 0.05)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Setup:
    """Everything a run needs besides its state: the model as loaded (saved and evaluated)
    and as trained (remat, compute dtype), the data, the optimizer, the step."""

    model: Any
    variables: Any  # the model's variables as the state holds them (a LoRA tree with --lora)
    transform: Any  # the state's parameters -> the model's (LoRA merge), or None
    train: Any
    val: Any
    video: bool
    tx: Any
    schedule: optax.Schedule
    step: Any
    cache: Any  # an EmbeddingCache, or None


def _data(options: FinetuneOptions) -> tuple[Any, Any]:
    """(training dataset, validation dataset or None); the readers refuse empty ones."""
    val, images = options.val, options.val_images
    return (
        open_dataset(options.train, images=options.images),
        None if val is None else open_dataset(val, images=images),
    )


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(the root of the steps' keys, the LoRA initialisation's key): independent draws."""
    steps, lora = jax.random.split(jax.random.key(seed))
    return steps, lora


def _lora(options: FinetuneOptions, variables: Any) -> tuple[Any, Any]:
    """(variables as the state holds them, the parameter transform: the state's parameters
    -> the model's, or None without --lora)."""
    if not options.lora:
        return variables, None
    config = LoraConfig(
        rank=options.lora, alpha=options.lora_alpha, targets=tuple(options.lora_targets)
    )
    tree = lora_init(variables["params"], config, _keys(options.seed)[1])
    return {**variables, "params": tree}, functools.partial(lora_merge, config=config)


def _uses_cache(options: FinetuneOptions, labels: Any, video: bool) -> bool:
    """Whether every step may take cached image embeddings (module docstring)."""
    flat = flax.traverse_util.flatten_dict(labels)
    encoder_trains = any(v == "train" and _ENCODER.search("/".join(k)) for k, v in flat.items())
    return not video and not encoder_trains and options.augment() == NO_AUGMENT


def _embedding_cache(options: FinetuneOptions, model: Any, variables: Any, train: Any) -> Any:
    """An EmbeddingCache of the training images, kept in out/embeddings."""
    from sam_jax.train.embedding_cache import EmbeddingCache  # only where a run uses it

    cfg = model.config
    images_of = lambda idx: normalise(images_at(train, idx, cfg.image_size), cfg)
    directory = Path(options.out) / "embeddings"
    return EmbeddingCache(
        model, variables, images_of, batch_size=options.batch_size, directory=directory
    )


# The optimizers and jitted steps of recent runs, keyed on what defines them (`_step_key`):
# a run with the same model configuration and step options (a resumed run, another seed or
# dataset) reuses the step, which jax.jit then neither traces nor compiles again. A few are
# kept; each holds its compiled programs.
_STEPS: dict[tuple, tuple[Any, Any]] = {}
_STEPS_KEPT = 4
# Options that do not enter the optimizer or the step: the data, the run folder, and those
# that may change on resume (RUN_ONLY). The parameter tree, which the optimizer's labels
# follow, is a function of the model's configuration (and --lora, an option).
_NOT_IN_STEP = RUN_ONLY | {"checkpoint", "train", "images", "out"}


def _step_key(options: FinetuneOptions, config: Any, video: bool) -> tuple:
    """What the optimizer and step of a run are functions of: the model's configuration,
    the data's kind and the options but _NOT_IN_STEP (all hashable: frozen dataclasses,
    tuples, numbers, strings)."""
    fields = dataclasses.fields(options)
    chosen = tuple((f.name, getattr(options, f.name)) for f in fields if f.name not in _NOT_IN_STEP)
    return config, video, chosen


def _optimizer_and_step(
    o: FinetuneOptions, model: Any, video: bool, params: Any, rule: Any, transform: Any
) -> tuple[Any, Any]:
    """(the optimizer, the jitted train step) `o` asks for, for the state's `params` with
    the trainable `rule` and the LoRA `transform` (or None)."""
    tx = make_optimizer(
        params,
        rule,
        _schedule(o, o.learning_rate),
        o.weight_decay,
        o.clip_norm,
        encoder_learning_rate=_schedule(o, o.encoder_learning_rate),
        layer_decay=o.layer_decay,
    )
    run_model = build_from_config(model.config, remat=True) if o.remat else model
    if video:
        loss_fn = functools.partial(clip_loss, prompting=o.prompting())
    else:
        loss_fn = interactive_loss
    corrections = o.corrections if o.corrections is not None else (1 if video else 2)
    step = make_train_step(
        run_model,
        tx,
        num_corrections=corrections,
        compute_dtype=jnp.bfloat16 if o.bf16 else None,
        loss_fn=loss_fn,
        transform=transform,
        accumulate=o.accumulate,
    )
    return tx, step


def setup(options: FinetuneOptions) -> _Setup:
    """Load the checkpoint and data and build the optimizer and step `options` ask for."""
    o = options
    train, val = _data(o)
    model, variables = load(o.checkpoint)
    video = isinstance(train, VideoDataset)
    if video and not isinstance(model.config, Sam2Config):
        raise ValueError(
            f"{o.train} is a video dataset: it trains SAM 2 checkpoints, not {model.config.name}"
        )
    state_vars, transform = _lora(o, variables)
    rule = _trainable(o, state_vars["params"], video)
    schedule = _schedule(o, o.learning_rate)
    if video:
        o.prompting().check_clip(o.clip_len)
    key = _step_key(o, model.config, video)
    if key not in _STEPS:
        params = state_vars["params"]
        _STEPS[key] = _optimizer_and_step(o, model, video, params, rule, transform)
        while len(_STEPS) > _STEPS_KEPT:
            _STEPS.pop(next(iter(_STEPS)))  # the oldest
    tx, step = _STEPS[key]
    cache = None
    if _uses_cache(o, trainable_labels(state_vars["params"], rule), video):
        cache = _embedding_cache(o, model, variables, train)
    return _Setup(
        model=model,
        variables=state_vars,
        transform=transform,
        train=train,
        val=val,
        video=video,
        tx=tx,
        schedule=schedule,
        step=step,
        cache=cache,
    )


def model_variables(run: _Setup, state_variables: Any) -> Any:
    """The model's plain variables (LoRA adapters merged) of a state's variables."""
    if run.transform is None:
        return state_variables
    return {**state_variables, "params": jax.jit(run.transform)(state_variables["params"])}


def _loader(options: FinetuneOptions, run: _Setup, start: int) -> Any:
    """The endless training batches from step `start` on (a function of seed and step)."""
    o, size = options, run.model.config.image_size
    batch = o.batch_size * o.accumulate  # the step splits it into micro-batches
    common = dict(image_size=size, batch_size=batch, seed=o.seed, start_step=start)
    common["augment"] = o.augment()
    if run.video:
        return clip_loader(
            run.train, clip_len=o.clip_len, objects_per_clip=o.objects_per_image, **common
        )
    return image_loader(run.train, objects_per_image=o.objects_per_image, **common)


def _inputs(run: _Setup, batch: dict) -> tuple[Any, np.ndarray, dict]:
    """(the step's images: normalised pixels or cached embeddings, targets, the step's
    valid and ignore keywords)."""
    if run.video:
        images = normalise(batch["clips"], run.model.config)
    elif run.cache is not None:
        images = run.cache(batch["index"])
    else:
        images = normalise(batch["images"], run.model.config)
    return images, batch["masks"], {"valid": batch["valid"], "ignore": batch["ignore"]}


def _means(metrics: list[dict]) -> dict[str, float]:
    """Each metric's mean over steps, NaN (no valid object) left out; NaN if all are."""
    out = {}
    for name in metrics[0]:
        values = np.array([float(m[name]) for m in metrics])
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    return out


def _evaluate(run: _Setup, state: TrainState) -> dict:
    """evaluate_model on the validation data with the state's (merged) variables."""
    variables = jax.device_get(model_variables(run, state.variables))
    return evaluate_model(run.model, variables, run.val, progress=False)


def _due(done: int, every: int, last: int) -> bool:
    """Whether something done every `every` steps (0: never) and at the last is due."""
    return done == last or (every > 0 and done % every == 0)


def _train(
    o: FinetuneOptions, run: _Setup, state: TrainState, start: int, data: Any, log: MetricsLog
) -> tuple[TrainState, dict | None, dict | None]:
    """Steps start .. o.steps: log, evaluate and checkpoint as due. Returns (state, last
    training record, last evaluation record)."""
    ckpts = TrainCheckpoints(Path(o.out) / CHECKPOINTS_DIR, keep=o.keep_checkpoints)
    last_train, last_eval, pending = None, None, []
    base_key = _keys(o.seed)[0]
    try:
        if start:
            state = jax.device_put(ckpts.restore(like=state, step=start))
        elif run.val is not None:
            last_eval = log.eval(0, _evaluate(run, state))
        desc = f"finetune {run.model.config.name}"
        bar = tqdm(range(start, o.steps), desc, o.steps, initial=start, disable=o.quiet)
        for n, batch in zip(bar, data, strict=False):  # data is endless
            images, targets, masks = _inputs(run, batch)
            key = jax.random.fold_in(base_key, n)  # the step's draws: a function of n alone
            state, metrics = run.step(state, images, targets, key, **masks)
            pending.append(metrics)
            done = n + 1
            if _due(done, o.log_every, o.steps):
                last_train = log.train(done, {**_means(pending), "lr": float(run.schedule(n))})
                pending = []
                bar.set_postfix(loss=last_train.get("loss"))
            if run.val is not None and _due(done, o.eval_every, o.steps):
                last_eval = log.eval(done, _evaluate(run, state))
            if _due(done, o.save_every, o.steps):
                ckpts.save(state)
    finally:
        ckpts.close()
    return state, last_train, last_eval


def finetune(options: FinetuneOptions) -> dict:
    """Run (or resume) the fine-tuning `options` describe; returns a summary: "out", "final"
    (the saved model), "start_step", "steps", "train" (the last training record), "eval"
    (the last evaluation's scalars, or None), "embedding_cache" (bool), "seconds".

    Nothing is written to the run folder before the checkpoint, the datasets and the first
    batch have been read, so a run refused for its input leaves no run behind. (A sample
    that cannot be read later stops the run with its error; fix it and resume.)"""
    o, t0 = options, time.time()
    start = run_start_step(o.out, options_record(o), resume=o.resume, flag_of=flag)
    run = setup(o)
    data = _loader(o, run, start)
    first = next(data)
    write_run_record(o.out, options_record(o))
    state = TrainState.create(run.variables, run.tx)
    log = MetricsLog(o.out, start_step=start)
    try:
        state, last_train, last_eval = _train(
            o, run, state, start, itertools.chain([first], data), log
        )
    finally:
        log.close()
    final = Path(o.out) / FINAL_FILE
    save(final, run.model, jax.device_get(model_variables(run, state.variables)))
    return {
        "out": o.out,
        "final": str(final),
        "start_step": start,
        "steps": o.steps,
        "train": last_train,
        "eval": None if last_eval is None else last_eval["eval"],
        "embedding_cache": run.cache is not None,
        "seconds": round(time.time() - t0, 1),
    }
