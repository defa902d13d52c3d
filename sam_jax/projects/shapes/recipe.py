"""The recipe that trains the bundled models on synthetic shapes, from scratch or continuing.

    model, variables, log = train_sam(RecipeOptions(variant="sam_tiny_shapes_p16", steps=4000))

SAM trains on scenes (`interactive_loss`, `objects_per_image` objects prompted per encoded
image); SAM 2 on clips of `clip_len` frames through the tracking scan (`clip_loss`,
`objects_per_image` objects tracked per clip), or with clip_len=1 on scenes in image mode
like SAM (training its encoder and decoder cheaply). Before training, the starting model
may be given finer patches (`repatch`), a shorter memory window (`shorten_memory`), another
tracking mask mode, and a re-seated memory path (`reseat_memory`, `weigh_recent_memory`).
Options and their defaults: `RecipeOptions`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm import tqdm

from sam_jax.checkpoint import build_from_config, init_params, load, save
from sam_jax.config import Sam2Config
from sam_jax.projects.shapes.data import TRAIN_SEEDS, scene_pool, video_pool
from sam_jax.projects.shapes.memory_window import shorten_memory
from sam_jax.projects.shapes.options import RecipeOptions
from sam_jax.projects.shapes.repatch import repatch
from sam_jax.projects.shapes.reseat_memory import (
    ALL_BUT_ENCODER_POSITIONAL,
    reseat_memory,
    weigh_recent_memory,
)
from sam_jax.projects.shapes.variants import variant_config
from sam_jax.train.batching import batches, clip_batches, normalise
from sam_jax.train.schedule import warmup_cosine
from sam_jax.train.step import TRAINABLE as CORE_TRAINABLE
from sam_jax.train.step import TrainState, interactive_loss, make_optimizer, make_train_step
from sam_jax.train.video_step import clip_loss

# BCE + Dice: SAM's 20:1 focal:dice collapses to empty masks when training from scratch.
FROM_SCRATCH_LOSS = {
    "focal_weight": 2.0,
    "focal_alpha": 0.5,
    "focal_gamma": 0.0,
    "dice_weight": 1.0,
}
# The trainable rules RecipeOptions.trainable names: the core presets and this project's.
TRAINABLE = {**CORE_TRAINABLE, "all_but_encoder_positional": ALL_BUT_ENCODER_POSITIONAL}


def initial_model(options: RecipeOptions) -> tuple[nn.Module, Any]:
    """The model and variables training starts from: `init_from` loaded, or `variant`
    built with fresh weights, then changed as the options say (module docstring)."""
    o = options
    if o.init_from:
        model, variables = load(o.init_from, image_size=o.image_size)
        if o.num_maskmem is not None:
            model, variables = shorten_memory(model, variables, o.num_maskmem)
    else:
        cfg = variant_config(o.variant, o.image_size)
        if o.num_maskmem is not None:
            cfg = dataclasses.replace(cfg, num_maskmem=o.num_maskmem)
        model = build_from_config(cfg)
        variables = init_params(model, jax.random.key(o.seed))
    if o.patch_size and o.patch_size != getattr(model.config.encoder, "patch_size", None):
        model, variables = repatch(model, variables, o.patch_size, name=o.variant)
    if o.single_mask_tracking is not None:
        if not isinstance(model.config, Sam2Config):
            raise ValueError(f"single_mask_tracking needs a SAM 2 model; got {model.config.name}")
        multimask = not o.single_mask_tracking
        cfg = dataclasses.replace(model.config, multimask_output_for_tracking=multimask)
        model = build_from_config(cfg)
    if o.reseat_memory:
        variables = reseat_memory(model.config, variables)
    if o.recent_memory_gain is not None:
        variables = weigh_recent_memory(model.config, variables, o.recent_memory_gain)
    return model, variables


def step_and_data(
    options: RecipeOptions, model: nn.Module, tx: Any
) -> tuple[Callable, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """The jit train step and the endless batches (uint8 images or clips, bool targets)."""
    o, cfg = options, model.config
    weights = {**FROM_SCRATCH_LOSS, "iou_weight": o.iou_weight}
    if isinstance(cfg, Sam2Config) and o.clip_len > 1:
        step_fn = make_train_step(model, tx, o.num_corrections, loss_fn=clip_loss, **weights)
        pool = video_pool(
            o.num_scenes, cfg.image_size, seed0=TRAIN_SEEDS.start, max_speed=o.max_speed
        )
        return step_fn, clip_batches(pool, o.batch_size, o.clip_len, o.seed, o.objects_per_image)
    loss_fn = functools.partial(interactive_loss, box_prob=o.box_prob)
    step_fn = make_train_step(model, tx, o.num_corrections, loss_fn=loss_fn, **weights)
    pool = scene_pool(o.num_scenes, cfg.image_size, seed0=TRAIN_SEEDS.start)
    return step_fn, batches(pool, o.batch_size, o.seed, o.objects_per_image)


def train_sam(options: RecipeOptions) -> tuple[nn.Module, Any, list[dict]]:
    """Train as `options` say; save to `options.out` when given (float16 with `half`, and
    then return the weights as loaded back). Returns (model, variables, log): one entry per
    `log_every` steps, the metrics' means with "step" and "seconds"."""
    o = options
    if o.trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {list(TRAINABLE)}; got {o.trainable!r}")
    model, variables = initial_model(o)
    cfg = model.config
    schedule = warmup_cosine(o.learning_rate, o.steps)
    tx = make_optimizer(variables["params"], TRAINABLE[o.trainable], schedule, weight_decay=0.01)
    state = TrainState.create(variables, tx)
    step_fn, data = step_and_data(o, model, tx)
    key = jax.random.key(o.seed + 1)
    log, t0 = [], time.time()
    bar = tqdm(range(o.steps), desc=f"training {cfg.name}")
    acc = []
    for i in bar:
        imgs, tgts = next(data)
        key, sub = jax.random.split(key)
        state, met = step_fn(state, normalise(imgs, cfg), tgts, sub)
        acc.append(met)
        if (i + 1) % o.log_every == 0 or i + 1 == o.steps:
            mean = {k: float(np.nanmean([float(m[k]) for m in acc])) for k in acc[0]}
            mean.update(step=i + 1, seconds=round(time.time() - t0, 1))
            log.append(mean)
            bar.set_postfix(loss=f"{mean['loss']:.3f}", iou=f"{mean['iou_first']:.3f}")
            acc = []
    variables = jax.device_get(state.variables)
    if o.out:
        save(o.out, model, variables, half=o.half)
        if o.half:
            model, variables = load(o.out)
    return model, variables, log
