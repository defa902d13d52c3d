"""A jit-compiled SAM train step with simulated interactive clicks.

    tx = make_optimizer(variables["params"], trainable="decoder", learning_rate=1e-4)
    state = TrainState.create(variables, tx)
    step = make_train_step(model, tx, num_corrections=2)
    state, metrics = step(state, images, targets, key)      # jit-compiled

What trains is chosen by optax masking (frozen leaves get zero updates and no optimizer
state): a preset name of TRAINABLE, or a project's own rule (see `trains`). The step
differentiates only the trained leaves (the optimizer from `make_optimizer` names them;
`make_train_step(..., trainable=...)` for another optimizer): frozen ones enter the loss as
constants, so no backward pass runs through a frozen encoder, with or without gradient
accumulation: `make_train_step(..., accumulate=N)` (N micro-batches in one call) or
`make_optimizer(..., accumulate=N)` (over N calls) keep accumulators for the trained leaves
only. (Wrapping the optimizer in `optax.MultiSteps` instead hides the labels from the step,
which then differentiates, and accumulates, every leaf.)
`compute_dtype=jnp.bfloat16` runs the model as `sam_jax.build(..., dtype=jnp.bfloat16)`
does: the encoders (and SAM 2's memory modules) compute in bf16 against float32 parameters,
with LayerNorm and softmax statistics, the decoders and the loss in float32;
`sam_jax.build(..., remat=True)` recomputes encoder blocks in the backward pass.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sam_jax.train.clicks import cell_centre, corrective_click, first_prompt
from sam_jax.train.losses import object_score_loss, sam_loss, soft_targets

# (trained, frozen) glob patterns; trained=None: everything that is not frozen.
GlobRule = tuple[tuple[str, ...] | None, tuple[str, ...]]
# A preset name, a GlobRule, or "/"-joined parameter path -> whether it trains.
Trainable = str | GlobRule | Callable[[str], bool]

# What trains under each preset: (trained, frozen) glob patterns over "/"-joined parameter
# paths, where trained=None means every parameter not frozen. Names are SAM's and SAM 2's.
TRAINABLE: dict[str, GlobRule] = {
    "decoder": (("mask_decoder/*", "sam_mask_decoder/*"), ()),
    "prompt_decoder": (
        ("prompt_encoder/*", "mask_decoder/*", "sam_prompt_encoder/*", "sam_mask_decoder/*"),
        (),
    ),
    # SAM 2: the heads and the whole memory path learn while the image features stay put.
    "all_but_encoder": (None, ("image_encoder/*",)),
    "all": (None, ()),
}


def trains(trainable: Trainable) -> Callable[[str], bool]:
    """The rule `trainable` names, as "/"-joined parameter path -> whether it trains.

    `trainable` is a preset name (a key of TRAINABLE), a (trained, frozen) pair of glob
    patterns as in TRAINABLE (a project's own preset), or such a rule itself."""
    if callable(trainable):
        return trainable
    if isinstance(trainable, str):
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {list(TRAINABLE)}; got {trainable!r}")
        trainable = TRAINABLE[trainable]
    if not (
        isinstance(trainable, tuple)
        and len(trainable) == 2
        and all(isinstance(p, tuple | type(None)) for p in trainable)
    ):
        raise ValueError(
            "trainable must be a preset name, a (trained, frozen) pair of tuples of glob "
            f"patterns, or a callable; got {trainable!r}"
        )
    trained, frozen = trainable

    def rule(name: str) -> bool:
        hit = lambda patterns: any(fnmatch.fnmatchcase(name, p) for p in patterns)
        return (trained is None or hit(trained)) and not hit(frozen or ())

    return rule


def trainable_labels(params: Any, trainable: Trainable) -> Any:
    """'train' / 'freeze' label for every leaf of `params` (`trains` reads `trainable`)."""
    rule = trains(trainable)
    flat = flax.traverse_util.flatten_dict(params)
    labels = {k: "train" if rule("/".join(k)) else "freeze" for k in flat}
    return flax.traverse_util.unflatten_dict(labels)


class LabelledOptimizer(optax.GradientTransformationExtraArgs):
    """An optax transformation that also carries `labels`, 'train' / 'freeze' per parameter
    leaf, so that the train step differentiates only the trained leaves."""

    labels: Any


def make_optimizer(
    params: Any,
    trainable: Trainable = "all",
    learning_rate: float | optax.Schedule = 1e-4,
    weight_decay: float = 0.1,
    clip_norm: float = 1.0,
    accumulate: int = 1,
) -> LabelledOptimizer:
    """AdamW with global-norm clipping on the parameters `trainable` chooses (a preset name
    of TRAINABLE, a (trained, frozen) glob pair or a path rule: see `trains`); zero updates
    (and no optimizer state) for the rest.

    accumulate=N: gradients of N successive calls are averaged (optax.MultiSteps on the
    trained leaves only) and the parameters move on every N-th call; the clipping applies to
    the averaged gradient."""
    train = optax.chain(
        optax.clip_by_global_norm(clip_norm), optax.adamw(learning_rate, weight_decay=weight_decay)
    )
    if accumulate > 1:
        train = optax.MultiSteps(train, accumulate).gradient_transformation()
    labels = trainable_labels(params, trainable)
    tx = optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)
    out = LabelledOptimizer(*tx)
    out.labels = labels
    return out


