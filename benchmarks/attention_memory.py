"""Compile-time temp memory of one attention call: reference vs blocked, forward and grad.

    .venv/bin/python benchmarks/attention_memory.py [--heads 12] [--grid 64] [--dim 64]
    .venv/bin/python benchmarks/attention_memory.py --model sam_b [--image-size 1024]

The default case is a global-attention block of SAM's ViT at 1024 px: B=1, N = grid * grid
tokens, float32, with the decomposed relative-position terms (rel_h, rel_w) as the ViT
passes them. With --model: a whole image encoder (B=1, float32, remat=True), its forward
pass and the gradient of a scalar of its output w.r.t. every parameter, with every
attention forced to each implementation.
XLA's memory analysis of the compiled program (CPU) is deterministic; nothing is run and
no input is allocated (abstract shapes only).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import sam_jax
from sam_jax.checkpoint import variable_shapes
from sam_jax.models.attention import attention, default_impl

GIB = 1 << 30


def temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--model", help="a variant name: measure its image encoder instead")
    parser.add_argument("--image-size", type=int, default=1024)
    args = parser.parse_args()
    if args.model:
        encoder(args.model, args.image_size)
        return
    h, g, d = args.heads, args.grid, args.dim
    n = g * g
    f32 = jnp.float32
    qkv = jax.ShapeDtypeStruct((1, n, h, d), f32)
    rel = jax.ShapeDtypeStruct((1, h, n, g), f32)
    print(f"B=1 H={h} N={n} D={d} float32, block {args.block_size}; temp bytes (GiB)")
    print(f"one (H, N, N) float32 logits matrix: {h * n * n * 4 / GIB:.3f}")
    for rel_pos in (False, True):
        for impl in ("reference", "blocked"):

            def fwd(q, k, v, rh, rw, impl=impl, rel_pos=rel_pos):
                rp = (rh, rw) if rel_pos else None
                return attention(q, k, v, rel_pos=rp, impl=impl, block_size=args.block_size)

            def loss(*xs, fwd=fwd):
                return jnp.sum(fwd(*xs) ** 2)

            grad = jax.grad(loss, argnums=(0, 1, 2, 3, 4))
            f = temp_bytes(fwd, qkv, qkv, qkv, rel, rel) / GIB
            b = temp_bytes(grad, qkv, qkv, qkv, rel, rel) / GIB
            label = "rel_pos" if rel_pos else "plain  "
            print(f"{label} {impl:9s}  forward {f:7.3f}   grad {b:7.3f}")


def encoder(name: str, size: int) -> None:
    model = sam_jax.build(name, size, remat=True)
    variables = variable_shapes(model)
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    print(f"{name} image encoder, B=1, {size} px, float32, remat=True; temp bytes (GiB)")
    for impl in ("reference", "blocked"):
        # New functions per implementation: jit would otherwise reuse the first trace (the
        # default implementation is read at trace time).
        def fwd(variables, images):
            return model.apply(variables, images, method="encode_image")

        def loss(params, rest, images, fwd=fwd):
            out = fwd({"params": params, **rest}, images)
            return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(out))

        with default_impl(impl):
            f = temp_bytes(fwd, variables, images) / GIB
            b = temp_bytes(jax.grad(loss), params, rest, images) / GIB
        print(f"{impl:9s}  forward {f:7.3f}   grad {b:7.3f}")


if __name__ == "__main__":
    main()
