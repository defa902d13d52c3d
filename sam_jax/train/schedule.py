"""Learning-rate schedules for the train step (optax schedules: step -> learning rate)."""

from __future__ import annotations

import optax


def warmup_cosine(peak: float, steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `peak` over the first steps // 20 steps (at least one), then
    cosine decay to 5% of `peak` at step `steps`. Valid for any steps >= 1: the decay always
    spans at least one step after the warm-up."""
    warmup = max(1, steps // 20)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, max(steps, warmup + 1), peak * 0.05
    )
