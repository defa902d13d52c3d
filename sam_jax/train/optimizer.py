"""The fine-tuning optimizer: AdamW over parameter groups, the rest frozen.

    tx = make_optimizer(variables["params"], "all", 1e-4, encoder_learning_rate=1e-5,
                        layer_decay=0.8)

What trains is a preset name of TRAINABLE or a project's own rule (see `trains`); frozen
leaves get zero updates and no optimizer state. Among the trained leaves, groups differ in
learning rate (the image encoder's own rate, layer-wise decay through its blocks) and in
weight decay (none on biases, norm parameters and embeddings: NO_DECAY). The gradient is
clipped by its global norm over all trained leaves before the groups' AdamW steps.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax
import optax

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

# Leaves without weight decay, as glob patterns over "/"-joined paths (a leading "*" so that
# they also hold under a prefix such as a LoRA tree's "base/"). Every other leaf of SAM,
# MobileSAM and SAM 2 is a dense or conv kernel.
NO_DECAY: tuple[str, ...] = (
    "*/bias",  # dense, conv and norm biases
    "*/scale",  # LayerNorm / LayerNorm2d / BatchNorm scales
    "*/gamma",  # layer scale (SAM 2 memory encoder's fuser)
    "*pos_embed*",  # absolute position embeddings (ViT, Hiera and its window embedding)
    "*/rel_pos_[hw]",  # ViT relative position tables
    "*/attention_biases",  # TinyViT relative position biases
    "*_token/weight",  # decoder output tokens (iou_token, obj_score_token)
    "*_tokens/weight",  # mask_tokens
    "*point_embeddings_*/weight",  # prompt encoder's point-kind embeddings
    "*_embed/weight",  # no_mask_embed, not_a_point_embed
    "*maskmem_tpos_enc",  # SAM 2's learned embeddings outside modules
    "*no_mem_embed",
    "*no_mem_pos_enc",
    "*no_obj_embed_spatial",
    "*no_obj_ptr",
)

_ENCODER = re.compile(r"(?:^|/)image_encoder/(.*)$")
# SAM ViT blocks_i, Hiera trunk/blocks_i, TinyViT layers_s/blocks_j (numbered per stage).
_BLOCK = re.compile(r"^(?:trunk/)?(?:layers_(\d+)/)?blocks_(\d+)/")
_DOWNSAMPLE = re.compile(r"^layers_(\d+)/downsample/")  # TinyViT: after stage s's blocks
_STEM = re.compile(r"^(?:trunk/)?(?:patch_embed|pos_embed)")


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
        return (trained is None or _hit(name, trained)) and not _hit(name, frozen or ())

    return rule


def glob_rule(words: Iterable[str]) -> GlobRule:
    """The (trained, frozen) rule of command-line words: preset names (keys of TRAINABLE),
    glob patterns of parameter paths that train, and "!"-prefixed patterns that stay
    frozen. What trains is the union of the presets and patterns named (everything when
    only exclusions are named) minus the presets' frozen parts and the exclusions:
    `all_but_encoder '!memory_encoder/*'` trains SAM 2's heads and memory attention."""
    trained: list[str] | None = []
    frozen: list[str] = []
    for word in words:
        if word.startswith("!"):
            if len(word) == 1:
                raise ValueError("'!' needs a glob pattern after it, as '!image_encoder/*'")
            frozen.append(word[1:])
        elif word in TRAINABLE:
            preset_trained, preset_frozen = TRAINABLE[word]
            frozen.extend(preset_frozen)
            if preset_trained is None or trained is None:
                trained = None
            else:
                trained.extend(preset_trained)
        elif trained is not None:
            trained.append(word)
    if trained is not None and not trained:
        trained = None  # only exclusions: everything else trains
    return (None if trained is None else tuple(trained)), tuple(frozen)


