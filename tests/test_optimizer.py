"""The fine-tuning optimizer: parameter groups (encoder learning rate, layer-wise decay,
no weight decay on biases / norms / embeddings), global clipping, frozen leaves."""

from __future__ import annotations

import fnmatch

import flax
import jax
import numpy as np
import optax
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import SamConfig, ViTConfig
from sam_jax.train import optimizer, step
from sam_jax.train.optimizer import NO_DECAY, encoder_depths, make_optimizer

TINY = SamConfig(
    encoder=ViTConfig(
        embed_dim=16,
        depth=3,
        num_heads=2,
        global_attn_indexes=(2,),
        window_size=4,
        out_chans=16,
        pretrain_image_size=64,
    ),
    image_size=64,
    prompt_embed_dim=16,
    decoder_mlp_dim=32,
    decoder_num_heads=2,
    iou_head_hidden_dim=16,
)


@pytest.fixture(scope="module")
def real_paths() -> dict[str, list[str]]:
    """ "/"-joined parameter paths of full-size models (shapes only: nothing is computed)."""
    out = {}
    for name in ("sam_b", "sam2.1_t", "mobile_sam"):
        flat = flax.traverse_util.flatten_dict(variable_shapes(sam_jax.build(name))["params"])
        out[name] = ["/".join(k) for k in flat]
    return out


def _zeros(config=TINY) -> dict:
    shapes = variable_shapes(build_from_config(config))["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_no_decay_is_every_leaf_but_the_kernels(real_paths):
    """On SAM, SAM 2 and MobileSAM, NO_DECAY names exactly the leaves that are not dense or
    conv kernels: biases, norm parameters, layer scales, embeddings, position tables."""
    hit = lambda p: any(fnmatch.fnmatchcase(p, g) for g in NO_DECAY)
    for name, paths in real_paths.items():
        wrong = [p for p in paths if hit(p) == p.endswith("/kernel")]
        assert not wrong, (name, wrong[:5])
        # under a prefix (a LoRA tree's "base/") the patterns still hold
        assert all(hit("base/" + p) == hit(p) for p in paths), name


def test_encoder_depths_follow_the_blocks(real_paths):
    """Block i of n gets n - i, the patch / position embeddings n + 1, the neck 0; TinyViT's
    blocks count through its stages (2, 2, 6, 2), its patch merging with its stage's last
    block."""
    d = encoder_depths(real_paths["sam_b"])
    assert d["image_encoder/blocks_0/attn/qkv/kernel"] == 12
    assert d["image_encoder/blocks_11/mlp/lin2/bias"] == 1
    assert d["image_encoder/pos_embed"] == d["image_encoder/patch_embed/proj/kernel"] == 13
    assert d["image_encoder/neck_0/kernel"] == 0
    assert not any(p.startswith("mask_decoder") for p in d)
    h = encoder_depths(real_paths["sam2.1_t"])
    assert h["image_encoder/trunk/blocks_0/attn/qkv/kernel"] == 12
    assert h["image_encoder/trunk/blocks_11/attn/qkv/kernel"] == 1
    assert h["image_encoder/trunk/pos_embed_window"] == 13
    assert h["image_encoder/neck/convs_0/conv/kernel"] == 0
    t = encoder_depths(real_paths["mobile_sam"])
    assert t["image_encoder/layers_0/blocks_0/conv1/c/kernel"] == 12
    assert t["image_encoder/layers_1/blocks_0/attn/qkv/kernel"] == 10
    assert t["image_encoder/layers_2/blocks_5/mlp/fc2/kernel"] == 3
    assert t["image_encoder/layers_0/downsample/conv1/c/kernel"] == 11
    assert t["image_encoder/layers_3/blocks_1/attn/proj/kernel"] == 1
    assert t["image_encoder/patch_embed/seq_0/c/kernel"] == 13
    assert t["image_encoder/neck_0/kernel"] == 0
    # a prefix (LoRA adapters "lora/image_encoder/...") keeps the block numbering
    assert encoder_depths(["lora/image_encoder/blocks_3/attn/qkv/kernel/a"]) == {
        "lora/image_encoder/blocks_3/attn/qkv/kernel/a": 1
    }


@pytest.mark.parametrize("schedules", [False, True])
def test_group_learning_rates(schedules):
    """Adam's first step on gradients of ones moves every trained leaf by its group's
    learning rate: the decoder by learning_rate, encoder block i of n by
    encoder_learning_rate * layer_decay ** (n - i), the patch embedding ** (n + 1), the
    neck ** 0; floats and schedules alike."""
    params = _zeros()
    lr, enc_lr, decay = 1e-3, 4e-4, 0.5
    rates = (lambda c: lr + 0 * c, lambda c: enc_lr + 0 * c) if schedules else (lr, enc_lr)
    tx = make_optimizer(params, "all", rates[0], encoder_learning_rate=rates[1], layer_decay=decay)
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
    moved = {p: float(np.abs(u).max()) for p, u in _flat(updates).items()}
    want = {
        "mask_decoder/iou_token/weight": lr,
        "prompt_encoder/no_mask_embed/weight": lr,
        "image_encoder/blocks_0/attn/qkv/kernel": enc_lr * decay**3,
        "image_encoder/blocks_2/mlp/lin1/bias": enc_lr * decay,
        "image_encoder/patch_embed/proj/kernel": enc_lr * decay**4,
        "image_encoder/pos_embed": enc_lr * decay**4,
        "image_encoder/neck_0/kernel": enc_lr,
    }
    for path, rate in want.items():
        np.testing.assert_allclose(moved[path], rate, rtol=1e-4, err_msg=path)
    same_rate = make_optimizer(params, "all", lr)
    updates, _ = same_rate.update(
        jax.tree.map(np.ones_like, params), same_rate.init(params), params
    )
    np.testing.assert_allclose(
        np.abs(_flat(updates)["image_encoder/pos_embed"]).max(), lr, rtol=1e-4
    )


def test_weight_decay_skips_biases_norms_and_embeddings():
    """With zero gradients only the decoupled weight decay moves parameters: kernels by
    lr * weight_decay * p, what NO_DECAY names not at all."""
    params = jax.tree.map(np.ones_like, _zeros())
    tx = make_optimizer(params, "all", 1e-2, weight_decay=0.5)
    updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    for path, u in _flat(updates).items():
        want = 1e-2 * 0.5 if path.endswith("/kernel") else 0.0
        np.testing.assert_allclose(np.abs(u).max(), want, rtol=1e-6, err_msg=path)
    assert "image_encoder/pos_embed" in _flat(updates)


def _adam_states(opt_state) -> list:
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]