@flax.struct.dataclass
class TrainState:
    """Variables ({'params', 'buffers', ...}), optimizer state and step count."""

    variables: Any
    opt_state: Any
    step: jnp.ndarray

    @classmethod
    def create(cls, variables: Any, tx: optax.GradientTransformation) -> TrainState:
        return cls(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


def interactive_loss(
    model: nn.Module,
    variables: Any,
    images: jnp.ndarray,
    targets: jnp.ndarray,
    key: jax.Array,
    num_corrections: int = 2,
    box_prob: float = 0.5,
    **loss_weights: float,
) -> tuple[jnp.ndarray, dict]:
    """SAM's loss over one initial prompt and `num_corrections` corrective clicks.

    images (B, S, S, 3) normalised; targets (B, S, S) bool at image resolution, or
    (B, K, S, S) for K objects per image (as SAM trained several masks per image: the
    encoder, the costly part, runs once for all K). Each round feeds the previous best
    low-res logits back as the mask input. Losses and error regions are taken at the
    logits' resolution (4x the embedding grid), against the target's area average over each
    logit cell, which keeps the step cheap. The first prompt is a noisy box with probability
    `box_prob`, else one click.
    SAM 2 models (image mode) also get the object-score BCE (the object is present).
    """
    emb = model.apply(variables, images, method="encode_image")
    if targets.ndim == 4:
        k = targets.shape[1]
        emb = jax.tree.map(lambda e: jnp.repeat(e, k, axis=0), emb)
        targets = targets.reshape(-1, *targets.shape[2:])
    soft = soft_targets(targets, model.config.mask_input_size)
    scale = targets.shape[-1] / model.config.mask_input_size
    keys = jax.random.split(key, num_corrections + 1)
    coords, labels = first_prompt(keys[0], targets, box_prob)
    mask_in = None
    total, metrics = 0.0, []
    for r in range(num_corrections + 1):
        logits, iou, *score = model.apply(
            variables,
            emb,
            point_coords=coords,
            point_labels=labels,
            mask_inputs=mask_in,
            multimask_output=r == 0,
            method="predict_masks",
        )  # the first prompt may be ambiguous; corrections are not
        logits = logits.astype(jnp.float32)
        loss, met = sam_loss(logits, iou.astype(jnp.float32), soft, **loss_weights)
        if score:  # SAM 2: every prompted object is present
            present = jnp.ones(score[0].shape[:1], bool)
            loss = loss + jnp.mean(object_score_loss(score[0].astype(jnp.float32), present))
        total = total + loss
        metrics.append(met)
        if r == num_corrections:
            break
        best = jnp.argmax(iou, axis=1)
        low = jax.lax.stop_gradient(jnp.take_along_axis(logits, best[:, None, None, None], 1)[:, 0])
        click, click_label = corrective_click(keys[r + 1], low, soft > 0.5)
        coords = jnp.concatenate([coords, cell_centre(click, scale)], axis=1)
        labels = jnp.concatenate([labels, click_label], axis=1)
        mask_in = jnp.clip(low, -32.0, 32.0)[..., None]  # SAM 2 marks absent objects -1024
    out = {
        "loss": total / (num_corrections + 1),
        "iou_first": metrics[0]["iou"],
        "iou_last": metrics[-1]["iou"],
    }
    return out["loss"], out


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


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    num_corrections: int = 2,
    compute_dtype: Any = None,
    loss_fn: Callable = interactive_loss,
    *,
    trainable: Trainable | None = None,
    accumulate: int = 1,
    **loss_weights: float,
) -> Callable:
    """jit-compiled (state, images, targets, key) -> (state, metrics). `loss_weights` go to
    `sam_loss` (focal_weight, dice_weight, iou_weight, focal_alpha, focal_gamma).

    compute_dtype: the model's computation dtype for this step (e.g. jnp.bfloat16; see
    `sam_jax.build`), parameters and optimizer state staying float32; None: the model's own.

    Only the leaves that train are differentiated: those `trainable` names (see `trains`),
    by default those of the optimizer's `labels` (`make_optimizer`), else every leaf. The
    others get zero gradients, and no work: they enter the loss as constants.

    accumulate=N: images and targets hold N micro-batches along axis 0 (batch N * b); micro-
    batch i (rows i*b .. i*b+b-1) runs with key `jax.random.fold_in(key, i)`, one at a time
    (a lax.scan, so activation memory is one micro-batch's), and the optimizer gets the mean
    of their gradients, accumulated for the trained leaves only; metrics are their means."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1; got {accumulate}")
    fixed_labels = getattr(tx, "labels", None) if trainable is None else None
    run_model, cast_dtype = _at_compute_dtype(model, compute_dtype)

    def grads_of(variables, images, targets, key, labels):
        """Gradients of the trained leaves (flat dict) and the loss's metrics."""
        trained, frozen = _split(variables["params"], labels)

        def objective(trained):
            params = flax.traverse_util.unflatten_dict({**frozen, **trained})
            run_vars, run_images = {**variables, "params": params}, images
            if cast_dtype is not None:
                run_vars = jax.tree.map(lambda x: x.astype(cast_dtype), run_vars)
                run_images = images.astype(cast_dtype)
            return loss_fn(
                run_model,
                run_vars,
                run_images,
                targets,
                key,
                num_corrections,
                **loss_weights,
            )

        return jax.grad(objective, has_aux=True)(trained)

    def step(state: TrainState, images, targets, key):
        params = state.variables["params"]
        labels = fixed_labels
        if trainable is not None:
            labels = trainable_labels(params, trainable)
        if accumulate == 1:
            grads, metrics = grads_of(state.variables, images, targets, key, labels)
        else:
            if images.shape[0] % accumulate:
                raise ValueError(
                    f"accumulate={accumulate} must divide the batch; got {images.shape[0]}"
                )
            micro = lambda x: x.reshape(accumulate, x.shape[0] // accumulate, *x.shape[1:])

            def add_micro_batch(acc, xs):
                i, im, tg = xs
                g, met = grads_of(state.variables, im, tg, jax.random.fold_in(key, i), labels)
                return jax.tree.map(jnp.add, acc, g), met

            zeros = jax.tree.map(jnp.zeros_like, _split(params, labels)[0])
            xs = (jnp.arange(accumulate), micro(images), micro(targets))
            total, metrics = jax.lax.scan(add_micro_batch, zeros, xs)
            grads = jax.tree.map(lambda g: g / accumulate, total)
            metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        frozen = _split(params, labels)[1]
        grads = {**jax.tree.map(jnp.zeros_like, frozen), **grads}
        grads = flax.traverse_util.unflatten_dict(grads)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(state.variables["params"], updates)
        new = TrainState({**state.variables, "params": params}, opt_state, state.step + 1)
        return new, metrics

    return jax.jit(step, donate_argnums=0)
