"""Flags shared by the `sam-jax` sub-commands, each defined once here.

A flag that two sub-commands offer has one spelling, metavar and help text; only what it
names (a mask PNG, a folder) and its default may differ per sub-command. --point / --box
prompts carry an optional object id and `group_prompts` turns them into objects
(PROMPTS_HELP states the rules). Parsing stays free of jax: nothing here imports the model
code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

CHECKPOINT_HELP = (
    "a .pt/.pth file (Meta or ultralytics, read without torch), a sam_jax .safetensors file, "
    "a Hugging Face transformers folder or the name of a bundled model"
)
POINT_METAVAR = "X,Y[,LABEL][@OBJ]"
BOX_METAVAR = "X0,Y0,X1,Y1[@OBJ]"
# segment's --box: SAM 3's concept model also takes negative exemplar boxes (LABEL 0).
LABELLED_BOX_METAVAR = "X0,Y0,X1,Y1[,LABEL][@OBJ]"
PROMPTS_HELP = """\
Prompts: --point X,Y[,LABEL][@OBJ] (a click; LABEL 1 foreground, the default, or 0
background) and --box X0,Y0,X1,Y1[@OBJ], both repeatable. @OBJ names the object (an id
from 1 to 65535) that the prompt belongs to. Without it a point belongs to object 1 and the
n-th box to object n, so `--box A --box B` are two objects and `--point P --box A` one.
An object has at most one box and any number of points.
"""
_MAX_OBJECT_ID = 65535  # a 16-bit label PNG holds the ids


class Point(NamedTuple):
    """One --point: pixels (x, y), label 1 (foreground) or 0, object id (None: object 1)."""

    x: float
    y: float
    label: int
    obj: int | None = None


class Box(NamedTuple):
    """One --box: pixels x0, y0, x1, y1, object id (None: numbered by position) and label
    (1, or 0 for a negative exemplar of SAM 3's concept prompts)."""

    x0: float
    y0: float
    x1: float
    y1: float
    obj: int | None = None
    label: int = 1


@dataclass(frozen=True, kw_only=True)
class ObjectPrompt:
    """The prompts of one object: points (N, 2) and labels (N,) (N may be 0), a box (4,)
    xyxy or None."""

    obj_id: int
    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None


def _split_object(text: str, flag: str, formats: str) -> tuple[str, int | None]:
    """ "...@OBJ" -> ("...", OBJ); no "@" -> (text, None)."""
    if "@" not in text:
        return text, None
    body, _, obj = text.partition("@")
    if not obj.isdigit() or not 1 <= int(obj) <= _MAX_OBJECT_ID:
        raise argparse.ArgumentTypeError(
            f"{flag} must be {formats} with OBJ an integer object id from 1 to "
            f"{_MAX_OBJECT_ID}; got {text!r}"
        )
    return body, int(obj)


def _numbers(text: str, flag: str, counts: set[int], formats: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"{flag} must be {formats} with finite numbers; got {text!r}"
        )
    return values


def parse_point(text: str) -> Point:
    """ "X,Y", "X,Y,LABEL", each optionally followed by "@OBJ" -> Point; LABEL 1
    (foreground, the default) or 0 (background)."""
    formats = "X,Y or X,Y,LABEL (then optionally @OBJ)"
    body, obj = _split_object(text, "--point", formats)
    values = _numbers(body, "--point", {2, 3}, formats)
    label = 1 if len(values) == 2 else values[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (foreground) or 0 (background); got {text!r}"
        )
    return Point(values[0], values[1], int(label), obj)


def parse_box(text: str, *, labelled: bool = False) -> Box:
    """ "X0,Y0,X1,Y1", optionally followed by "@OBJ" -> Box with x1 >= x0 and y1 >= y0;
    labelled=True also takes "X0,Y0,X1,Y1,LABEL" with LABEL 1 (the default) or 0."""
    formats = "X0,Y0,X1,Y1" + (" or X0,Y0,X1,Y1,LABEL" if labelled else "")
    formats += " (then optionally @OBJ)"
    body, obj = _split_object(text, "--box", formats)
    values = _numbers(body, "--box", {4, 5} if labelled else {4}, formats)
    x0, y0, x1, y1 = values[:4]
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"--box must be X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0; got {text!r}"
        )
    label = 1 if len(values) == 4 else values[4]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--box label must be 1 (positive exemplar) or 0 (negative); got {text!r}"
        )
    return Box(x0, y0, x1, y1, obj, int(label))


