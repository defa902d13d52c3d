"""A jit-compiled SAM train step with simulated interactive clicks.

    tx = make_optimizer(variables["params"], trainable="decoder", learning_rate=1e-4)
    state = TrainState.create(variables, tx)
    step = make_train_step(model, tx, num_corrections=2)
    state, metrics = step(state, images, targets, key)      # jit-compiled
    state, metrics = step(state, images, targets, key, valid)   # (B, K) False: padding

What trains is chosen by optax masking (frozen leaves get zero updates and no optimizer
state): a preset name of TRAINABLE, or a project's own rule (see `trains`; the optimizer,
with its parameter groups, lives in sam_jax.train.optimizer and is re-exported here). The
step differentiates only the trained leaves (the optimizer from `make_optimizer` names them;
`make_train_step(..., trainable=...)` for another optimizer): frozen ones enter the loss as
constants, so no backward pass runs through a frozen encoder, with or without gradient
accumulation: `make_train_step(..., accumulate=N)` (N micro-batches in one call) or
`make_optimizer(..., accumulate=N)` (over N calls) keep accumulators for the trained leaves
only. (Wrapping the optimizer in `optax.MultiSteps` instead hides the labels from the step,
which then differentiates, and accumulates, every leaf.)
`make_train_step(..., transform=f)` trains a tree that f maps to the parameters, such as
LoRA adapters (sam_jax.train.lora). The images may be the encoder's output instead of
pixels (a frozen encoder run once per image, see `interactive_loss`).
`compute_dtype=jnp.bfloat16` runs the model as `sam_jax.build(..., dtype=jnp.bfloat16)`
does: the encoders (and SAM 2's memory modules) compute in bf16 against float32 parameters,
with LayerNorm and softmax statistics, the decoders and the loss in float32;
`sam_jax.build(..., remat=True)` recomputes encoder blocks in the backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sam_jax.train.clicks import cell_centre, corrective_click, first_prompt, per_row
from sam_jax.train.losses import object_score_loss, sam_loss, soft_targets, weighted_mean
from sam_jax.train.optimizer import (  # re-exported: the names' home before optimizer.py
    NO_DECAY,
    TRAINABLE,
    GlobRule,
    LabelledOptimizer,
    Trainable,
    make_optimizer,
    trainable_labels,
    trains,
)

__all__ = [
    "NO_DECAY",
    "TRAINABLE",
    "GlobRule",
    "LabelledOptimizer",
    "TrainState",
    "Trainable",
    "interactive_loss",
    "is_embedding",
    "make_optimizer",
    "make_train_step",
    "trainable_labels",
    "trains",
]


@flax.struct.dataclass
class TrainState:
    """Variables ({'params', 'buffers', ...}), optimizer state and step count."""

    variables: Any
    opt_state: Any
    step: jnp.ndarray

    @classmethod
    def create(cls, variables: Any, tx: optax.GradientTransformation) -> TrainState:
        return cls(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


# XLA:CPU's default schedule runs independent work concurrently, which keeps more
# intermediates of a backward pass alive at once; the memory-optimised one bounds them
# (sam2.1_t full fine-tune step, bf16, remat: about 25% less temp).
TRAIN_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
}


def is_embedding(model: nn.Module, images: Any) -> bool:
    """Whether `images` is what `model.apply(v, x, method="encode_image")` returns (SAM:
    (B, g, g, D), SAM 2: a dict) rather than (B, S, S, 3) pixels."""
    return isinstance(images, Mapping) or jnp.ndim(images) != 4 or jnp.shape(images)[-1] != 3


def _object_weights(valid: Any, targets: jnp.ndarray) -> jnp.ndarray | None:
    """valid (B, K) or (B,) bool, as targets' leading axes -> (B * K,) float32 or None."""
    if valid is None:
        return None
    if jnp.shape(valid) != targets.shape[:-2]:
        raise ValueError(
            f"valid must be {targets.shape[:-2]} (targets' object axes) for targets "
            f"{targets.shape}; got {jnp.shape(valid)}"
        )
    return jnp.asarray(valid).reshape(-1).astype(jnp.float32)


