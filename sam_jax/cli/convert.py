"""`sam-jax convert`: a checkpoint from one file format to another."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from sam_jax.cli import flags

OUTPUT_SUFFIXES = (".safetensors", ".pt", ".pth")


def _check_destination(dst: Path) -> None:
    """ValueError before any loading when DST cannot be written."""
    if dst.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"DST must end in {', '.join(OUTPUT_SUFFIXES)}; got {dst.name!r}")
    if dst.suffix != ".safetensors" and importlib.util.find_spec("torch") is None:
        raise ValueError(f"writing {dst.name} (a torch file) needs torch: pip install torch")


def run(args: argparse.Namespace) -> None:
    """Read args.src (any checkpoint `sam_jax.load` reads) and write args.dst."""
    from sam_jax.checkpoint import load, save
    from sam_jax.convert.export import export_torch

    src, dst = Path(args.src), Path(args.dst)
    _check_destination(dst)
    model, variables = load(src, variant=args.variant)
    if dst.suffix == ".safetensors":
        save(dst, model, variables)
    else:
        export_torch(dst, model, variables)
    print(f"{src} -> {dst} ({model.config.name})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `convert` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint: .pt/.pth -> .safetensors, or back to a torch file",
        description="Convert SRC to DST. Torch files are read without torch; writing a "
        ".pt/.pth file (export back to PyTorch) needs torch.",
    )
    p.add_argument("src", metavar="SRC", help=flags.CHECKPOINT_HELP)
    p.add_argument("dst", metavar="DST", help="output path ending in .safetensors, .pt or .pth")
    flags.add_variant(p)
    p.set_defaults(run=run)