def parse_labelled_box(text: str) -> Box:
    """parse_box(text, labelled=True): the --box of a sub-command that runs SAM 3's concept
    model."""
    return parse_box(text, labelled=True)


def group_prompts(
    points: Sequence[Point] | None, boxes: Sequence[Box] | None
) -> list[ObjectPrompt]:
    """The objects that --point / --box flags describe, by increasing id (see PROMPTS_HELP);
    empty when there is no prompt. ValueError when an object gets two boxes."""
    box_of: dict[int, np.ndarray] = {}
    for n, b in enumerate(boxes or [], start=1):
        obj = n if b.obj is None else b.obj
        if obj in box_of:
            raise ValueError(
                f"object {obj} has two boxes (--box {b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g} and "
                "an earlier one); give each object one box, e.g. --box X0,Y0,X1,Y1@2"
            )
        box_of[obj] = np.array(b[:4], np.float32)
    clicks: dict[int, list[Point]] = {}
    for p in points or []:
        clicks.setdefault(1 if p.obj is None else p.obj, []).append(p)
    objects = []
    for obj in sorted(set(box_of) | set(clicks)):
        mine = clicks.get(obj, [])
        objects.append(
            ObjectPrompt(
                obj_id=obj,
                points=np.array([p[:2] for p in mine], np.float32).reshape(-1, 2),
                labels=np.array([p.label for p in mine], np.int32),
                box=box_of.get(obj),
            )
        )
    return objects


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


def add_prompts(
    parser: argparse.ArgumentParser, *, pixels_of: str = "image", box_labels: bool = False
) -> None:
    """--point X,Y[,LABEL][@OBJ] (dest `point`) and --box X0,Y0,X1,Y1[@OBJ] (dest `box`),
    both repeatable (lists or None), in pixels of `pixels_of`; `group_prompts` turns them
    into objects (PROMPTS_HELP says how). box_labels=True: --box X0,Y0,X1,Y1[,LABEL][@OBJ]
    (LABEL 0: a negative exemplar for SAM 3's concept model)."""
    parser.add_argument(
        "--point",
        action="append",
        type=parse_point,
        metavar=POINT_METAVAR,
        help=f"a click in {pixels_of} pixels; LABEL 1 foreground (default) or 0 background; "
        "@OBJ: the object it belongs to (1); repeatable",
    )
    label = (
        "; LABEL: 1 a positive exemplar (default), 0 a negative one (SAM 3)" if box_labels else ""
    )
    parser.add_argument(
        "--box",
        action="append",
        type=parse_labelled_box if box_labels else parse_box,
        metavar=LABELLED_BOX_METAVAR if box_labels else BOX_METAVAR,
        help=f"a box in {pixels_of} pixels; @OBJ: its object (the n-th box: n){label}; repeatable",
    )


def add_output_mode(parser: argparse.ArgumentParser) -> None:
    """--output-mode MODE (dest `output_mode`): how the JSON records hold the masks."""
    parser.add_argument(
        "--output-mode",
        choices=("uncompressed_rle", "coco_rle", "binary_mask"),
        default="uncompressed_rle",
        help="masks in the JSON records: uncompressed_rle (COCO's {size, counts: [runs]}, "
        "column-major), coco_rle (compressed, pycocotools' mask.decode reads it; needs "
        "pip install 'sam-jax[data]') or binary_mask (each mask a 0/255 PNG in OUT_masks/, "
        "the record names the file) (%(default)s)",
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet: no progress messages or bars."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages or bar")