def interactive_loss(
    model: nn.Module,
    variables: Any,
    images: Any,
    targets: jnp.ndarray,
    key: jax.Array,
    num_corrections: int = 2,
    box_prob: float = 0.5,
    *,
    valid: jnp.ndarray | None = None,
    ignore: jnp.ndarray | None = None,
    **loss_weights: float,
) -> tuple[jnp.ndarray, dict]:
    """SAM's loss over one initial prompt and `num_corrections` corrective clicks.

    images (B, S, S, 3) normalised, or their embeddings as `model.apply(variables, images,
    method="encode_image")` returns them (the encoder then does not run: a frozen encoder's
    features can be computed once; with SAM 2 they already went through the decoder's
    conv_s0 / conv_s1, which then get no gradient). targets (B, S, S) bool at image
    resolution, or (B, K, S, S) for K objects per image (as SAM trained several masks per
    image: the encoder, the costly part, runs once for all K). valid (B,) or (B, K) bool:
    False marks a padding object, which adds nothing to the loss, its gradients or the
    metrics (means over valid objects; its prompts, even from an empty mask, are finite).
    ignore (B, S, S) bool: each image's void pixels (e.g. COCO crowd regions), left out of
    every object's losses and IoUs, and never the place of a corrective click.

    Each round feeds the previous best low-res logits back as the mask input. Losses and
    error regions are taken at the logits' resolution (4x the embedding grid), against the
    target's area average over each logit cell, which keeps the step cheap. The first prompt
    is a noisy box with probability `box_prob` (trained through the single-mask output), else
    one click (the multimask output, its best mask trained), as SAM 2 trains. Object i of the flattened
    (B * K) objects draws its prompts from `jax.random.fold_in(key, i)` alone, whatever else
    is in the batch. SAM 2 models (image mode) also get the object-score BCE (the object is
    present).
    """
    weights = _object_weights(valid, targets)
    known = _known_fraction(ignore, targets, model.config.mask_input_size)
    if is_embedding(model, images):
        emb = images
    else:
        emb = model.apply(variables, images, method="encode_image")
    if targets.ndim == 4:
        k = targets.shape[1]
        emb = jax.tree.map(lambda e: jnp.repeat(e, k, axis=0), emb)
        targets = targets.reshape(-1, *targets.shape[2:])
    soft = soft_targets(targets, model.config.mask_input_size)
    scale = targets.shape[-1] / model.config.mask_input_size
    rows = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(targets.shape[0]))
    round_keys = lambda r: jax.vmap(lambda k: jax.random.fold_in(k, r))(rows)
    prompt = functools.partial(first_prompt, box_prob=box_prob)
    coords, labels = per_row(prompt, round_keys(0), targets)
    mask_in = None
    total, metrics = 0.0, []
    predict = functools.partial(model.apply, variables, emb, method="predict_masks")
    for r in range(num_corrections + 1):
        if r == 0:
            logits, iou, *score = _first_round(predict, coords, labels, box_prob)
        else:
            logits, iou, *score = predict(
                point_coords=coords,
                point_labels=labels,
                mask_inputs=mask_in,
                multimask_output=False,
            )
        logits = logits.astype(jnp.float32)
        loss, met = sam_loss(
            logits,
            iou.astype(jnp.float32),
            soft,
            weights=weights,
            pixel_weights=known,
            **loss_weights,
        )
        if score:  # SAM 2: every prompted object is present
            present = jnp.ones(score[0].shape[:1], bool)
            score_loss = object_score_loss(score[0].astype(jnp.float32), present)
            loss = loss + weighted_mean(score_loss, weights)
        total = total + loss
        metrics.append(met)
        if r == num_corrections:
            break
        best = jnp.argmax(iou, axis=1)
        low = jax.lax.stop_gradient(jnp.take_along_axis(logits, best[:, None, None, None], 1)[:, 0])
        void = None if known is None else known < 0.5
        click, click_label = per_row(corrective_click, round_keys(r + 1), low, soft > 0.5, void)
        coords = jnp.concatenate([coords, cell_centre(click, scale)], axis=1)
        labels = jnp.concatenate([labels, click_label], axis=1)
        mask_in = jnp.clip(low, -32.0, 32.0)[..., None]  # SAM 2 marks absent objects -1024
    out = {
        "loss": total / (num_corrections + 1),
        "iou_first": metrics[0]["iou"],
        "iou_last": metrics[-1]["iou"],
    }
    return out["loss"], out


