"""`reseat_memory` (sam_jax/projects/shapes): what it changes, that the attention it sets is
positional, and the trainable rule that keeps it."""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config
from sam_jax.models.rope import apply_rope, axial_rope_tables
from sam_jax.projects.shapes.reseat_memory import (
    ALL_BUT_ENCODER_POSITIONAL,
    positional_vector,
    recency_channel,
    reseat_memory,
    weigh_recent_memory,
)
from sam_jax.tracking.memory_bank import empty_bank
from sam_jax.tracking.track_step import condition_on_memory
from sam_jax.train.step import trainable_labels
from tests.tiny_configs import TINY2 as TRAIN_TINY2
from tests.tiny_configs import random_variables

TINY2 = dataclasses.replace(TRAIN_TINY2, memory_attention_layers=2)  # two layers to re-seat


@pytest.fixture(scope="module")
def tiny():
    """Seeded random weights, with biases 0 and norm scales 1 as initialisation leaves them
    (drawn in numpy: compiling `sam_jax.init_params` takes 40 s here)."""
    model = build_from_config(TINY2)
    flat = flax.traverse_util.flatten_dict(random_variables(model))
    fill = {"bias": np.zeros_like, "scale": np.ones_like}
    flat = {k: fill.get(k[-1], np.asarray)(v) for k, v in flat.items()}
    return model, jax.tree.map(jnp.asarray, flax.traverse_util.unflatten_dict(flat))


def test_positional_vector_weights_own_position_most():
    g, d = 16, 256
    cos, sin = axial_rope_tables(g, g, d)
    rotated = np.asarray(apply_rope(jnp.broadcast_to(positional_vector(d), (g * g, d)), cos, sin))
    logits = rotated @ rotated.T / np.sqrt(d)
    weights = np.asarray(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_array_equal(weights.argmax(1), np.arange(g * g))
    centre = weights[8 * g + 8].reshape(g, g)
    assert 0.15 < centre[8, 8] < 0.3
    assert centre[7:10, 7:10].sum() > 0.6
    with pytest.raises(ValueError, match="pairs"):
        positional_vector(256, pairs=65)


def test_reseat_memory_changes_only_the_memory_path(tiny):
    model, variables = tiny
    out = reseat_memory(TINY2, variables, mask_gain=20.0)
    before = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    after = flax.traverse_util.flatten_dict(out["params"], sep="/")
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    qk = {
        f"memory_attention/layers_{i}/cross_attn_image/{p}_proj/{w}"
        for i in range(2)
        for p in "qk"
        for w in ("kernel", "bias")
    }
    down = {f"memory_encoder/mask_downsampler/encoder_12/{w}" for w in ("kernel", "bias")}
    # (the mask conv's bias is zero at initialisation, so it may stay as it was)
    assert qk | {"memory_encoder/mask_downsampler/encoder_12/kernel"} <= changed <= qk | down
    for k in down:
        np.testing.assert_allclose(after[k], 20.0 * before[k], rtol=1e-6)
    c = positional_vector(TINY2.d_model)
    for k in qk:
        np.testing.assert_array_equal(after[k], c if k.endswith("bias") else 0.0)
    assert out["buffers"] is variables["buffers"]
    # the jit train step donates its state: a buffer shared by two leaves fails there
    arrays = [x for x in jax.tree.leaves(out["params"]) if isinstance(x, jax.Array)]
    pointers = [x.unsafe_buffer_pointer() for x in arrays]
    assert len(set(pointers)) == len(pointers)
    with pytest.raises(ValueError, match="SAM 2"):
        reseat_memory(sam_jax.build("sam_tiny_shapes").config, variables)


def test_reseated_attention_reads_the_memory_where_it_is(tiny):
    """Two conditioning memories that differ at grid cell (0, 0) only: after re-seating,
    the conditioned features change there far more than at the opposite corner."""
    model, variables = tiny
    variables = reseat_memory(TINY2, variables)
    g, cfg = 4, TINY2
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1, 1, g, g, cfg.mem_dim)).astype(np.float32)
    other = feats.copy()
    other[..., 0, 0, :] += 5.0
    vision = jnp.asarray(rng.normal(size=(g, g, cfg.d_model)), jnp.float32)

    def conditioned(f):
        bank = empty_bank(1, 1, g, cfg.mem_dim, cfg.d_model, num_frames=4, xp=jnp)
        bank = bank.replace(
            cond_feats=jnp.asarray(f),
            cond_ptrs=jnp.zeros((1, 1, cfg.d_model)),
            cond_valid=jnp.ones((1, 1), bool),
        )
        return model.apply(variables, bank, jnp.int32(1), vision, method=condition_on_memory)[0]

    diff = np.abs(np.asarray(conditioned(other) - conditioned(feats))).mean(-1)
    assert diff[0, 0] > 10 * diff[3, 3], diff


