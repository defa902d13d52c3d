"""How much of this machine's matrix-product rate a program reaches.

    python benchmarks/flops.py                    # the encoders at 1024 px, GFLOP per image
    python benchmarks/flops.py --peak             # and a 2048^3 float32 product's GFLOP/s

`program_gflop(fn, *args)` counts the multiply-adds (x2) of every matrix product and
convolution in fn's traced program, the bodies of `lax.scan` / `lax.map` times their trip
count and a `lax.cond` as its costliest branch (so a memory bank's skipped empty slots count
as run). Elementwise work is not counted: it is what separates a program's rate from the
products' peak. XLA's own `cost_analysis()` counts a loop body once, which undercounts the
blocked attention and the chunked feed-forward by several times.

`peak_gflops()` is a jitted 2048 x 2048 x 2048 float32 product's rate, best of ten, in this
process: the benchmarks divide a program's GFLOP by its time and compare with it (the
issue's goal: an encoder at 60% of that peak).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time
from jax.extend import core as jex_core


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    out = math.prod(eqn.outvars[0].aval.shape)
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * math.prod(lhs[i] for i in contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_channels = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        # per output value: (input channels / groups) x kernel taps multiply-adds
        return 2.0 * out * math.prod(rhs) / out_channels
    return 0.0


def jaxpr_flops(jaxpr: jex_core.Jaxpr, trips: float = 1.0) -> float:
    """Matrix-product and convolution FLOPs of `jaxpr` run `trips` times (see the module)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        total += trips * _eqn_flops(eqn)
        name = eqn.primitive.name
        if name == "cond":
            total += max(jaxpr_flops(b.jaxpr, trips) for b in eqn.params["branches"])
            continue
        if name == "while":
            raise ValueError("a while loop's trip count is unknown: count it as a scan")
        inner = trips * (eqn.params["length"] if name == "scan" else 1)
        for value in eqn.params.values():
            if isinstance(value, jex_core.ClosedJaxpr):
                total += jaxpr_flops(value.jaxpr, inner)
            elif isinstance(value, jex_core.Jaxpr):
                total += jaxpr_flops(value, inner)
    return total


def program_gflop(fn: Callable, *args) -> float:
    """GFLOP of fn(*args)'s matrix products and convolutions; args may be abstract
    (`jax.ShapeDtypeStruct`)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr) / 1e9


def peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """A jitted n^3 float32 product's GFLOP/s, best of `repeats` calls after one warm-up."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    dot = jax.jit(jnp.dot)
    return 2.0 * n**3 / best_time(lambda: dot(a, a), repeats) / 1e9


def encoder_gflop(model, batch: int = 1) -> float:
    """GFLOP of `model.apply(variables, images, method="encode_image")` for a batch of
    images at the model's input size, counted on abstract inputs (nothing runs)."""
    from sam_jax.checkpoint import variable_shapes

    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    params = jax.tree.map(spec, variable_shapes(model))
    size = model.config.image_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return program_gflop(lambda v, x: model.apply(v, x, method="encode_image"), params, images)


def rate_line(gflop: float, jax_s: float, torch_s: float, peak: float) -> str:
    """One line: both libraries' GFLOP/s on `gflop` and sam-jax's share of the peak."""
    ours, theirs = gflop / jax_s, gflop / torch_s
    return (
        f"  {gflop:.1f} GFLOP of products: sam-jax {ours:.0f} GFLOP/s, torch {theirs:.0f} "
        f"GFLOP/s; a 2048^3 product {peak:.0f} GFLOP/s here (sam-jax at {ours / peak:.0%})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=["sam_b", "mobile_sam", "sam2.1_t"])
    ap.add_argument("--peak", action="store_true", help="also time a 2048^3 product")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sam_jax.checkpoint import build

    for name in args.variants:
        model = build(name)
        print(
            f"{name:<12} encoder at {model.config.image_size} px: {encoder_gflop(model):.1f} GFLOP"
        )
    if args.peak:
        print(f"2048^3 float32 product: {peak_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