def _known_fraction(ignore, targets, size: int) -> jnp.ndarray | None:
    """ignore (B, S, S) bool -> each logit cell's known fraction (B * K, size, size), rows
    in targets' flattened object order; None for None."""
    if ignore is None:
        return None
    want = (targets.shape[0], *targets.shape[-2:])
    if jnp.shape(ignore) != want:
        raise ValueError(
            f"ignore must be {want} (B, S, S) for targets {targets.shape}; got {jnp.shape(ignore)}"
        )
    known = 1.0 - soft_targets(jnp.asarray(ignore), size)
    if targets.ndim == 4:
        known = jnp.repeat(known, targets.shape[1], axis=0)
    return known


def _first_round(predict: Callable, coords, labels, box_prob: float) -> tuple:
    """The first prompt's (logits (B, M, h, w), iou (B, M), *object score), as SAM 2 trains:
    a single click is ambiguous and trains the multimask output; a box trains the
    single-mask output. Where both kinds occur, a box row's one mask stands in all M = 3
    places, which the loss (best of the masks, mean IoU error) counts as that one mask."""
    run = lambda multi: predict(point_coords=coords, point_labels=labels, multimask_output=multi)
    if box_prob <= 0:
        return run(True)
    if box_prob >= 1:
        return run(False)
    (multi, multi_iou, *score), (one, one_iou, *_) = run(True), run(False)
    is_box = labels[:, 0] == 2  # first_prompt puts a box's corners first (labels 2, 3)
    logits = jnp.where(is_box[:, None, None, None], one, multi)
    iou = jnp.where(is_box[:, None], one_iou, multi_iou)
    return logits, iou, *score


def _split(params: Any, labels: Any | None) -> tuple[dict, dict]:
    """(trained, frozen) flat {path tuple: leaf} dicts of `params`; labels None: all train."""
    flat = flax.traverse_util.flatten_dict(params)
    if labels is None:
        return flat, {}
    lab = flax.traverse_util.flatten_dict(labels)
    trained = {k: v for k, v in flat.items() if lab[k] == "train"}
    return trained, {k: v for k, v in flat.items() if lab[k] != "train"}


def _at_compute_dtype(model: nn.Module, compute_dtype: Any) -> tuple[nn.Module, Any]:
    """(the model to run, the dtype to cast variables and images to, or None).

    A model with a `dtype` field (Sam, Sam2) is cloned with `compute_dtype` and keeps its
    float32 variables; a module without one gets its variables and images cast instead.
    None: the model as it is."""
    if compute_dtype is None:
        return model, None
    if "dtype" in {f.name for f in dataclasses.fields(model)}:
        return model.clone(dtype=compute_dtype), None
    return model, compute_dtype


