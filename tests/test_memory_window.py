"""The memory window: the conditioning-memory policy `conditioning_memory="in_window"` drops
the conditioning frame's memory beyond the window; the shapes project's `shorten_memory`
(a smaller num_maskmem) equals the original model with the memories beyond the window
dropped (tests/test_train.py runs the clip loss on a shortened model)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.checkpoint import build_from_config
from sam_jax.projects.shapes.memory_window import shorten_memory
from sam_jax.tracking.memory_bank import empty_bank, memory_tokens
from sam_jax.tracking.track_step import condition_on_memory
from tests.tiny_configs import TINY2, random_variables


def _tiny(num_maskmem: int):
    model = build_from_config(dataclasses.replace(TINY2, num_maskmem=num_maskmem))
    variables = random_variables(model)
    # a unit-scale temporal table (random_variables draws 0.2-scale tables): its rows differ
    # enough that a wrong row would show
    table = jax.random.normal(jax.random.key(1), variables["params"]["maskmem_tpos_enc"].shape)
    variables = {**variables, "params": {**variables["params"], "maskmem_tpos_enc": table}}
    return model, variables


@pytest.fixture(scope="module")
def tiny():
    return _tiny(TINY2.num_maskmem)


def _bank(cfg, feats, frame, window):
    """The bank at frame `frame`: the conditioning frame 0 and the recent frames within
    `window` of `frame` (feats[f] is frame f's memory)."""
    g, r = cfg.embed_size, cfg.num_maskmem - 1
    bank = empty_bank(1, 1, g, cfg.mem_dim, cfg.d_model, num_recent=r, num_frames=8)
    bank.cond_feats[0, 0] = feats[0]
    bank.cond_valid[0, 0] = True
    for f in range(max(1, frame - window), frame):
        bank.recent_feats[0, f % r] = feats[f]
        bank.recent_frames[0, f % r] = f
        bank.recent_valid[0, f % r] = True
    return jax.tree.map(jnp.asarray, bank)


def _conditioned(model, variables, feats, frame, window):
    """Frame `frame`'s memory-conditioned features over `_bank`."""
    cfg = model.config
    g = cfg.embed_size
    bank = _bank(cfg, feats, frame, window)
    vision = jnp.asarray(np.random.default_rng(1).normal(size=(g, g, cfg.d_model)), jnp.float32)
    return np.asarray(
        model.apply(variables, bank, jnp.int32(frame), vision, method=condition_on_memory)
    )


def test_shorter_window_equals_dropping_older_memories(tiny):
    model, variables = tiny
    cfg = model.config
    feats = np.random.default_rng(0).normal(size=(8, cfg.embed_size, cfg.embed_size, 64))
    short_model, short_vars = shorten_memory(model, variables, 3)
    assert short_model.config.num_maskmem == 3
    assert short_vars["params"]["maskmem_tpos_enc"].shape[0] == 3
    full = _conditioned(model, variables, feats, 7, window=6)
    dropped = _conditioned(model, variables, feats, 7, window=2)
    short = _conditioned(short_model, short_vars, feats, 7, window=2)
    np.testing.assert_allclose(short, dropped, rtol=1e-5, atol=1e-5)
    assert np.abs(full - dropped).max() > 1e-3  # the older memories did matter
    with pytest.raises(ValueError, match="num_maskmem must be in"):
        shorten_memory(model, variables, 8)


def test_conditioning_memory_in_window():
    """With the policy "in_window", frame 7 (beyond a 2-frame window of the conditioning
    frame 0) does not attend to frame 0's spatial memory, the only change to the tokens;
    frame 2 (within the window) and a frame holding no recent memory still do."""
    model, variables = _tiny(3)
    cfg = model.config
    windowed = model.clone(config=dataclasses.replace(cfg, conditioning_memory="in_window"))
    feats = np.random.default_rng(2).normal(size=(8, cfg.embed_size, cfg.embed_size, 64))
    tpos = jnp.asarray(np.random.default_rng(3).normal(size=(3, 64)), jnp.float32)
    hw = cfg.embed_size**2
    for frame, window, dropped in ((7, 2, True), (2, 2, False), (7, 0, False)):
        bank = _bank(cfg, feats, frame, window)
        args = (bank, jnp.int32(frame), tpos, lambda p: jnp.repeat(p[..., None], 64, -1), True)
        mem, pos, mask, _ = memory_tokens(*args)
        w_mem, w_pos, w_mask, _ = memory_tokens(*args, conditioning_memory="in_window")
        np.testing.assert_array_equal(w_mem, mem)
        np.testing.assert_array_equal(w_pos, pos)
        assert mask[0, :hw].all()
        assert (~w_mask[0, :hw]).all() if dropped else w_mask[0, :hw].all()
        np.testing.assert_array_equal(w_mask[0, hw:], mask[0, hw:])
        # and the model config reaches the tokens
        full = _conditioned(model, variables, feats, frame, window)
        got = _conditioned(windowed, variables, feats, frame, window)
        assert (np.abs(got - full).max() > 1e-3) == dropped
