"""LoRA as a parameter transform: init, merge, a train step on the adapters only, and the
merged checkpoint giving the trained model's outputs."""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import save
from sam_jax.train.lora import (
    LORA_TRAINABLE,
    LoraConfig,
    adapted_paths,
    lora_init,
    lora_merge,
)
from sam_jax.train.step import TrainState, make_optimizer, make_train_step

S = 64  # the bundled model at a small image size: 8 x 8 embeddings, cheap to compile


@pytest.fixture(scope="module")
def bundled():
    model, variables = sam_jax.load("sam_tiny_shapes", image_size=S)
    return model, jax.tree.map(np.asarray, variables)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_config_and_target_errors(bundled):
    _, variables = bundled
    with pytest.raises(ValueError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="no 2-D kernel"):
        lora_init(
            variables["params"], LoraConfig(rank=2, targets=("nothing/*",)), jax.random.key(0)
        )
    # conv kernels (kh, kw, in, out) are not adapted even where a glob names them
    convs = LoraConfig(rank=2, targets=("image_encoder/neck_*/kernel",))
    with pytest.raises(ValueError, match="no 2-D kernel"):
        lora_init(variables["params"], convs, jax.random.key(0))


def test_init_adapts_the_attention_and_mlp_kernels_and_merges_to_the_base(bundled):
    """The default targets: qkv, proj, lin1, lin2 of the 4 encoder blocks and the decoder's
    attention projections (2 layers x 3 attentions + the final one, 4 each); b = 0, so the
    merge of a fresh tree is the base itself, leaf for leaf and dtype for dtype."""
    _, variables = bundled
    params = variables["params"]
    config = LoraConfig(rank=4, alpha=8.0)
    paths = ["/".join(k) for k in adapted_paths(params, config)]
    encoder = [p for p in paths if p.startswith("image_encoder/")]
    decoder = [p for p in paths if p.startswith("mask_decoder/transformer/")]
    assert len(encoder) == 16 and len(decoder) == 28 and len(paths) == 44
    assert "image_encoder/blocks_3/mlp/lin2/kernel" in encoder
    assert "mask_decoder/transformer/final_attn_token_to_image/out_proj/kernel" in decoder
    tree = lora_init(params, config, jax.random.key(0))
    qkv = tree["lora"]["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv["a"].shape == (128, 4) and qkv["b"].shape == (4, 384)
    assert not np.any(qkv["b"])
    all_a = np.concatenate([np.ravel(v) for p, v in _flat(tree["lora"]).items() if p[-1] == "a"])
    assert abs(all_a.std() - 1 / 4) < 0.01  # N(0, (1 / rank)^2)
    merged = jax.jit(functools.partial(lora_merge, config=config))(tree)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    for (path, m), p in zip(_flat(merged).items(), _flat(params).values(), strict=True):
        assert m.dtype == p.dtype and np.array_equal(m, p), path


def test_merge_is_w_plus_scaled_a_b(bundled):
    _, variables = bundled
    config = LoraConfig(rank=2, alpha=3.0, targets=("mask_decoder/transformer/*/q_proj/kernel",))
    tree = lora_init(variables["params"], config, jax.random.key(1))
    rng = np.random.default_rng(0)
    tree["lora"] = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), tree["lora"])
    merged = _flat(lora_merge(tree, config))
    path = "mask_decoder/transformer/layers_0/self_attn/q_proj/kernel"
    ab = _flat(tree["lora"])
    want = _flat(variables["params"])[path] + 1.5 * ab[path + "/a"] @ ab[path + "/b"]
    np.testing.assert_allclose(merged[path], want, rtol=1e-5, atol=1e-6)
    k_path = path.replace("q_proj", "k_proj")  # not a target: untouched
    assert np.array_equal(merged[k_path], _flat(variables["params"])[k_path])
    bad = {**tree, "lora": jax.tree.map(lambda x: x[:1], tree["lora"])}
    with pytest.raises(ValueError, match="do not fit"):
        lora_merge(bad, config)
    with pytest.raises(ValueError, match="'base' and 'lora'"):
        lora_merge(variables["params"], config)


def test_lora_step_trains_only_the_adapters_and_the_merged_file_gives_its_outputs(
    bundled, tmp_path
):
    """One step with the optimizer over a LoRA tree (LORA_TRAINABLE) and lora_merge as the
    step's transform: the base is untouched and the adapters moved. Merged and saved, the
    file loads as a plain model whose logits are those of the tree run through the
    transform."""
    from tests.test_train import scene_batch

    model, variables = bundled
    config = LoraConfig(rank=2)
    tree = jax.tree.map(np.asarray, lora_init(variables["params"], config, jax.random.key(2)))
    tx = make_optimizer(tree, LORA_TRAINABLE, 1e-2)
    transform = functools.partial(lora_merge, config=config)
    step = make_train_step(model, tx, num_corrections=0, transform=transform)
    x, t = scene_batch(2, S)
    state, met = step(TrainState.create({**variables, "params": tree}, tx), x, t, jax.random.key(0))
    assert np.isfinite(float(met["loss"]))
    after = jax.tree.map(np.asarray, state.variables["params"])
    for path, a in _flat(after["base"]).items():
        assert np.array_equal(a, _flat(tree["base"])[path]), path
    moved_b = [p for p, v in _flat(after["lora"]).items() if p.endswith("/b") and np.any(v)]
    assert len(moved_b) == len(adapted_paths(variables["params"], config))

    prompts = dict(
        point_coords=np.array([[[20.0, 30.0]], [[40.0, 12.0]]]),
        point_labels=np.ones((2, 1), np.int32),
    )
    inside = jax.jit(lambda tr: model.apply({**variables, "params": transform(tr)}, x, **prompts))(
        after
    )
    file = tmp_path / "merged.safetensors"
    save(file, model, {**variables, "params": lora_merge(after, config)})
    loaded_model, loaded = sam_jax.load(file)
    outside = jax.jit(lambda v: loaded_model.apply(v, x, **prompts))(loaded)
    for a, b in zip(inside, outside, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    base_logits = jax.jit(lambda v: model.apply(v, x, **prompts))(variables)[0]
    assert float(jnp.abs(base_logits - outside[0]).max()) > 1e-4  # the step changed the model
