"""Timing helpers shared by the benchmarks: same weights, same inputs, same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import numpy as np


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds; JAX results are waited for."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Shortest wall time of fn() in seconds over `repeats` calls after `warmup`; JAX
    results are waited for."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved_medians(
    fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int = 5
) -> tuple[float, float]:
    """Median wall times (s) of fn_a() and fn_b(), called in turn `repeats` times each after
    one warm-up call each: this machine's speed drifts within minutes, and alternating
    calls meet the drift alike. JAX results are waited for."""
    times: tuple[list, list] = ([], [])
    for _ in range(repeats + 1):
        for fn, out in zip((fn_a, fn_b), times, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0][1:]), statistics.median(times[1][1:])


def compile_time(jitted, *args, **kwargs) -> float:
    """Seconds to trace and compile `jitted` for these arguments."""
    t0 = time.perf_counter()
    jitted.lower(*args, **kwargs).compile()
    return time.perf_counter() - t0


def report(name: str, jax_s: float, torch_s: float, compile_s: float | None = None) -> None:
    extra = f"  (jit compile {compile_s:.1f} s)" if compile_s is not None else ""
    print(
        f"{name:<40} jax {jax_s * 1e3:9.1f} ms   torch {torch_s * 1e3:9.1f} ms   "
        f"speed-up x{torch_s / jax_s:5.2f}{extra}",
        flush=True,
    )


def full_bank_memory_attention(model, seed: int = 1) -> tuple[Callable, tuple]:
    """SAM 2's memory attention over a full bank: (fn, inputs), fn(params, *inputs) ->
    (1, HW, 256). Every slot valid: `num_maskmem` frames of the S/16 grid's memory tokens and
    `max_obj_ptrs_in_encoder` pointers (a 256-d pointer is 4 tokens of 64); random inputs."""
    cfg = model.config
    g = cfg.image_size // 16
    n_ptr = 4 * cfg.max_obj_ptrs_in_encoder
    m = cfg.num_maskmem * g * g + n_ptr
    rng = np.random.default_rng(seed)
    curr, curr_pos = (rng.standard_normal((1, g * g, 256)).astype(np.float32) for _ in "ab")
    mem, mem_pos = (rng.standard_normal((1, m, 64)).astype(np.float32) for _ in "ab")

    def run(mod, c, cp, mm, mp, valid):
        return mod.memory_attention(c, cp, mm, mp, n_ptr, valid, (g, g))

    def fn(params, *inputs):
        return model.apply(params, *inputs, method=run)

    return fn, (curr, curr_pos, mem, mem_pos, np.ones((1, m), bool))
