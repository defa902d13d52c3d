"""A training run's log: DIR/metrics.jsonl and TensorBoard events in DIR.

    log = MetricsLog("runs/a", start_step=0)
    log.train(100, {"loss": 0.41, "iou_first": 0.72, "lr": 1e-4})
    log.eval(100, {"prompt": "click", "miou": 0.81, "num_objects": 40, "per_image": [...]})
    log.close()
    records = read_metrics("runs/a/metrics.jsonl")

metrics.jsonl holds one JSON object per line: a training record {"step": N, <name>: value,
...} (each loss term, the training IoUs, the learning rate) or an evaluation record
{"step": N, "eval": {<name>: value, ...}} (the scalars of an evaluation result; lists and
tables such as per_image stay out). Non-finite values are written as null.

TensorBoard gets the same scalars ("train/<name>", "eval/<name>") through tensorboardX,
imported only here; without it the run goes on and only metrics.jsonl is written.

A resumed run (start_step > 0) first drops the records past start_step, which the
interrupted run wrote after its last checkpoint and which the resumed run writes again,
and tells TensorBoard to purge its events past that step.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sam_jax.checkpoint import atomic_write

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_HINT = "pip install tensorboardX"


def _scalar(value: Any) -> float | int | None:
    """A JSON number of a Python / numpy / jax scalar; None for NaN and infinities."""
    if isinstance(value, bool | int):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def scalars(values: Mapping[str, Any]) -> dict[str, float | int | str | None]:
    """The scalar entries of `values` (numbers, and strings such as a prompt's name) as
    JSON values; lists, dicts and arrays with more than one element are left out."""
    out: dict[str, float | int | str | None] = {}
    for name, value in values.items():
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, bool | int | float) or getattr(value, "size", None) == 1:
            out[name] = _scalar(value)
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file, in order; [] when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _keep_until(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl with only the records of steps <= `step`."""
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _summary_writer(directory: Path, purge_step: int | None) -> Any:
    """A tensorboardX SummaryWriter, or None (with a note on stderr) without tensorboardX."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        print(
            f"note: tensorboardX is not installed, so no TensorBoard events are written "
            f"({TENSORBOARD_HINT}); {METRICS_FILE} is written as always",
            file=sys.stderr,
        )
        return None
    return SummaryWriter(logdir=str(directory), purge_step=purge_step)


class MetricsLog:
    """Appends training and evaluation records to `directory`/metrics.jsonl and to
    TensorBoard events in `directory` (tensorboard=False: metrics.jsonl only)."""

    def __init__(
        self, directory: str | os.PathLike, *, start_step: int = 0, tensorboard: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / METRICS_FILE
        if start_step > 0:
            _keep_until(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        purge = start_step if start_step > 0 else None
        self._writer = _summary_writer(self.directory, purge) if tensorboard else None
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # readable (plotted, tailed) while the run goes on

    def train(self, step: int, values: Mapping[str, Any]) -> dict:
        """Log a training record; returns it as written."""
        record = {"step": int(step), **scalars(values)}
        self._write(record)
        if self._writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, int | float):
                    self._writer.add_scalar(f"train/{name}", value, int(step))
        return record

    def eval(self, step: int, result: Mapping[str, Any]) -> dict:
        """Log an evaluation result (its scalars); returns the record as written."""
        record = {"step": int(step), "eval": scalars(result)}
        self._write(record)
        if self._writer is not None:
            for name, value in record["eval"].items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(f"eval/{name}", value, int(step))
        return record

    def close(self) -> None:
        """Flush and close the file and the event writer."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()
