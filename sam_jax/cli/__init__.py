"""The `sam-jax` command line: `main` parses the sub-command and runs it.

Each sub-command lives in its own module (convert, segment, track, evaluate, finetune,
export) with an `add_parser(sub)` that registers it and sets `run`; the bundled shapes
project adds demo, train-shapes and eval-shapes. Errors the library raises about the user's input (a missing or
unreadable file, a bad value) are printed as one line `sam-jax: error: ...` with exit
status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sam_jax.cli import convert, evaluate, export, finetune, segment, track
from sam_jax.projects.shapes import commands

# What the library raises for bad input: ValueError (the torch reader's CheckpointError is
# one) and OSError (FileNotFoundError, unreadable files). Anything else is a bug and keeps
# its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The `sam-jax` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="sam-jax", description="Segment Anything in JAX.")
    sub = parser.add_subparsers(title="sub-commands", metavar="COMMAND")
    for module in (convert, segment, track, evaluate, finetune, export):
        module.add_parser(sub)
    commands.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sam-jax` with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except USER_ERRORS as e:
        print(f"sam-jax: error: {e}", file=sys.stderr)
        return 1
    return 0
