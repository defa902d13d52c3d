"""The project's sub-commands of `sam-jax`: demo, train-shapes and eval-shapes."""

from __future__ import annotations

import argparse

from sam_jax.projects.shapes import demo, train_commands


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `demo`, `train-shapes` and `eval-shapes` on the sub-command parsers `sub`."""
    demo.add_parser(sub)
    train_commands.add_train_parser(sub)
    train_commands.add_eval_parser(sub)