def test_weigh_recent_memory_changes_channel_j_only(tiny):
    _, variables = tiny
    seated = reseat_memory(TINY2, variables)
    out = weigh_recent_memory(TINY2, seated, gain=1.6)
    before = flax.traverse_util.flatten_dict(seated["params"], sep="/")
    after = flax.traverse_util.flatten_dict(out["params"], sep="/")
    j, m = recency_channel(TINY2.mem_dim), TINY2.mem_dim
    assert j == 30
    for k in before:
        a, b = np.asarray(after[k]), np.asarray(before[k])
        if a.ndim:  # every change is in channel j (of each pointer token for pointers)
            width = a.shape[-1]
            cols = np.arange(j, width, m) if width == TINY2.d_model else [j] if width == m else []
            keep = np.ones(a.shape[-1], bool)
            keep[cols] = False
            if k.endswith("k_proj/kernel"):  # (in, out): its input row j
                np.testing.assert_array_equal(np.delete(a, j, 0), np.delete(b, j, 0), err_msg=k)
            else:
                np.testing.assert_array_equal(a[..., keep], b[..., keep], err_msg=k)
    for name in ("memory_encoder/out_proj/kernel", "obj_ptr_tpos_proj/kernel"):
        np.testing.assert_array_equal(np.asarray(after[name])[..., j], 0.0)
    np.testing.assert_array_equal(np.asarray(after["no_obj_ptr"])[0, j::m], 0.0)
    tpos = np.asarray(after["maskmem_tpos_enc"])[:, 0, 0, j]
    np.testing.assert_allclose(tpos, [0.6] + [0.0] * (TINY2.num_maskmem - 1), atol=1e-6)
    for i in range(2):
        k = f"memory_attention/layers_{i}/cross_attn_image/k_proj/"
        np.testing.assert_array_equal(np.asarray(after[k + "kernel"])[j], after[k + "bias"])
    with pytest.raises(ValueError, match="re-seated"):
        weigh_recent_memory(TINY2, variables)


def test_weighed_attention_reads_the_recent_frame_more(tiny):
    """A conditioning frame (0) and a recent one (1) seen from frame 2: the same change to
    either memory at cell (0, 0) moves the output there equally after re-seating alone,
    and more for the recent frame once it is weighed."""
    model, variables = tiny
    seated = reseat_memory(TINY2, variables)
    g, cfg = 4, TINY2
    j = recency_channel(cfg.mem_dim)
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1, 1, g, g, cfg.mem_dim)).astype(np.float32)
    feats[..., j] = 0.0  # as the weighed memory encoder writes them
    bump = np.zeros_like(feats)
    bump[..., 0, 0, :] = 5.0
    bump[..., j] = 0.0
    vision = jnp.asarray(rng.normal(size=(g, g, cfg.d_model)), jnp.float32)

    def conditioned(v, cond, recent):
        bank = empty_bank(1, 1, g, cfg.mem_dim, cfg.d_model, num_frames=3, xp=jnp)
        bank = bank.replace(
            cond_feats=jnp.asarray(cond),
            cond_valid=jnp.ones((1, 1), bool),
            recent_feats=bank.recent_feats.at[:, 0].set(recent[:, 0]),
            recent_frames=bank.recent_frames.at[0, 0].set(1),
            recent_valid=bank.recent_valid.at[0, 0].set(True),
        )
        return model.apply(v, bank, jnp.int32(2), vision, method=condition_on_memory)[0]

    def moved(v):  # output change at cell (0, 0): bump the conditioning / the recent memory
        base = conditioned(v, feats, feats)
        return [
            float(np.abs(np.asarray(conditioned(v, c, r) - base))[0, 0].mean())
            for c, r in ((feats + bump, feats), (feats, feats + bump))
        ]

    by_cond, by_recent = moved(seated)
    np.testing.assert_allclose(by_recent, by_cond, rtol=1e-4)
    by_cond, by_recent = moved(weigh_recent_memory(TINY2, seated, gain=1.6))
    assert by_recent > 1.3 * by_cond, (by_recent, by_cond)


def test_positional_mode_freezes_the_encoder_and_cross_attention_queries_keys(tiny):
    _, variables = tiny
    labels = flax.traverse_util.flatten_dict(
        trainable_labels(variables["params"], ALL_BUT_ENCODER_POSITIONAL), sep="/"
    )
    frozen = {k for k, v in labels.items() if v == "freeze"}
    expected = {
        k
        for k in labels
        if k.startswith("image_encoder/")
        or ("/cross_attn_image/" in k and ("/q_proj/" in k or "/k_proj/" in k))
    }
    assert frozen == expected
    assert any(k.startswith("memory_attention/") and "v_proj" in k for k in labels)
    assert labels["memory_encoder/mask_downsampler/encoder_12/kernel"] == "train"
