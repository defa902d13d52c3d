"""SAM 3's segmentation head against ultralytics' UniversalSegmentationHead, every parameter
random, built as build_sam3_image_model builds it (d 256, 8 heads, 3 upsampling stages).

Small grids stand in for 72x72: a base h x w with levels at 4x, 2x and 1x, batch 2, a few
queries, and prompts whose padding differs per item. The torch inputs are laid out as the
reference passes them: levels NCHW, queries (layers, B, Q, D), encoder states and prompt
sequence-first, prompt_mask True at padding.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_seg_head import SegmentationOutput, UniversalSegmentationHead

TOL = 1e-4
CFG = Sam3DetectorConfig()
D = CFG.d_model
NUM_KEYS = 28  # 3 stages x 4, mask MLP 6, attention 4, its norm 2, two 1x1 heads 4


class _Wrapper(nn.Module):
    """The head under the name SAM3SemanticModel gives it, as the lead will nest it."""

    @nn.compact
    def __call__(self, *args, **kwargs) -> SegmentationOutput:
        return UniversalSegmentationHead(CFG, name="segmentation_head")(*args, **kwargs)


def _reference(seed: int):
    import torch
    from ultralytics.models.sam.sam3.maskformer_segmentation import (
        PixelDecoder,
    )
    from ultralytics.models.sam.sam3.maskformer_segmentation import (
        UniversalSegmentationHead as TorchHead,
    )

    from tests.reference import randomize_

    torch.manual_seed(seed)
    head = TorchHead(
        hidden_dim=D,
        upsampling_stages=CFG.mask_upsampling_stages,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=False,  # a training-time memory saving; the math is the same
        cross_attend_prompt=torch.nn.MultiheadAttention(
            num_heads=CFG.num_heads, dropout=0, embed_dim=D
        ),
        pixel_decoder=PixelDecoder(
            num_upsampling_stages=CFG.mask_upsampling_stages,
            interpolation_mode="nearest",
            hidden_dim=D,
        ),
    )
    return randomize_(head, seed=seed)


def _inputs(seed: int, base: tuple[int, int], batch: int, level_batch: int, queries: int):
    rng = np.random.default_rng(seed)
    h, w = base
    levels = [
        rng.standard_normal((level_batch, h * s, w * s, D)).astype(np.float32) for s in (4, 2, 1)
    ]
    hs = rng.standard_normal((2, batch, queries, D)).astype(np.float32)  # two decoder layers
    states = rng.standard_normal((batch, h * w, D)).astype(np.float32)
    prompt = rng.standard_normal((batch, 5, D)).astype(np.float32)
    valid = np.zeros((batch, 5), bool)
    valid[0, :] = True  # every token real
    valid[1:, :2] = True  # padding after two tokens
    return levels, hs, states, prompt, valid


def _run_reference(head, levels, hs, states, prompt, valid) -> dict[str, np.ndarray]:
    import torch

    from tests.reference import to_nchw

    batch = states.shape[0]
    with torch.no_grad():
        out = head(
            # SAM3SemanticModel expands shared levels to the prompt batch
            backbone_feats=[to_nchw(x).expand(batch, -1, -1, -1) for x in levels],
            obj_queries=torch.from_numpy(hs),
            encoder_hidden_states=torch.from_numpy(states.transpose(1, 0, 2).copy()),
            prompt=torch.from_numpy(prompt.transpose(1, 0, 2).copy()),
            prompt_mask=torch.from_numpy(~valid),
        )
    assert out["presence_logit"] is None
    return {"pred_masks": out["pred_masks"].numpy(), "semantic_seg": out["semantic_seg"].numpy()}


def _variables(head, args) -> dict:
    state_dict = {f"segmentation_head.{k}": v.numpy() for k, v in head.state_dict().items()}
    assert len(state_dict) == NUM_KEYS
    target = jax.eval_shape(lambda: _Wrapper().init(jax.random.key(0), *args))
    return state_dict_to_variables(state_dict, target)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, levels, queries, states, prompt, valid):
    return model.apply(variables, levels, queries, states, prompt, valid)


def _compare(seed: int, base: tuple[int, int], level_batch: int, queries: int) -> dict:
    from tests.reference import rel_err

    head = _reference(seed)
    levels, hs, states, prompt, valid = _inputs(seed, base, 2, level_batch, queries)
    expected = _run_reference(head, levels, hs, states, prompt, valid)
    args = ([jnp.asarray(x) for x in levels], hs[-1], states, prompt, valid)
    out = _apply(_Wrapper(), _variables(head, args), *args)
    h0, w0 = 4 * base[0], 4 * base[1]
    assert out.pred_masks.shape == (2, queries, h0, w0)
    assert out.semantic_seg.shape == (2, 1, h0, w0)
    assert out.pred_masks.dtype == out.semantic_seg.dtype == jnp.float32
    assert out.presence_logit is None
    return {k: rel_err(getattr(out, k), v) for k, v in expected.items()}


@pytest.mark.torch
def test_matches_reference():
    """Base 6x6 (levels 24, 12, 6), per-item levels, 3 queries."""
    errs = _compare(seed=1, base=(6, 6), level_batch=2, queries=3)
    print(f"\nsam3 seg head 6x6: rel err {errs}")
    assert max(errs.values()) < TOL


@pytest.mark.torch
def test_non_square_shared_levels_match_reference():
    """Base 5x3 (levels 20x12, 10x6, 5x3): a transposed grid would fail; levels of batch 1
    are shared by both prompts, as SAM3SemanticModel expands them."""
    errs = _compare(seed=2, base=(5, 3), level_batch=1, queries=4)
    print(f"\nsam3 seg head 5x3 shared: rel err {errs}")
    assert max(errs.values()) < TOL


@pytest.mark.torch
def test_prompt_padding_matters():
    """The valid mask reaches the attention: unmasking item 1's padding changes its masks
    and leaves item 0's (all valid) alone."""
    head = _reference(3)
    levels, hs, states, prompt, valid = _inputs(3, (4, 4), 2, 2, 2)
    args = ([jnp.asarray(x) for x in levels], hs[-1], states, prompt, valid)
    variables = _variables(head, args)
    out = _apply(_Wrapper(), variables, *args)
    full = _apply(_Wrapper(), variables, *args[:4], np.ones_like(valid))
    np.testing.assert_array_equal(out.pred_masks[0], full.pred_masks[0])
    assert float(jnp.abs(out.pred_masks[1] - full.pred_masks[1]).max()) > 1e-3


