"""A resumable run's folder: its checkpoints (model variables, optimizer state and step,
saved with orbax) and the record of the options it runs with.

    ckpts = TrainCheckpoints("runs/a/checkpoints", keep=3)
    ckpts.save(state)                      # DIR/<step>/, the oldest beyond `keep` removed
    step = latest_step("runs/a/checkpoints")             # None when there is none
    state = ckpts.restore(like=fresh_state)              # the latest, in fresh_state's shape

A checkpoint holds the whole `TrainState` (frozen parameters too), so a run resumes from
its folder alone, whatever became of the checkpoint it started from. Orbax writes each
step to a temporary folder and renames it when complete: a run killed while saving leaves
the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.checkpoint import atomic_write
from sam_jax.train.step import TrainState

INSTALL_HINT = "pip install orbax-checkpoint"
RUN_FILE = "options.json"
CHECKPOINTS_DIR = "checkpoints"  # the checkpoints' folder in a run folder


def _orbax() -> Any:
    """orbax.checkpoint, or an ImportError saying what to install."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(f"training checkpoints need orbax-checkpoint: {INSTALL_HINT}") from e
    return ocp


def _as_tree(state: TrainState) -> dict:
    """The state as the plain dict orbax stores (a flax struct is no orbax item)."""
    return {"variables": state.variables, "opt_state": state.opt_state, "step": state.step}


def latest_step(directory: str | os.PathLike) -> int | None:
    """The step of the newest complete checkpoint in `directory`; None when there is none
    (or no such folder). Half-written checkpoints (orbax's temporary folders) do not
    count."""
    path = Path(directory)
    if not path.is_dir():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


class TrainCheckpoints:
    """Save / restore `TrainState`s in `directory` (one subfolder per step), keeping the
    newest `keep` (None: all). Saving blocks until the checkpoint is on disk."""

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None: all); got {keep}")
        ocp = _orbax()
        self.directory = Path(directory).absolute()  # orbax wants an absolute path
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState) -> int:
        """Write `state` under its own step (an existing checkpoint of that step is kept:
        it holds the same state). Returns the step."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        tree = jax.device_get(_as_tree(state))
        self._manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()
        return step

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """The checkpoint of `step` (None: the latest), its arrays laid out as `like`'s (a
        state of the same model and optimizer, e.g. a freshly created one). ValueError when
        there is no checkpoint or it holds another model or optimizer."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{self.directory}: no checkpoint to restore")
        target = jax.tree.map(np.asarray, jax.device_get(_as_tree(like)))
        try:
            tree = self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{self.directory}/{step}: the checkpoint does not fit this model and "
                f"optimizer ({e})"
            ) from e
        return TrainState(tree["variables"], tree["opt_state"], tree["step"])

    def close(self) -> None:
        """Finish pending work and release orbax's resources."""
        self._manager.close()


def run_start_step(
    directory: str | os.PathLike,
    record: dict,
    *,
    resume: bool,
    flag_of: Callable[[str], str] = str,
) -> int:
    """The step a run with `record` starts at in run folder `directory`: 0 for a folder
    without a run, the newest checkpoint's step (0 without one) when resuming. ValueError
    for a folder holding a run when not resuming, or one with another record (naming the
    differing entries through `flag_of`). Writes nothing."""
    out = Path(directory)
    path = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the run folder is a file")
    if path.is_file() and not resume:
        raise ValueError(
            f"{out} already holds a run ({RUN_FILE}); pass --resume to continue it, "
            "or choose another --out"
        )
    if not resume:
        return 0
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in record.keys() | saved.keys() if record.get(k) != saved.get(k))
        if differ:
            what = ", ".join(f"{flag_of(k)} {saved.get(k)!r} -> {record.get(k)!r}" for k in differ)
            raise ValueError(f"{out} holds a run with other options ({what}); resume it as it was")
    return latest_step(out / CHECKPOINTS_DIR) or 0


def write_run_record(directory: str | os.PathLike, record: dict) -> None:
    """Mark `directory` as holding the run of `record` (RUN_FILE, written atomically)."""
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(Path(directory) / RUN_FILE, lambda tmp: Path(tmp).write_text(text, "utf-8"))
