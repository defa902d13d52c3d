"""CPU time of the attention implementations at the shapes the models use, against torch's
scaled_dot_product_attention on the same inputs (one process, after warm-up).

Run on a quiet machine: .venv/bin/python benchmarks/attention_speed.py
It decides `attention.BLOCKED_ABOVE_CPU` (where "blocked" beats "reference") and
`attention.TILE_LOGITS_CPU` ("reference" against the same path in one piece, "untiled").
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402

from sam_jax.models import attention as attention_module  # noqa: E402
from sam_jax.models.attention import attention  # noqa: E402

SDPA = torch.nn.functional.scaled_dot_product_attention
# (queries (B, Nq, H, D), keys (B, Nk, H, D)) of each model's attention.
SHAPES = {
    "hiera_t global (4 x 4096^2)": ((1, 4096, 4, 96), (1, 4096, 4, 96)),
    "sam_b global (12 x 4096^2)": ((1, 4096, 12, 64), (1, 4096, 12, 64)),
    "sam_h global (16 x 4096^2)": ((1, 4096, 16, 80), (1, 4096, 16, 80)),
    "sam3 global (16 x 5184^2)": ((1, 5184, 16, 64), (1, 5184, 16, 64)),
    "sam3 windows (9 x 16 x 576^2)": ((9, 576, 16, 64), (9, 576, 16, 64)),
    "sam2 memory bank (4096 x 28736)": ((1, 4096, 1, 256), (1, 28736, 1, 256)),
}


def untiled(q, k, v):
    """The reference path with its logits in one piece (no query tiles), when traced."""
    saved = attention_module.TILE_LOGITS_CPU
    attention_module.TILE_LOGITS_CPU = 1 << 62
    try:
        return attention(q, k, v, impl="reference")
    finally:
        attention_module.TILE_LOGITS_CPU = saved


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    impls = {
        name: jax.jit(lambda q, k, v, name=name: attention(q, k, v, impl=name))
        for name in ("reference", "blocked")
    }
    impls["untiled"] = jax.jit(untiled)
    for label, (sq, sk) in SHAPES.items():
        q = jnp.asarray(rng.standard_normal(sq), jnp.float32)
        k = jnp.asarray(rng.standard_normal(sk), jnp.float32)
        times = {n: median_time(lambda f=f, q=q, k=k: f(q, k, k), 3) for n, f in impls.items()}
        qt, kt = (torch.from_numpy(np.asarray(a)).permute(0, 2, 1, 3).contiguous() for a in (q, k))
        with torch.no_grad():
            t = median_time(lambda qt=qt, kt=kt: SDPA(qt, kt, kt), 3)
        print(
            f"{label:<34} reference {times['reference']:.3f} s  untiled {times['untiled']:.3f} s"
            f"  blocked {times['blocked']:.3f} s"
            f"  torch sdpa {t:.3f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
