"""benchmarks/flops.py: the product counts that the benchmarks turn into GFLOP/s."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import program_gflop  # noqa: E402

from sam_jax.models.attention import attention  # noqa: E402


def spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_products_and_convolutions_are_counted_exactly():
    assert program_gflop(jnp.dot, spec(64, 32), spec(32, 16)) * 1e9 == 2 * 64 * 32 * 16
    batched = program_gflop(
        lambda a, b: jnp.einsum("bij,bjk->bik", a, b), spec(3, 8, 5), spec(3, 5, 7)
    )
    assert batched * 1e9 == 2 * 3 * 8 * 5 * 7

    def conv(x, w, groups):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=dims, feature_group_count=groups
        )

    full = program_gflop(lambda x, w: conv(x, w, 1), spec(1, 16, 16, 8), spec(3, 3, 8, 4))
    assert full * 1e9 == 2 * 16 * 16 * 4 * 8 * 9
    depthwise = program_gflop(lambda x, w: conv(x, w, 8), spec(1, 16, 16, 8), spec(3, 3, 1, 8))
    assert depthwise * 1e9 == 2 * 16 * 16 * 8 * 9


def test_loops_count_every_trip_and_a_cond_its_costliest_branch():
    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

    assert program_gflop(scanned, spec(4, 6), spec(6, 6)) * 1e9 == 5 * 2 * 4 * 6 * 6

    def branches(p, x, w):
        return jax.lax.cond(p, lambda: (x @ w) @ w, lambda: x)

    flops = program_gflop(branches, jax.ShapeDtypeStruct((), bool), spec(4, 6), spec(6, 6))
    assert flops * 1e9 == 2 * (2 * 4 * 6 * 6)

    with pytest.raises(ValueError, match="while loop"):
        program_gflop(
            lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ c, x), spec(2, 2)
        )


@pytest.mark.parametrize("impl", ["reference", "blocked"])
def test_attention_counts_the_same_whatever_its_pieces(impl):
    """The blocked path's key blocks and the CPU path's query tiles are loops: counted in
    full, both are the two products q k^T and p v."""
    q = spec(1, 2048, 2, 32)  # 2 x 2048^2 logits: past TILE_LOGITS_CPU, in query tiles
    flops = program_gflop(lambda q, k, v: attention(q, k, v, impl=impl, block_size=512), q, q, q)
    assert flops * 1e9 == 2 * (2 * 2 * 2048 * 2048 * 32)
