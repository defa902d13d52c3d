"""The chunked feed-forward equals the whole product, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.models import layers


def _params(rng: np.random.Generator, c: int, hidden: int) -> tuple[dict, dict]:
    def p(i: int, o: int) -> dict:
        return {
            "kernel": jnp.asarray(rng.standard_normal((i, o), np.float32) / np.sqrt(i)),
            "bias": jnp.asarray(rng.standard_normal(o, np.float32)),
        }

    return p(c, hidden), p(hidden, c)


@pytest.mark.parametrize("shape", [(2, 6, 5, 8), (3, 16, 8)])  # 60 rows: a short last chunk
def test_feed_forward_in_chunks_equals_one_product(monkeypatch, shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    p1, p2 = _params(rng, shape[-1], 32)

    def loss(x, p1, p2):
        y = layers.feed_forward(x, p1, p2, layers.gelu)
        return jnp.sum(y * jnp.cos(y)), y

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    (dx, dp1, dp2), whole = grad(x, p1, p2)
    monkeypatch.setattr(layers, "FF_CHUNK_ELEMENTS", 8 * 32)  # chunks of 8 rows
    seen = []
    real_map = jax.lax.map
    monkeypatch.setattr(jax.lax, "map", lambda f, xs: seen.append(xs.shape) or real_map(f, xs))
    (cx, cp1, cp2), chunked = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(x, p1, p2)
    rows = int(np.prod(shape[:-1]))
    assert seen == [(rows // 8, 8, shape[-1])]
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    for got, want in zip(
        jax.tree.leaves((cx, cp1, cp2)), jax.tree.leaves((dx, dp1, dp2)), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_feed_forward_keeps_the_compute_dtype():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, 8), np.float32))
    p1, p2 = _params(rng, 8, 16)
    y = layers.feed_forward(x, p1, p2, jax.nn.relu, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    want = jax.nn.relu(x @ p1["kernel"] + p1["bias"]) @ p2["kernel"] + p2["bias"]
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=0.05, atol=0.05)
