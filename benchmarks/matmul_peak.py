"""Matrix-product throughput of this machine: XLA (jax.jit) against torch, float32 and
bfloat16, at square sizes (the peak) and at the encoders' own shapes.

An encoder whose products already run at XLA's rate here cannot gain from removing other
work; where torch's kernels are faster at the same shapes, so is torch's encoder.
Run: .venv/bin/python benchmarks/matmul_peak.py
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import best_time

# (M, K, N): square sizes, then the token x width products of the encoders at 1024 px:
# Hiera-T's four stages (MLP in), SAM ViT-B's MLP, TinyViT's last stage.
SHAPES = {
    "square 2048": (2048, 2048, 2048),
    "square 4096": (4096, 4096, 4096),
    "hiera_t stage 1 mlp": (65536, 96, 384),
    "hiera_t stage 2 mlp": (16384, 192, 768),
    "hiera_t stage 3 mlp": (4096, 384, 1536),
    "hiera_t stage 4 mlp": (1024, 768, 3072),
    "sam_b mlp": (4096, 768, 3072),
    "tiny_vit stage 4 mlp": (1024, 320, 1280),
}


@jax.jit
def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.dot(x, y, preferred_element_type=jnp.float32)


def main() -> None:
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; GFLOP/s, best of 5"
    )
    print(
        f"{'shape':<22} {'M x K x N':>20} {'xla f32':>8} {'torch f32':>9} {'xla bf16':>8} "
        f"{'torch bf16':>10}"
    )
    rng = np.random.default_rng(0)
    for name, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        row = []
        for dt, tdt in ((jnp.float32, torch.float32), (jnp.bfloat16, torch.bfloat16)):
            ja, jb = jnp.asarray(a, dt), jnp.asarray(b, dt)
            ta, tb = torch.from_numpy(a).to(tdt), torch.from_numpy(b).to(tdt)
            flops = 2.0 * m * k * n / 1e9
            row.append(flops / best_time(functools.partial(_dot, ja, jb)))
            row.append(flops / best_time(functools.partial(torch.mm, ta, tb)))
        print(
            f"{name:<22} {f'{m} x {k} x {n}':>20} {row[0]:8.0f} {row[1]:9.0f} {row[2]:8.0f} "
            f"{row[3]:10.0f}"
        )


if __name__ == "__main__":
    main()
