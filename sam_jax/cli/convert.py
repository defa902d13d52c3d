"""`sam-jax convert`: a checkpoint from one file format to another."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from sam_jax.cli import flags

OUTPUT_SUFFIXES = (".safetensors", ".pt", ".pth")
# --to: the output formats that are not told by DST's suffix.
TARGETS = ("hf",)
SRC_HELP = (
    flags.CHECKPOINT_HELP + ", or a Hugging Face transformers folder (config.json + "
    "model.safetensors) or .safetensors file"
)


def _check_destination(dst: Path, to: str | None) -> None:
    """ValueError before any loading when DST cannot be written."""
    if to == "hf":
        if dst.exists() and not dst.is_dir():
            raise ValueError(f"--to hf writes a folder; {dst} is a file")
        return
    if dst.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"DST must end in {', '.join(OUTPUT_SUFFIXES)}; got {dst.name!r} (for a "
            "transformers folder, add --to hf)"
        )
    if dst.suffix != ".safetensors" and importlib.util.find_spec("torch") is None:
        raise ValueError(f"writing {dst.name} (a torch file) needs torch: pip install torch")


def run(args: argparse.Namespace) -> None:
    """Read args.src (any checkpoint `sam_jax.load` reads) and write args.dst."""
    from sam_jax.checkpoint import load, save
    from sam_jax.convert.export import export_torch
    from sam_jax.convert.hf_writer import save_hf

    src, dst = Path(args.src), Path(args.dst)
    _check_destination(dst, args.to)
    model, variables = load(src, variant=args.variant)
    if args.to == "hf":
        save_hf(dst, model, variables)
    elif dst.suffix == ".safetensors":
        save(dst, model, variables)
    else:
        export_torch(dst, model, variables)
    print(f"{src} -> {dst} ({model.config.name})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `convert` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint: .pt/.pth or Hugging Face -> .safetensors, or back to a "
        "torch file or a Hugging Face folder",
        description="Convert SRC to DST. Torch files are read without torch; writing a "
        ".pt/.pth file (export back to PyTorch) needs torch. --to hf writes DST as a Hugging "
        "Face transformers folder (config.json + model.safetensors) that "
        "transformers.AutoModel.from_pretrained reads.",
    )
    p.add_argument("src", metavar="SRC", help=SRC_HELP)
    p.add_argument(
        "dst",
        metavar="DST",
        help="output path ending in .safetensors, .pt or .pth; a folder with --to hf",
    )
    p.add_argument(
        "--to",
        choices=TARGETS,
        default=None,
        help="output format when DST's suffix does not tell it: hf (a transformers folder)",
    )
    flags.add_variant(p)
    p.set_defaults(run=run)