def test_clipping_is_global_and_frozen_leaves_have_no_state():
    """The gradient is clipped by its norm over all trained leaves (not per group): Adam's
    first moment after one step is (1 - b1) g / |g| for every trained leaf, whatever its
    group. Frozen leaves (the encoder here) get no optimizer state and zero updates."""
    params = _zeros()
    tx = make_optimizer(params, "all_but_encoder", 1e-3, encoder_learning_rate=1e-4)
    assert tx.labels["image_encoder"]["pos_embed"] == "freeze"
    assert tx.labels["mask_decoder"]["iou_token"]["weight"] == "train"
    grads = jax.tree.map(np.ones_like, params)
    n_trained = sum(x.size for p, x in _flat(params).items() if not p.startswith("image_enc"))
    updates, state = tx.update(grads, tx.init(params), params)
    mus = [x for s in _adam_states(state) for x in jax.tree.leaves(s.mu)]
    assert len(_adam_states(state)) == 2  # decay and no-decay groups of the trained leaves
    assert sum(x.size for x in mus) == n_trained
    for mu in mus:
        np.testing.assert_allclose(np.asarray(mu), 0.1 / np.sqrt(n_trained), rtol=1e-5)
    assert not any(np.any(u) for u in jax.tree.leaves(updates["image_encoder"]))


def test_accumulation_over_calls_with_groups():
    """accumulate=N still moves the parameters on every N-th call only, with groups."""
    params = _zeros()
    tx = make_optimizer(params, "decoder", 1e-3, accumulate=2, layer_decay=0.8)
    state = tx.init(params)
    grads = jax.tree.map(np.ones_like, params)
    for call in range(2):
        updates, state = tx.update(grads, state, params)
        moved = {k for k, v in updates.items() if any(np.any(u) for u in jax.tree.leaves(v))}
        assert moved == (set() if call == 0 else {"mask_decoder"}), (call, moved)


def test_bad_arguments_and_reexports():
    params = _zeros()
    with pytest.raises(ValueError, match="layer_decay"):
        make_optimizer(params, layer_decay=1.5)
    with pytest.raises(ValueError, match="accumulate"):
        make_optimizer(params, accumulate=0)
    with pytest.raises(ValueError, match="no_decay"):
        make_optimizer(params, no_decay="*/bias")
    for name in ("make_optimizer", "trains", "trainable_labels", "TRAINABLE"):
        assert getattr(step, name) is getattr(optimizer, name), name
    assert step.LabelledOptimizer is optimizer.LabelledOptimizer


def test_glob_rule_unions_presets_and_patterns_less_exclusions(real_paths):
    """--trainable words: presets and patterns add what trains, '!' patterns take away."""
    paths = real_paths["sam2.1_t"]
    trained = lambda *words: {p for p in paths if optimizer.trains(optimizer.glob_rule(words))(p)}
    heads = trained("all_but_encoder")
    assert heads and not any(p.startswith("image_encoder/") for p in heads)
    less = trained("all_but_encoder", "!memory_encoder/*")
    assert less == {p for p in heads if not p.startswith("memory_encoder/")} and less != heads
    both = trained("decoder", "memory_attention/*")
    assert both == trained("decoder") | trained("memory_attention/*")
    assert trained("!image_encoder/*") == heads  # only exclusions: all the rest trains
    with pytest.raises(ValueError, match="'!' needs a glob"):
        optimizer.glob_rule(["!"])