@pytest.mark.torch
def test_conversion_is_strict():
    """The unused third stage is a variable too; dropping it from the checkpoint fails."""
    head = _reference(4)
    levels, hs, states, prompt, valid = _inputs(4, (2, 2), 2, 2, 1)
    args = ([jnp.asarray(x) for x in levels], hs[-1], states, prompt, valid)
    state_dict = {f"segmentation_head.{k}": v.numpy() for k, v in head.state_dict().items()}
    target = jax.eval_shape(lambda: _Wrapper().init(jax.random.key(0), *args))
    del state_dict["segmentation_head.pixel_decoder.conv_layers.2.weight"]
    with pytest.raises(ValueError, match="conv_layers.2.weight"):
        state_dict_to_variables(state_dict, target)


def _good_args(b: int = 2, h: int = 3, w: int = 2, q: int = 3, p: int = 4) -> dict:
    z = np.zeros
    return {
        "backbone_fpn": [z((b, 4 * h, 4 * w, D)), z((1, 2 * h, 2 * w, D)), z((b, h, w, D))],
        "queries": z((b, q, D)),
        "encoder_hidden_states": z((b, h * w, D)),
        "prompt": z((b, p, D)),
        "prompt_valid": np.ones((b, p), bool),
    }


def test_variables_and_shapes():
    """Every torch key has a variable, unused stage included; output shapes."""
    model = UniversalSegmentationHead(CFG)
    args = _good_args()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **args))
    params = shapes["params"]
    assert len(jax.tree_util.tree_leaves(shapes)) == NUM_KEYS
    assert params["pixel_decoder"]["conv_layers_2"]["kernel"].shape == (3, 3, D, D)
    assert params["pixel_decoder"]["norms_2"]["scale"].shape == (D,)
    assert params["cross_attend_prompt"]["in_proj_weight"].shape == (3 * D, D)
    assert params["semantic_seg_head"]["kernel"].shape == (1, 1, D, 1)
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), **args), **args))
    assert out.pred_masks.shape == (2, 3, 12, 8)
    assert out.semantic_seg.shape == (2, 1, 12, 8)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("encoder_hidden_states", np.zeros((2, 5, D)), "needs 6"),
        ("encoder_hidden_states", np.zeros((6, D)), "encoder_hidden_states must be"),
        ("queries", np.zeros((2, 2, 3, D)), "last layer"),
        ("queries", np.zeros((3, 3, D)), "queries must be"),
        ("prompt", np.zeros((2, 4, D + 1)), "prompt must be"),
        ("prompt_valid", np.ones((2, 3), bool), "prompt_valid must be"),
        ("prompt_valid", np.ones((2, 4), np.int32), "prompt_valid must be"),
        ("backbone_fpn", [np.zeros((3, 6, 4, D)), np.zeros((2, 3, 2, D))], r"backbone_fpn\[0\]"),
        ("backbone_fpn", [np.zeros((2, 3, 2, D + 8))], r"backbone_fpn\[0\]"),
        ("backbone_fpn", [np.zeros((2, 3, 2, D))] * 5, "1 to 4 levels"),
    ],
)
def test_bad_shapes_raise(field, value, match):
    model = UniversalSegmentationHead(CFG)
    args = _good_args()
    args[field] = value
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: model.init(jax.random.key(0), **args))


def test_bfloat16_close_to_float32():
    model = UniversalSegmentationHead(CFG)
    rng = np.random.default_rng(5)
    args = jax.tree_util.tree_map(
        lambda x: x if x.dtype == bool else rng.standard_normal(x.shape).astype(np.float32),
        _good_args(),
    )
    variables = model.init(jax.random.key(0), **args)
    full = model.apply(variables, **args)
    half = UniversalSegmentationHead(CFG, dtype=jnp.bfloat16).apply(variables, **args)
    for a, b in zip(half[:2], full[:2], strict=True):
        assert a.dtype == jnp.float32
        err = float(jnp.abs(a - b).max() / jnp.abs(b).max())
        assert 0 < err < 5e-2, err