def _hit(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _paths(params: Any) -> list[str]:
    return ["/".join(k) for k in flax.traverse_util.flatten_dict(params)]


def _by_path(params: Any, label_of: Callable[[str], Any]) -> Any:
    """A tree like `params` with label_of("/"-joined path) at every leaf."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: label_of("/".join(k)) for k in flat})


def trainable_labels(params: Any, trainable: Trainable) -> Any:
    """'train' / 'freeze' label for every leaf of `params` (`trains` reads `trainable`)."""
    rule = trains(trainable)
    return _by_path(params, lambda p: "train" if rule(p) else "freeze")


def encoder_depths(paths: Iterable[str]) -> dict[str, int]:
    """Layer-decay exponent of every image-encoder path among `paths` ("/"-joined; others
    are left out): with n blocks, block i (0-based, counted through the stages of Hiera
    and TinyViT) gets n - i, the patch and position embeddings n + 1, everything after the
    blocks (neck, TinyViT's classifier head) 0. TinyViT's patch merging after stage s
    counts as the last block of that stage."""
    inner = {p: m.group(1) for p in paths if (m := _ENCODER.search(p))}
    stage_block = lambda m: (int(m.group(1) or 0), int(m.group(2)))
    blocks = sorted({stage_block(m) for q in inner.values() if (m := _BLOCK.match(q))})
    index = {b: i for i, b in enumerate(blocks)}
    last_of_stage = {s: i for (s, _), i in index.items()}  # sorted: the stage's last wins
    n = len(blocks)

    def depth(q: str) -> int:
        if m := _BLOCK.match(q):
            return n - index[stage_block(m)]
        if (m := _DOWNSAMPLE.match(q)) and int(m.group(1)) in last_of_stage:
            return n - last_of_stage[int(m.group(1))]
        return n + 1 if _STEM.match(q) else 0

    return {p: depth(q) for p, q in inner.items()}


def _scaled(rate: float | optax.Schedule, factor: float) -> float | optax.Schedule:
    if factor == 1.0:
        return rate
    if callable(rate):
        return lambda count: rate(count) * factor
    return rate * factor


def _group_labels(
    params: Any,
    rule: Callable[[str], bool],
    encoder_rate: bool,
    layer_decay: float | None,
    no_decay: Sequence[str],
) -> tuple[Any, dict[str, tuple[bool, float, bool]]]:
    """(label tree, {label: (encoder rate?, lr factor, weight decay?)}) of the leaves that
    train (`rule`); the others are labelled 'freeze'."""
    depths = encoder_depths(_paths(params)) if layer_decay is not None else {}
    groups: dict[str, tuple[bool, float, bool]] = {}

    def label(path: str) -> str:
        if not rule(path):
            return "freeze"
        encoder = encoder_rate and _ENCODER.search(path) is not None
        factor = layer_decay ** depths[path] if path in depths else 1.0
        decay = not _hit(path, no_decay)
        name = f"{'encoder' if encoder else 'base'}*{factor!r}/{'decay' if decay else 'no_decay'}"
        groups[name] = (encoder, factor, decay)
        return name

    return _by_path(params, label), groups


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
    *,
    encoder_learning_rate: float | optax.Schedule | None = None,
    layer_decay: float | None = None,
    no_decay: Sequence[str] = NO_DECAY,
) -> LabelledOptimizer:
    """AdamW with global-norm clipping on the parameters `trainable` chooses (a preset name
    of TRAINABLE, a (trained, frozen) glob pair or a path rule: see `trains`); zero updates
    (and no optimizer state) for the rest.

    Learning rates are floats or optax schedules. Leaves under image_encoder/ (also under a
    prefix, as in a LoRA tree) step with `encoder_learning_rate` (None: `learning_rate`),
    times layer_decay ** `encoder_depths` (block i of n: n - i; patch embedding n + 1; neck
    0) when `layer_decay` is given. Leaves matching a glob of `no_decay` get no weight decay.
    The gradient of all trained leaves is clipped to global norm `clip_norm` first, then
    each group takes its AdamW step.

    accumulate=N: gradients of N successive calls are averaged (optax.MultiSteps on the
    trained leaves only) and the parameters move on every N-th call; the clipping applies to
    the averaged gradient."""
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1; got {accumulate}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1]; got {layer_decay}")
    if isinstance(no_decay, str):
        raise ValueError(f"no_decay must be a sequence of glob patterns; got {no_decay!r}")
    rule = trains(trainable)
    encoder_rate = encoder_learning_rate is not None
    group_labels, groups = _group_labels(params, rule, encoder_rate, layer_decay, no_decay)

    def adamw(encoder: bool, factor: float, decay: bool) -> optax.GradientTransformation:
        rate = encoder_learning_rate if encoder else learning_rate
        return optax.adamw(_scaled(rate, factor), weight_decay=weight_decay if decay else 0.0)

    # frozen leaves reach by_group masked out (no state): "freeze" only completes the labels
    steps = {g: adamw(*spec) for g, spec in groups.items()} | {"freeze": optax.set_to_zero()}
    by_group = optax.multi_transform(steps, group_labels)
    train = optax.chain(optax.clip_by_global_norm(clip_norm), by_group)
    if accumulate > 1:
        train = optax.MultiSteps(train, accumulate).gradient_transformation()
    labels = trainable_labels(params, rule)
    tx = optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)
    out = LabelledOptimizer(*tx)
    out.labels = labels
    return out
