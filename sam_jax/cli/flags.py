"""Flags shared by the `sam-jax` sub-commands, each defined once here.

A flag that two sub-commands offer has one spelling, metavar and help text; only what it
names (a mask PNG, a folder) and its default may differ per sub-command. Parsing stays
free of jax: nothing here imports the model code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CHECKPOINT_HELP = (
    "a .pt/.pth file (Meta or ultralytics, read without torch), a sam_jax .safetensors file "
    "or the name of a bundled model"
)
_POINT_FORMATS = ("X,Y", "X,Y,LABEL")
_BOX_FORMAT = "X0,Y0,X1,Y1"


def _numbers(text: str, flag: str, formats: Sequence[str]) -> list[float]:
    counts = {f.count(",") + 1 for f in formats}
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"{flag} must be {' or '.join(formats)} with finite numbers; got {text!r}"
        )
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """ "X,Y" or "X,Y,LABEL" -> (x, y, label); label 1 (foreground, the default) or 0."""
    values = _numbers(text, "--point", _POINT_FORMATS)
    label = 1 if len(values) == 2 else values[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (foreground) or 0 (background); got {text!r}"
        )
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """ "X0,Y0,X1,Y1" -> (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0."""
    x0, y0, x1, y1 = _numbers(text, "--box", (_BOX_FORMAT,))
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"--box must be {_BOX_FORMAT} with X1 >= X0 and Y1 >= Y0; got {text!r}"
        )
    return x0, y0, x1, y1


def add_hidden_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """Accept the old spelling `old` for the flag stored in `dest`, without listing it in
    --help. The alias has no default of its own, so the canonical flag's default holds."""
    parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def add_checkpoint(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    default: str | None = None,
    help: str = CHECKPOINT_HELP,
    aliases: Sequence[str] = (),
) -> None:
    """--checkpoint CKPT (dest `checkpoint`); `aliases` are hidden old spellings."""
    parser.add_argument(
        "--checkpoint", required=required, default=default, metavar="CKPT", help=help
    )
    for old in aliases:
        add_hidden_alias(parser, old, "checkpoint")


def add_variant(parser: argparse.ArgumentParser) -> None:
    """--variant NAME: the model variant, instead of the one detected from the checkpoint."""
    parser.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="use this model variant (a name in sam_jax.VARIANTS) instead of the detected one",
    )


def add_image_size(parser: argparse.ArgumentParser) -> None:
    """--image-size S: run the model at an S x S input instead of its own."""
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="run the model at an S x S input instead of its own (faster, coarser)",
    )


def add_out(
    parser: argparse.ArgumentParser,
    *,
    metavar: str,
    help: str,
    required: bool = True,
    default: str | None = None,
) -> None:
    """--out PATH (dest `out`): where the sub-command writes; `metavar` says what it is."""
    parser.add_argument("--out", required=required, default=default, metavar=metavar, help=help)


def add_prompts(parser: argparse.ArgumentParser, *, pixels_of: str = "image") -> None:
    """--point X,Y[,LABEL] (repeatable; dest `point`, a list or None) and --box X0,Y0,X1,Y1
    (dest `box`), in pixels of `pixels_of`."""
    parser.add_argument(
        "--point",
        action="append",
        type=parse_point,
        metavar="X,Y[,LABEL]",
        help=f"a click in {pixels_of} pixels; LABEL 1 foreground (default) or 0 background; "
        "repeatable",
    )
    parser.add_argument(
        "--box", type=parse_box, metavar=_BOX_FORMAT, help=f"a box in {pixels_of} pixels"
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet: no progress messages or bars."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages or bar")


@dataclass(frozen=True)
class GeneratorFlag:
    """One option of segment-everything, offered as --NAME-WITH-DASHES."""

    type: type
    default: float
    metavar: str
    help: str


# Segment-everything options, Meta's names; defaults are SAM's own.
GENERATOR_FLAGS: dict[str, GeneratorFlag] = {
    "points_per_side": GeneratorFlag(int, 32, "N", "grid points per side"),
    "points_per_batch": GeneratorFlag(int, 64, "N", "prompts per decoder batch"),
    "pred_iou_thresh": GeneratorFlag(float, 0.88, "T", "keep masks whose predicted IoU > T"),
    "stability_score_thresh": GeneratorFlag(
        float, 0.95, "T", "keep masks whose stability score > T"
    ),
    "crop_n_layers": GeneratorFlag(int, 0, "N", "extra layers of image crops"),
    "min_mask_region_area": GeneratorFlag(
        int, 0, "A", "fill holes and drop islands smaller than A pixels, 0: off"
    ),
}


def add_generator_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Sequence[str] = tuple(GENERATOR_FLAGS),
    **defaults: float,
) -> None:
    """The segment-everything options `names` (keys of GENERATOR_FLAGS), each stored under
    its key; `defaults` replaces SAM's default for a sub-command (shown in --help)."""
    unknown = set(names) - set(GENERATOR_FLAGS) | set(defaults) - set(names)
    if unknown:
        raise ValueError(f"not segment-everything flags of this parser: {sorted(unknown)}")
    for name in names:
        flag = GENERATOR_FLAGS[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=flag.type,
            default=defaults.get(name, flag.default),
            metavar=flag.metavar,
            help=flag.help + " (%(default)s)",
        )
