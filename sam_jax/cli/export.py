"""`sam-jax export`: a checkpoint as serialized `jax.export` programs for serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam_jax.cli import flags


def run(args: argparse.Namespace) -> None:
    """Export args.ckpt's programs and manifest.json to args.out_dir (`sam_jax.serving`)."""
    from sam_jax.checkpoint import load
    from sam_jax.serving import check_platforms, export_programs, require_flatbuffers

    platforms = check_platforms(args.platforms)  # before the (slow) loading
    if args.image_size is not None and args.image_size <= 0:
        raise ValueError(f"--image-size must be positive; got {args.image_size}")
    require_flatbuffers()
    model, params = load(args.ckpt, variant=args.variant, image_size=args.image_size)
    out = Path(args.out_dir)
    manifest = export_programs(
        model, params, out, platforms=platforms, params_as_input=args.params_as_input
    )
    for entry in manifest["programs"].values():
        size = (out / entry["file"]).stat().st_size / 2**20
        print(f"{out / entry['file']} ({size:.1f} MiB)")
    print(f"{out / 'manifest.json'}: {manifest['model']['name']} for {','.join(platforms)}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `export` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "export",
        help="export the image encoder, prompt decoder (and SAM 2's tracking step) as "
        "serialized jax.export programs with a manifest.json, for serving without sam-jax",
        description="Write OUT_DIR/<program>.jax_export (StableHLO, jax.export) and "
        "OUT_DIR/manifest.json listing each program's inputs and outputs. Needs the "
        "flatbuffers package (pip install 'sam-jax[export]').",
    )
    p.add_argument("ckpt", metavar="CKPT", help=flags.CHECKPOINT_HELP)
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    flags.add_variant(p)
    flags.add_image_size(p)
    p.add_argument(
        "--platforms",
        default="cpu",
        metavar="LIST",
        help="comma-separated platforms to lower for, of cpu, cuda, rocm, tpu (%(default)s); "
        "no accelerator is needed to export for one",
    )
    p.add_argument(
        "--params-as-input",
        action="store_true",
        help="write the parameters once to OUT_DIR/params.npz and make them the programs' "
        "leading inputs instead of baking them into every program (needed above ~1.9 GB of "
        "parameters, e.g. sam_h)",
    )
    p.set_defaults(run=run)
