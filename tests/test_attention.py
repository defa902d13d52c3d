"""The attention implementations agree in outputs and gradients (float32 rounding, CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.models import attention as attn_mod
from sam_jax.models.attention import attention, default_impl

B, H, D = 2, 3, 8
GRID = (5, 7)  # key grid for rel_pos: Nk = 35, not a multiple of the block size
NK = GRID[0] * GRID[1]
NQ = 11
BLOCK = 8


def _inputs(seed: int, nq: int = NQ, nk: int = NK, dv: int = D, v_heads: int = H):
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = jax.random.normal(keys[0], (B, nq, H, D))
    k = jax.random.normal(keys[1], (B, nk, H, D))
    v = jax.random.normal(keys[2], (B, nk, v_heads, dv))
    rel_h = jax.random.normal(keys[3], (B, H, nq, GRID[0]))
    rel_w = jax.random.normal(keys[4], (B, H, nq, GRID[1]))
    bias = jax.random.normal(keys[5], (H, nq, nk))  # a table shared over the batch
    return q, k, v, rel_h, rel_w, bias


CASES = ["plain", "rel_pos", "bias", "key_mask", "bias_rel_mask", "shared_v"]


def _loss_and_args(case: str):
    q, k, v, rel_h, rel_w, bias = _inputs(0, v_heads=1 if case == "shared_v" else H)
    if case == "shared_v":
        v = jnp.concatenate([v, v], axis=-1)  # a narrower / wider value than D is allowed
    mask = None
    if case in ("key_mask", "bias_rel_mask"):
        mask = jax.random.bernoulli(jax.random.PRNGKey(1), 0.6, (B, NK)).at[1].set(False)
    use_bias = case in ("bias", "bias_rel_mask")
    use_rel = case in ("rel_pos", "bias_rel_mask")
    w = jax.random.normal(jax.random.PRNGKey(2), (B, NQ, H, v.shape[-1]))

    def loss(impl, q, k, v, bias, rel_h, rel_w):
        out = attention(
            q,
            k,
            v,
            bias=bias if use_bias else None,
            rel_pos=(rel_h, rel_w) if use_rel else None,
            key_mask=mask,
            impl=impl,
            block_size=BLOCK,
        )
        return jnp.sum(out * w), out

    return loss, (q, k, v, bias, rel_h, rel_w), mask


@pytest.mark.parametrize("case", CASES)
def test_blocked_matches_reference_outputs_and_gradients(case: str) -> None:
    loss, args, mask = _loss_and_args(case)
    grads = {}
    outs = {}
    for impl in ("reference", "blocked"):
        fn = jax.jit(
            jax.value_and_grad(
                lambda *a, impl=impl: loss(impl, *a), (0, 1, 2, 3, 4, 5), has_aux=True
            )
        )
        (_, outs[impl]), grads[impl] = fn(*args)
    ref, blk = outs["reference"], outs["blocked"]
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(blk))
    np.testing.assert_allclose(blk, ref, rtol=1e-5, atol=2e-6)
    if mask is not None:  # the batch row with every key masked gives zeros, not NaN
        np.testing.assert_array_equal(np.asarray(ref[1]), 0)
        np.testing.assert_array_equal(np.asarray(blk[1]), 0)
    for name, g_ref, g_blk in zip(
        ("q", "k", "v", "bias", "rel_h", "rel_w"), grads["reference"], grads["blocked"], strict=True
    ):
        assert np.all(np.isfinite(g_blk)), name
        scale = float(np.max(np.abs(g_ref))) or 1.0
        np.testing.assert_allclose(g_blk, g_ref, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


@pytest.mark.parametrize("case", CASES + ["per_batch_bias"])
def test_pieces_change_nothing(case: str, monkeypatch) -> None:
    """The materialised path in pieces (what it does past TILE_LOGITS_CPU logits on CPU: one
    (batch, head) pair and a tile of queries, or a group of pairs, at a time) gives the same
    outputs and gradients as in one piece."""
    if case == "per_batch_bias":  # broadcast over heads and queries: one table per pair
        q, k, v, rel_h, rel_w, _ = _inputs(3)
        bias = jax.random.normal(jax.random.PRNGKey(4), (B, 1, 1, NK))

        def loss(impl, q, k, v, bias, rel_h, rel_w):
            out = attention(q, k, v, bias=bias, impl=impl)
            return jnp.sum(out**2), out

        args = (q, k, v, bias, rel_h, rel_w)
    else:
        loss, args, _ = _loss_and_args(case)
    results = []
    # One piece; tiles of 8 queries of one pair (the last tile padded); groups of 2 pairs.
    for tile_logits in (1 << 22, 40, 2 * NQ * NK):
        monkeypatch.setattr(attn_mod, "TILE_LOGITS_CPU", tile_logits)
        grad = jax.value_and_grad(lambda *a: loss("reference", *a), (0, 1, 2, 3, 4, 5), True)
        results.append(jax.jit(grad)(*args))
    (_, whole), g_whole = results[0]
    names = ("q", "k", "v", "bias", "rel_h", "rel_w")
    for (_, pieces), g_pieces in results[1:]:
        np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=2e-6)
        for name, a, b in zip(names, g_whole, g_pieces, strict=True):
            scale = float(np.max(np.abs(a))) or 1.0
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def test_per_batch_bias_and_block_larger_than_keys() -> None:
    q, k, v, *_ = _inputs(3)
    bias = jax.random.normal(jax.random.PRNGKey(4), (B, 1, 1, NK))  # broadcast over heads/rows

    def f(impl, bias):
        return attention(q, k, v, bias=bias, impl=impl, block_size=64)

    np.testing.assert_allclose(f("blocked", bias), f("reference", bias), rtol=1e-5, atol=2e-6)
    g_ref = jax.grad(lambda b: jnp.sum(f("reference", b) ** 2))(bias)
    g_blk = jax.grad(lambda b: jnp.sum(f("blocked", b) ** 2))(bias)
    np.testing.assert_allclose(g_blk, g_ref, rtol=1e-5, atol=1e-6)


def test_auto_choice_and_default_override(monkeypatch) -> None:
    q, k, v, *_ = _inputs(5)
    seen = []
    for name in ("reference", "blocked"):
        real = getattr(attn_mod, f"_{name}")
        monkeypatch.setattr(
            attn_mod, f"_{name}", lambda *a, name=name, real=real: seen.append(name) or real(*a)
        )
    attention(q, k, v)  # small: auto -> reference (never cudnn on CPU)
    monkeypatch.setattr(attn_mod, "BLOCKED_ABOVE_CPU", 10)
    attention(q, k, v)  # above the CPU threshold: blocked
    with default_impl("reference"):
        attention(q, k, v)
    attention(q, k, v, impl="reference")
    assert seen == ["reference", "blocked", "reference", "reference"]
    with pytest.raises(ValueError, match="impl"):
        attention(q, k, v, impl="fast")
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="cudnn"):
            attention(q, k, v, impl="cudnn")


@pytest.mark.parametrize("module", ["vit", "memory"])
def test_models_agree_across_implementations(module: str, monkeypatch) -> None:
    """A ViT attention layer (factored rel-pos) and a memory attention (RoPE, masked slots,
    pointer tokens) give the same outputs and parameter gradients either way."""
    from sam_jax.models.memory_attention import MemoryAttention
    from sam_jax.models.vit import RelPosAttention

    monkeypatch.setattr(attn_mod, "BLOCK_SIZE", 16)  # several key blocks, a ragged last one
    rng = np.random.default_rng(0)
    if module == "vit":
        layer = RelPosAttention(num_heads=2, table_size=6)
        args = (jnp.asarray(rng.normal(size=(2, 6, 6, 16)), jnp.float32),)
    else:
        layer = MemoryAttention(d_model=32, num_layers=1, dim_feedforward=16)
        hw, frames, ptr = 4 * 4, 2, 4
        mask = np.ones((2, frames * hw + ptr), bool)
        mask[0, hw : 2 * hw] = False  # an empty frame slot
        mask[1] = False  # nothing valid at all
        args = (
            jnp.asarray(rng.normal(size=(2, hw, 32)), jnp.float32),
            jnp.asarray(rng.normal(size=(2, hw, 32)), jnp.float32),
            jnp.asarray(rng.normal(size=(2, frames * hw + ptr, 8)), jnp.float32),
            jnp.asarray(rng.normal(size=(2, frames * hw + ptr, 8)), jnp.float32),
            ptr,
            jnp.asarray(mask),
            (4, 4),
        )
    params = layer.init(jax.random.PRNGKey(0), *args)
    # Non-zero relative-position tables, so their gradients and terms are exercised.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    results = {}
    for impl in ("reference", "blocked"):
        with default_impl(impl):
            results[impl] = (
                layer.apply(params, *args),
                jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply(p, *args))))(params),
            )
    np.testing.assert_allclose(results["blocked"][0], results["reference"][0], atol=2e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(results["reference"][1])
    flat_blk = jax.tree_util.tree_leaves(results["blocked"][1])
    for (path, g_ref), g_blk in zip(flat_ref, flat_blk, strict=True):
        np.testing.assert_allclose(g_blk, g_ref, rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_blocked_skips_wholly_masked_blocks_and_auto_takes_it_for_key_blocks(monkeypatch) -> None:
    """A key block with no valid key (an empty memory slot) is skipped, not computed: NaN
    keys and values there never reach the output or the gradients, which equal the
    reference fed only the valid keys. `key_blocks` with a mask sends "auto" there."""
    q, k, v, *_ = _inputs(6, nk=4 * BLOCK + 3)  # four whole blocks and a short one
    mask = jnp.ones((B, k.shape[1]), bool).at[:, BLOCK : 3 * BLOCK].set(False)
    k_nan = k.at[:, BLOCK : 3 * BLOCK].set(jnp.nan)
    v_nan = v.at[:, BLOCK : 3 * BLOCK].set(jnp.nan)
    keep = np.asarray(mask[0])

    def loss(k, v):
        out = attention(q, k, v, key_mask=mask, impl="blocked", block_size=BLOCK)
        return jnp.sum(jnp.sin(out)), out

    (_, out), (dk, dv) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(k_nan, v_nan)

    def kept(k, v):
        return jnp.sum(jnp.sin(attention(q, k, v, impl="reference")))

    want = attention(q, k[:, keep], v[:, keep], impl="reference")
    dk_want, dv_want = jax.grad(kept, (0, 1))(k[:, keep], v[:, keep])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(dk[:, keep], dk_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dv[:, keep], dv_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(dk[:, ~keep]), 0)
    np.testing.assert_array_equal(np.asarray(dv[:, ~keep]), 0)

    seen = []
    real = attn_mod._blocked
    monkeypatch.setattr(attn_mod, "_blocked", lambda *a: seen.append(a[-1]) or real(*a))
    monkeypatch.setattr(attn_mod, "BLOCK_SIZE", 2 * BLOCK)
    attention(q, k, v, key_mask=mask, key_blocks=3 * BLOCK)  # runs of 24: blocks of 12
    attention(q, k, v, key_blocks=3 * BLOCK)  # nothing masked: nothing to skip
    assert seen == [12]
