"""Block remat (`recompute_in_backward`) in Hiera, SAM's ViT and SAM 3's ViT: the same function and
gradients as the plain encoder, and a backward pass that holds about one block's
activations at a time."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.config import HieraConfig, ViTConfig
from sam_jax.models.hiera import Hiera
from sam_jax.models.sam3_vit import ViT as Sam3ViT
from sam_jax.models.vit import ImageEncoderViT
from sam_jax.train.step import TRAIN_COMPILER_OPTIONS
from tests.tiny_configs import SAM3_SMALL_VIT, SMALL_HIERA, TINY_SAM

# Several blocks per stage, so keeping every block's activations would show in the bytes.
DEEP_HIERA = HieraConfig(
    embed_dim=32,
    num_heads=1,
    stages=(1, 2, 5, 2),
    global_att_blocks=(5,),
    window_spec=(8, 4, 8, 4),
    window_pos_embed_bkg_spatial_size=(7, 7),
)
DEEP_VIT = ViTConfig(
    embed_dim=32,
    depth=8,
    num_heads=2,
    global_attn_indexes=(3, 7),
    window_size=4,
    out_chans=32,
    pretrain_image_size=128,
)
# (encoder class, small config for values, deep config for memory)
ENCODERS = {
    "hiera": (Hiera, SMALL_HIERA, DEEP_HIERA),
    "vit": (ImageEncoderViT, TINY_SAM.encoder, DEEP_VIT),
    "sam3_vit": (
        Sam3ViT,
        SAM3_SMALL_VIT,
        dataclasses.replace(
            SAM3_SMALL_VIT, embed_dim=32, depth=8, global_att_blocks=(3, 7), pretrain_image_size=112
        ),
    ),
}


def _loss(model):
    """A scalar of every map the encoder returns, as a decoder would use them (float32)."""

    def loss(variables, images):
        maps = jax.tree.leaves(model.apply(variables, images))
        return sum(jnp.sum(jnp.tanh(m.astype(jnp.float32)) ** 2) for m in maps)

    return loss


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_remat_keeps_values_and_gradients(name):
    """Float32: the remat encoder's maps and its gradients (parameters and pixels) are the
    plain encoder's, with the same parameter tree."""
    cls, cfg, _ = ENCODERS[name]
    plain, remat = cls(cfg), cls(cfg, remat=True)
    images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(plain.init, jax.random.key(0), images)
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), images)) == (
        jax.tree.structure(shapes)
    )
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape, np.float32), shapes)

    def run(model):
        grad = jax.grad(_loss(model), argnums=(0, 1))
        return model.apply(variables, images), grad(variables, images)

    (maps_a, grads_a), (maps_b, grads_b) = jax.jit(lambda: (run(plain), run(remat)))()
    for a, b in zip(jax.tree.leaves(maps_a), jax.tree.leaves(maps_b), strict=True):
        np.testing.assert_array_equal(a, b)
    flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(flat_a) == len(flat_b) == len(jax.tree.leaves(variables)) + 1
    for a, b in zip(flat_a, flat_b, strict=True):  # float32 rounding of reordered sums
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    assert max(float(np.abs(g).max()) for g in flat_a) > 0  # gradients reach every leaf


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_remat_backward_holds_about_one_block(name):
    """bf16, 128 px, 8-10 blocks: the compiled gradient's temp bytes with remat are under
    0.45 of the plain encoder's. (Hiera with `nn.remat` per block, whose recomputations and
    weight-gradient products XLA:CPU is free to move, measured about 0.7 here.)"""
    cls, _, cfg = ENCODERS[name]
    images = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)

    def temp_bytes(remat: bool) -> int:
        model = cls(cfg, remat=remat, dtype=jnp.bfloat16)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        options = TRAIN_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
        grad = jax.jit(jax.grad(_loss(model)), compiler_options=options)
        return grad.lower(variables, images).compile().memory_analysis().temp_size_in_bytes

    plain, remat = temp_bytes(False), temp_bytes(True)
    assert remat < 0.45 * plain, (remat, plain)
