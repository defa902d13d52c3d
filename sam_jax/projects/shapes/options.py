"""The training recipe's options: one frozen dataclass, from which `train-shapes` parses.

Each field lists its default and help once; `add_arguments` turns the fields into command
line flags (`--field-name`, or the field's own `flag`) and `from_args` reads them back.
Nothing here imports jax, so parsing stays fast.

    options = RecipeOptions(variant="sam_tiny_shapes_p16", steps=4000, out="p1.safetensors")
    model, variables, log = train_sam(options)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

# Names of the trainable rules train_sam accepts: sam_jax.train.step.TRAINABLE's presets
# and this project's `all_but_encoder_positional` (spelled out to keep jax out of parsing;
# a test checks them against recipe.TRAINABLE).
TRAINABLE_CHOICES = (
    "all",
    "all_but_encoder",
    "all_but_encoder_positional",
    "prompt_decoder",
    "decoder",
)


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its command line help; `cli` may hold `flag` (the flag's
    name when not --field-name), `choices`, `required` (on the command line), and for a
    `bool | None` field `false_flag` / `false_help` (the flag that sets False)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecipeOptions:
    """What `train_sam` does: the model to start from, the data, the steps, what trains."""

    variant: str = option(
        "sam_tiny_shapes",
        "variant to build and train from scratch (sam_tiny_shapes_p16, sam_tiny_shapes, "
        "sam2_tiny_shapes, or any core variant)",
    )
    init_from: str | None = option(None, "continue from this checkpoint (file or bundled name)")
    steps: int = option(4000, "train steps")
    batch_size: int = option(8, "scenes (SAM 2: clips) per step")
    num_scenes: int = option(800, "pre-drawn training scenes (SAM 2: videos)")
    learning_rate: float = option(
        1e-3, "peak learning rate (warm-up, then cosine decay)", flag="--lr"
    )
    seed: int = option(0, "seed of the initial weights, batches and clicks")
    clip_len: int = option(
        8, "SAM 2: frames per training clip; 1 trains on single scenes (image mode)"
    )
    objects_per_image: int = option(4, "objects prompted per encoded scene or clip")
    num_corrections: int = option(1, "corrective clicks per prompt", flag="--corrections")
    box_prob: float = option(0.5, "scenes: chance the first prompt is a box")
    patch_size: int | None = option(
        None, "SAM: first give the ViT these finer patches (weights resized, named --variant)"
    )
    trainable: str = option("all", "what trains; the rest stays frozen", choices=TRAINABLE_CHOICES)
    iou_weight: float = option(1.0, "weight of the IoU head's MSE in the loss")
    image_size: int | None = option(None, "train at this input size (square)")
    single_mask_tracking: bool | None = option(
        None,
        "SAM 2: tracked frames give the single-mask output (multimask_output_for_tracking "
        "False), trained as such; saved with the model",
        false_flag="--multimask-tracking",
        false_help="SAM 2: tracked frames give the best of three masks (the reference's default)",
    )
    max_speed: float = option(
        0.03, "SAM 2: the training videos' largest motion per frame and axis, in image sizes"
    )
    reseat_memory: bool = option(
        False,
        "SAM 2: first re-seat the memory path (reseat_memory in "
        "sam_jax/projects/shapes/reseat_memory.py); train it with --trainable "
        "all_but_encoder_positional",
    )
    recent_memory_gain: float | None = option(
        None,
        "SAM 2, re-seated: weigh the most recent frame's memory by this factor "
        "(weigh_recent_memory in sam_jax/projects/shapes/reseat_memory.py)",
    )
    num_maskmem: int | None = option(
        None,
        "SAM 2: remember this many frames (conditioning + recent) instead of the model's own "
        "(shorten_memory in sam_jax/projects/shapes/memory_window.py)",
    )
    log_every: int = option(100, "steps averaged into each entry of the training log")
    out: str | None = option(None, "output .safetensors", required=True)
    half: bool = option(False, "store float16 weights (half the size)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"{f.name} must be one of {list(choices)}; got {getattr(self, f.name)!r}"
                )


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _value_type(annotation: Any) -> type:
    """int for `int` or `int | None`, and so on."""
    if isinstance(annotation, types.UnionType):
        (t,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return t
    return annotation


def add_arguments(parser: argparse.ArgumentParser, cls: type = RecipeOptions) -> None:
    """One flag per field of the dataclass `cls` (dest = the field's name): store_true for a
    bool, a pair of exclusive flags for a `bool | None` with a `false_flag`, else a value
    of the field's type."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, _value_type(hints[f.name])
        common = {"dest": f.name, "help": meta["help"]}
        if "false_flag" in meta:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(_flag(f), action="store_const", const=True, **common)
            group.add_argument(
                meta["false_flag"],
                action="store_const",
                const=False,
                dest=f.name,
                help=meta["false_help"],
            )
        elif kind is bool:
            parser.add_argument(_flag(f), action="store_true", **common)
        else:
            extra = {k: meta[k] for k in ("choices", "required") if k in meta}
            if "choices" not in meta:  # argparse shows the choices instead
                extra["metavar"] = _flag(f).lstrip("-").replace("-", "_").upper()
            parser.add_argument(_flag(f), type=kind, default=f.default, **common, **extra)


def from_args(args: argparse.Namespace, cls: type = RecipeOptions) -> Any:
    """The `cls` instance of the flags `add_arguments` added, as parsed into `args`."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
