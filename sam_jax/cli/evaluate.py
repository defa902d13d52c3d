"""`sam-jax evaluate`: a checkpoint's mIoU (images) or J&F (videos) on an annotated dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sam_jax.cli import flags

DEFAULT_CLICKS = 5

DESCRIPTION = """\
Evaluate a checkpoint on an annotated dataset (COCO JSON, SA-1B folder, images/ + masks/
folder, or DAVIS / MOSE video layout; detected from what is on disk).

Image datasets: mean IoU over every object at the original resolution, from
  click   one positive click at the object's innermost pixel, best of the 3 masks (default)
  box     the mask's tight box
  clicks  K clicks (--clicks, default 5): each next click at the centre of the largest
          error region (positive on missed object, negative on false positive), the
          previous low-resolution logits fed back, as SAM's interactive protocol

Video datasets (SAM 2 checkpoints): each object prompted on its first annotated frame, then
tracked; DAVIS's region similarity J (IoU) and boundary F-measure F, J&F their mean, over
every annotated frame after the prompt.
  mask    the ground-truth mask (the semi-supervised protocol, default)
  click   one positive click at the mask's innermost pixel
  box     the mask's tight box

Prints one summary line; --json OUT writes the full result (per image / per sequence and
object).
"""


def _prompt_and_clicks(args: argparse.Namespace) -> tuple[str | None, int]:
    """The protocol asked for (None: the dataset's default) and the number of clicks."""
    prompt = args.prompt
    if args.clicks is not None:
        if args.clicks < 1:
            raise ValueError(f"--clicks must be at least 1; got {args.clicks}")
        if prompt is None:
            prompt = "clicks"
        elif prompt != "clicks":
            raise ValueError(f"--clicks applies to --prompt clicks, not --prompt {prompt}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1; got {args.limit}")
    return prompt, DEFAULT_CLICKS if args.clicks is None else args.clicks


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_line(result: dict[str, Any], model_name: str) -> str:
    """The one line `evaluate` prints for a result of `evaluate_model`."""
    prompt = result["prompt"]
    if "J&F" in result:
        return (
            f"J&F {_fmt(result['J&F'])} (J {_fmt(result['J'])}, F {_fmt(result['F'])}) over "
            f"{result['num_objects']} objects in {result['num_sequences']} videos "
            f"(prompt {prompt}, {model_name})"
        )
    line = f"mIoU {_fmt(result['miou'])} over {result['num_objects']} objects in "
    line += f"{result['num_images']} images (prompt {prompt}, {model_name}"
    if prompt == "clicks":
        curve = " ".join(f"{v:.3f}" for v in result["miou_per_click"])
        line += f"; after 1..{len(result['miou_per_click'])} clicks: {curve}"
    return line + ")"


def run(args: argparse.Namespace) -> None:
    """Evaluate args.checkpoint on args.data; print the summary, write args.json."""
    prompt, clicks = _prompt_and_clicks(args)

    from sam_jax.checkpoint import load
    from sam_jax.data import open_dataset
    from sam_jax.evaluation.run import check_prompt, evaluate_model

    dataset = open_dataset(args.data, images=args.images)
    if prompt is not None:
        check_prompt(dataset, prompt)  # before the (slow) load
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    say(f"loading {args.checkpoint}")
    model, params = load(args.checkpoint, variant=args.variant, image_size=args.image_size)
    result = evaluate_model(
        model,
        params,
        dataset,
        prompt=prompt,
        clicks=clicks,
        limit=args.limit,
        progress=not args.quiet,
    )
    line = summary_line(result, model.config.name)
    if args.json is not None:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        line += f", wrote {out}"
    print(line)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `evaluate` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "evaluate",
        help="mIoU (images: click, box, K clicks) or J&F (videos) of a checkpoint on an "
        "annotated dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flags.add_checkpoint(p)
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="the dataset: a COCO .json, or a folder (SA-1B, images/ + masks/, DAVIS / MOSE)",
    )
    p.add_argument(
        "--images", default=None, metavar="DIR", help="a COCO JSON's images folder (its own)"
    )
    p.add_argument(
        "--prompt",
        choices=("click", "box", "mask", "clicks"),
        default=None,
        help="the protocol (images: click, videos: mask)",
    )
    p.add_argument(
        "--clicks",
        type=int,
        default=None,
        metavar="K",
        help=f"clicks per object of --prompt clicks ({DEFAULT_CLICKS}); implies it",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write the full result as JSON")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    flags.add_variant(p)
    flags.add_image_size(p)
    flags.add_quiet(p)
    p.set_defaults(run=run)