def _cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of `tree` cast to dtype; integer and bool leaves as they are."""
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def _micro_batches(tree: Any, n: int) -> Any:
    """Every leaf (n * b, ...) -> (n, b, ...): n micro-batches along a new leading axis."""
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), tree)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    num_corrections: int = 2,
    compute_dtype: Any = None,
    loss_fn: Callable = interactive_loss,
    *,
    trainable: Trainable | None = None,
    accumulate: int = 1,
    transform: Callable[[Any], Any] | None = None,
    compiler_options: dict[str, Any] | None = None,
    **loss_weights: float,
) -> Callable:
    """jit-compiled (state, images, targets, key, valid=None, ignore=None) -> (state, metrics).
    `loss_weights` go to `sam_loss` (focal_weight, dice_weight, iou_weight, focal_alpha,
    focal_gamma).

    images: (B, S, S, 3) pixels, or any pytree with batch-leading leaves the loss_fn reads,
    such as `interactive_loss`'s precomputed embeddings. valid: None, or a bool array of
    targets' object axes ((B, K) for targets (B, K, S, S)), False for padding objects; it
    reaches loss_fn as the keyword `valid` only when given, so loss_fns without it keep
    working. ignore: None, or each image's (clip's) void pixels, (B, S, S) bool for images
    ((B, T, S, S) for clips), passed on as the keyword `ignore` when given.

    compute_dtype: the model's computation dtype for this step (e.g. jnp.bfloat16; see
    `sam_jax.build`), parameters and optimizer state staying float32; None: the model's own.

    transform: the state's params are a tree that transform maps to the model's params
    inside the differentiated function (e.g. `functools.partial(lora.lora_merge,
    config=config)`); the optimizer works on the tree. None: they are the model's params.

    Only the leaves that train are differentiated: those `trainable` names (see `trains`),
    by default those of the optimizer's `labels` (`make_optimizer`), else every leaf. The
    others get zero gradients, and no work: they enter the loss as constants.

    accumulate=N: images, targets and valid hold N micro-batches along axis 0 (batch N * b);
    micro-batch i (rows i*b .. i*b+b-1) runs with key `jax.random.fold_in(key, i)`, one at
    a time (a lax.scan, so activation memory is one micro-batch's), and the optimizer gets
    the mean of their gradients, accumulated for the trained leaves only; metrics are their
    means.

    compiler_options: XLA options for compiling the step; None: `TRAIN_COMPILER_OPTIONS` on
    the CPU (a schedule that minimises peak memory), none elsewhere."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1; got {accumulate}")
    fixed_labels = getattr(tx, "labels", None) if trainable is None else None
    run_model, cast_dtype = _at_compute_dtype(model, compute_dtype)

    def grads_of(variables, images, targets, key, masks, labels):
        """Gradients of the trained leaves (flat dict) and the loss's metrics; masks: the
        step's valid and ignore (each None or an array)."""
        trained, frozen = _split(variables["params"], labels)
        extra = {k: v for k, v in zip(("valid", "ignore"), masks, strict=True) if v is not None}

        def objective(trained):
            params = flax.traverse_util.unflatten_dict({**frozen, **trained})
            if transform is not None:
                params = transform(params)
            run_vars, run_images = {**variables, "params": params}, images
            if cast_dtype is not None:
                run_vars = _cast_floats(run_vars, cast_dtype)
                run_images = _cast_floats(images, cast_dtype)
            return loss_fn(
                run_model,
                run_vars,
                run_images,
                targets,
                key,
                num_corrections,
                **extra,
                **loss_weights,
            )

        return jax.grad(objective, has_aux=True)(trained)

    def accumulated(variables, images, targets, key, masks, labels):
        """grads_of's mean over the micro-batches, and the mean of their metrics."""
        if targets.shape[0] % accumulate:
            raise ValueError(
                f"accumulate={accumulate} must divide the batch; got {targets.shape[0]}"
            )

        def add_micro_batch(acc, xs):
            i, im, tg, mk = xs
            k = jax.random.fold_in(key, i)
            g, met = grads_of(variables, im, tg, k, mk, labels)
            return jax.tree.map(jnp.add, acc, g), met

        zeros = jax.tree.map(jnp.zeros_like, _split(variables["params"], labels)[0])
        xs = (jnp.arange(accumulate), *_micro_batches((images, targets, masks), accumulate))
        total, metrics = jax.lax.scan(add_micro_batch, zeros, xs)
        grads = jax.tree.map(lambda g: g / accumulate, total)
        return grads, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    def step(state: TrainState, images, targets, key, valid=None, ignore=None):
        params = state.variables["params"]
        labels = fixed_labels
        if trainable is not None:
            labels = trainable_labels(params, trainable)
        grads_fn = grads_of if accumulate == 1 else accumulated
        masks = (valid, ignore)
        grads, metrics = grads_fn(state.variables, images, targets, key, masks, labels)
        frozen = _split(params, labels)[1]
        grads = {**jax.tree.map(jnp.zeros_like, frozen), **grads}
        grads = flax.traverse_util.unflatten_dict(grads)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(state.variables["params"], updates)
        new = TrainState({**state.variables, "params": params}, opt_state, state.step + 1)
        return new, metrics

    if compiler_options is None:
        compiler_options = TRAIN_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
    return jax.jit(step, donate_argnums=0, compiler_options=compiler_options or None)
