"""The `sam-jax` command line. Each sub-command lives in a small function below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _convert(args: argparse.Namespace) -> None:
    from sam_jax.checkpoint import load, save
    from sam_jax.convert.export import export_torch

    src, dst = Path(args.src), Path(args.dst)
    model, variables = load(src, variant=args.variant)
    if dst.suffix == ".safetensors":
        save(dst, model, variables)
    elif dst.suffix in (".pt", ".pth"):
        export_torch(dst, model, variables)
    else:
        raise ValueError(f"DST must end in .safetensors, .pt or .pth; got {dst.name!r}")
    print(f"{src} -> {dst} ({model.config.name})")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint: .pt/.pth -> .safetensors, or back to a torch file",
        description="Convert SRC to DST. Torch files are read without torch; writing a "
        ".pt/.pth file (export back to PyTorch) needs torch.",
    )
    p.add_argument("src", help="a .pt/.pth (Meta or ultralytics) or .safetensors file")
    p.add_argument("dst", help="output path ending in .safetensors, .pt or .pth")
    p.add_argument("--variant", default=None, help="override the detected variant name")
    p.set_defaults(run=_convert)


# Sub-command registrars: each adds its parser and sets `run`.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_convert,)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    from sam_jax.cli_segment import add_parser  # `sam-jax segment`, see that module

    add_parser(sub)


COMMANDS += (_add_segment,)


def _add_track_demo_and_training(sub: argparse._SubParsersAction) -> None:
    from sam_jax import cli_demo, cli_track, cli_train

    cli_track.add_parser(sub)
    cli_demo.add_parser(sub)
    cli_train.add_parsers(sub)


COMMANDS += (_add_track_demo_and_training,)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-jax", description="Segment Anything in JAX.")
    sub = parser.add_subparsers(title="sub-commands", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"sam-jax: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
