"""`sam-jax finetune`: fine-tune a checkpoint on an annotated dataset (flags from
`FinetuneOptions`, one per field)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from sam_jax.cli import flags
from sam_jax.train.checkpoints import RUN_FILE
from sam_jax.train.finetune import FINAL_FILE, RUN_ONLY, FinetuneOptions, finetune

DESCRIPTION = f"""\
Fine-tune a SAM or SAM 2 checkpoint on an annotated dataset (COCO JSON, SA-1B folder,
images/ + masks/ folder, or DAVIS / MOSE video layout; detected from what is on disk).

Images train SAM or SAM 2 with simulated prompts (a click or a box, then corrective clicks)
on --objects-per-image objects per image; videos train SAM 2 on clips of --clip-len frames
through the tracking scan. What trains: --trainable (a preset or glob patterns of parameter
paths), or LoRA adapters (--lora RANK) merged into the saved model.

DIR receives {RUN_FILE}, metrics.jsonl (one JSON object per logged step; evaluations
on --val as {{"step": N, "eval": {{...}}}}), TensorBoard events, orbax checkpoints in
checkpoints/ and {FINAL_FILE}, a plain model for sam_jax.load / --checkpoint.

A DIR that already holds a run is refused unless --resume, which continues it from its
newest checkpoint with the same data order; the options must then be the run's own, except
{", ".join("--" + n.replace("_", "-") for n in sorted(RUN_ONLY - {"resume"}))}.

Images are encoded once and cached (DIR/embeddings) when no image-encoder parameter
trains and augmentation is off (the default: --hflip, --scale, --brightness, --contrast,
--saturation turn it on).
"""


def parse_range(text: str) -> tuple[float, float]:
    """ "LO,HI" -> (lo, hi)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers); got {text!r}") from None
    return lo, hi


def _kind(annotation: Any) -> Any:
    """The field's type without None: int for `int | None`."""
    if isinstance(annotation, types.UnionType):
        (t,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return t
    return annotation


def _shared(parser: argparse.ArgumentParser, name: str) -> bool:
    """Add the shared flag for field `name` (flags.py); False when it has none."""
    if name == "checkpoint":
        flags.add_checkpoint(parser)
    elif name == "out":
        flags.add_out(parser, metavar="DIR", help="the run folder")
    elif name == "quiet":
        flags.add_quiet(parser)
    else:
        return False
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of FinetuneOptions (dest = the field's name)."""
    hints = typing.get_type_hints(FinetuneOptions)
    for f in dataclasses.fields(FinetuneOptions):
        if _shared(parser, f.name):
            continue
        meta, kind = f.metadata, _kind(hints[f.name])
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        common: dict[str, Any] = {"dest": f.name, "help": meta["help"].replace("%", "%%")}
        if kind is bool:
            parser.add_argument(flag, action="store_true", **common)
            continue
        if f.default is dataclasses.MISSING:
            common["required"] = True
        else:
            common["default"] = f.default
            if f.default is not None and not isinstance(f.default, tuple):
                common["help"] += " (%(default)s)"
        if "choices" in meta:
            common["choices"] = meta["choices"]
        else:
            common["metavar"] = meta.get("metavar", f.name.upper())
        if kind == tuple[float, float]:
            common["type"] = parse_range
        elif typing.get_origin(kind) is tuple:
            common["nargs"] = "+"
        else:
            common["type"] = kind
        parser.add_argument(flag, **common)


def from_args(args: argparse.Namespace) -> FinetuneOptions:
    """The FinetuneOptions of parsed flags."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)}
    values.update({k: tuple(v) for k, v in values.items() if isinstance(v, list)})
    return FinetuneOptions(**values)


def summary_line(summary: dict[str, Any]) -> str:
    """The line `finetune` prints at the end."""
    parts = [f"step {summary['steps']}"]
    train = summary["train"] or {}
    names = ["loss", *sorted(n for n in train if n.startswith("iou"))]
    parts += [f"{n} {train[n]:.4f}" for n in names if train.get(n) is not None]
    ev = summary["eval"] or {}
    for name in ("miou", "J&F"):
        if ev.get(name) is not None:
            parts.append(f"val {'mIoU' if name == 'miou' else name} {ev[name]:.4f}")
    cache = ", embedding cache" if summary["embedding_cache"] else ""
    return f"{', '.join(parts)}{cache}; wrote {summary['final']}"


def run(args: argparse.Namespace) -> None:
    """Fine-tune as the flags say; print the summary line."""
    print(summary_line(finetune(from_args(args))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `finetune` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on an annotated image or video dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(run=run)