@dataclass(frozen=True, kw_only=True)
class GeneratorFlag:
    """One option of segment-everything, offered as --NAME-WITH-DASHES (bool options as
    --NAME / --no-NAME). `default` is what --help shows: the generator's own default,
    which applies when the flag is not given."""

    type: type
    default: Any
    metavar: str | None
    help: str


# Segment-everything options, Meta's names; defaults are the generator's (MaskGenerator's
# FAMILY_DEFAULTS where they depend on the model).
GENERATOR_FLAGS: dict[str, GeneratorFlag] = {
    "points_per_side": GeneratorFlag(
        type=int, default=32, metavar="N", help="grid points per side"
    ),
    "points_per_batch": GeneratorFlag(
        type=int, default=64, metavar="N", help="prompts per decoder batch"
    ),
    "pred_iou_thresh": GeneratorFlag(
        type=float,
        default="0.88 for SAM, 0.8 for SAM 2",
        metavar="T",
        help="keep masks whose predicted IoU > T",
    ),
    "stability_score_thresh": GeneratorFlag(
        type=float, default=0.95, metavar="T", help="keep masks whose stability score > T"
    ),
    "stability_score_offset": GeneratorFlag(
        type=float,
        default="0.95 for SAM, 1.0 for SAM 2",
        metavar="D",
        help="stability score: IoU of the masks at the mask threshold - D and + D",
    ),
    "mask_threshold": GeneratorFlag(
        type=float, default=0.0, metavar="T", help="a pixel is in a mask when its logit > T"
    ),
    "box_nms_thresh": GeneratorFlag(
        type=float, default=0.7, metavar="T", help="drop masks whose box IoU with a better one > T"
    ),
    "crop_n_layers": GeneratorFlag(
        type=int, default=0, metavar="N", help="extra layers of image crops"
    ),
    "crop_nms_thresh": GeneratorFlag(
        type=float, default=0.7, metavar="T", help="as --box-nms-thresh, between crops"
    ),
    "crop_overlap_ratio": GeneratorFlag(
        type=float,
        default=round(512 / 1500, 4),
        metavar="R",
        help="overlap of the first layer's crops, a fraction of the image's short side",
    ),
    "crop_n_points_downscale_factor": GeneratorFlag(
        type=int, default=1, metavar="F", help="points per side divided by F in each crop layer"
    ),
    "min_mask_region_area": GeneratorFlag(
        type=int,
        default=0,
        metavar="A",
        help="fill holes and drop islands smaller than A pixels, 0: off",
    ),
    "multimask_output": GeneratorFlag(
        type=bool, default=True, metavar=None, help="three candidate masks per grid point, else one"
    ),
    "use_m2m": GeneratorFlag(
        type=bool,
        default=False,
        metavar=None,
        help="refine each mask once from its own logits (SAM 2's mask-to-mask step)",
    ),
}


def add_generator_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Sequence[str] = tuple(GENERATOR_FLAGS),
    **defaults: Any,
) -> None:
    """The segment-everything options `names` (keys of GENERATOR_FLAGS), each stored under
    its key. A flag not given stores None (the generator's default applies, see
    `generator_options`) unless `defaults` sets a value for this sub-command (shown in
    --help)."""
    unknown = set(names) - set(GENERATOR_FLAGS) | set(defaults) - set(names)
    if unknown:
        raise ValueError(f"not segment-everything flags of this parser: {sorted(unknown)}")
    for name in names:
        flag = GENERATOR_FLAGS[name]
        shown = defaults.get(name, flag.default)
        kwargs: dict[str, Any] = {"default": defaults.get(name)}
        if flag.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            shown = "on" if shown else "off"
        else:
            kwargs.update(type=flag.type, metavar=flag.metavar)
        parser.add_argument("--" + name.replace("_", "-"), help=f"{flag.help} ({shown})", **kwargs)


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The segment-everything options given on the command line (or set by a sub-command's
    defaults), for MaskGenerator(model, params, **options)."""
    return {
        name: getattr(args, name)
        for name in GENERATOR_FLAGS
        if getattr(args, name, None) is not None
    }
