"""SAM 3's DETR decoder and detection head against ultralytics 8.4.190, every parameter random.

The torch decoder is built as `_create_sam3_transformer` builds it (full width: d_model 256,
8 heads, feed-forward 2048, boxRPB "log", text cross-attention, presence token) and run as
`SAM3SemanticModel._run_decoder` runs it (apply_dac=False, sequence-first); the head is
`SAM3SemanticModel._update_scores_and_boxes` with `build_sam3_image_model`'s
DotProductScoring. Inputs are random, batch 2, with a different prompt mask per item.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.sam3_config import Sam3DetectorConfig
from sam_jax.models.sam3_detr_decoder import (
    DecoderOutput,
    Sam3DetrDecoder,
    box_relative_bias,
    box_sine_embedding,
)
from sam_jax.models.sam3_scoring import DotProductScoring, detections

TOL = 1e-4
FULL = Sam3DetectorConfig()
SMALL = dataclasses.replace(FULL, num_queries=12, decoder_layers=2)
# Item 0 has 5 valid prompt tokens (not a prefix), item 1 has 2.
VALID = np.array(
    [[True, False, True, True, False, True, True], [True, True, False, False, False, False, False]]
)


def _inputs(cfg: Sam3DetectorConfig, grid: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, hw, d = 2, grid[0] * grid[1], cfg.d_model
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "memory": normal(b, hw, d),
        "memory_pos": normal(b, hw, d),
        "prompt": normal(b, VALID.shape[1], d),
        "prompt_valid": VALID,
    }


def _torch_decoder(cfg: Sam3DetectorConfig, seed: int):
    import torch
    from torch import nn
    from ultralytics.models.sam.sam3.decoder import TransformerDecoder, TransformerDecoderLayer

    from tests.reference import randomize_

    d, heads = cfg.d_model, cfg.num_heads
    layer = TransformerDecoderLayer(
        d_model=d,
        dim_feedforward=cfg.dim_feedforward,
        dropout=0.1,
        cross_attention=nn.MultiheadAttention(num_heads=heads, dropout=0.1, embed_dim=d),
        n_heads=heads,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=layer,
        num_layers=cfg.decoder_layers,
        num_queries=cfg.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=d,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        use_act_checkpoint=True,
        presence_token=cfg.presence_token,
    )
    randomize_(decoder, seed=seed)
    # randomize_ scales by fan-in only tensors named "weight": the packed q/k/v weights left
    # at 0.2 std give attention logits of std ~10, where the six layers amplify float32
    # rounding into O(1) differences (torch's own float32 and float64 then differ by 0.9).
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, w in decoder.named_parameters():
            if name.endswith("in_proj_weight"):
                w.copy_(torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5)
    return decoder


def _torch_scoring(cfg: Sam3DetectorConfig, seed: int):
    from torch import nn
    from ultralytics.models.sam.sam3.model_misc import DotProductScoring as TorchScoring
    from ultralytics.nn.modules.transformer import MLP as TorchMLP

    from tests.reference import randomize_

    d = cfg.d_model
    mlp = TorchMLP(d, cfg.scoring_mlp_dim, d, 2, residual=True, out_norm=nn.LayerNorm(d))
    return randomize_(TorchScoring(d_model=d, d_proj=d, prompt_mlp=mlp), seed=seed)


def _run_torch_decoder(decoder, x: dict[str, np.ndarray], grid: tuple[int, int]):
    """The reference's _run_decoder call; outputs made batch-first numpy."""
    import torch

    seq = lambda a: torch.from_numpy(a).transpose(0, 1)  # noqa: E731
    b = x["memory"].shape[0]
    with torch.no_grad():
        tgt = decoder.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        hs, refs, presence, feats = decoder(
            tgt=tgt,
            memory=seq(x["memory"]),
            memory_key_padding_mask=None,
            pos=seq(x["memory_pos"]),
            reference_boxes=None,
            spatial_shapes=[grid],
            valid_ratios=torch.ones(b, 1, 2),
            tgt_mask=None,
            memory_text=seq(x["prompt"]),
            text_attention_mask=torch.from_numpy(~x["prompt_valid"]),
            apply_dac=False,
        )
    return {
        "hidden_states": hs.transpose(1, 2),
        "reference_boxes": refs.transpose(1, 2),
        "presence_logits": None if presence is None else presence.transpose(1, 2),
        "presence_features": None if feats is None else feats[0],
    }


def _variables(module, torch_module, *args, **kwargs) -> dict:
    state_dict = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    return state_dict_to_variables(state_dict, target)


@functools.partial(jax.jit, static_argnums=0, static_argnames="spatial_shape")
def _decode(model, variables, x, *, spatial_shape):
    return model.apply(variables, **x, spatial_shape=spatial_shape)


def _check_decoder(cfg: Sam3DetectorConfig, grid: tuple[int, int], seed: int):
    """Runs both decoders and asserts parity; returns (ours, torch outputs, torch decoder,
    inputs)."""
    from tests.reference import rel_err

    ref = _torch_decoder(cfg, seed)
    x = _inputs(cfg, grid, seed)
    expected = _run_torch_decoder(ref, x, grid)
    model = Sam3DetrDecoder(cfg)
    variables = _variables(model, ref, **x, spatial_shape=grid)
    ours = _decode(model, variables, x, spatial_shape=grid)
    n, b, q, d = cfg.decoder_layers, 2, cfg.num_queries, cfg.d_model
    assert ours.hidden_states.shape == (n, b, q, d)
    assert ours.reference_boxes.shape == ours.boxes.shape == (n, b, q, 4)
    errs = {k: rel_err(getattr(ours, k), v.numpy()) for k, v in expected.items() if v is not None}
    # Each layer's refined boxes are the next layer's reference boxes.
    np.testing.assert_array_equal(ours.boxes[:-1], ours.reference_boxes[1:])
    print(f"\nsam3 decoder {cfg.decoder_layers}x{cfg.num_queries}q grid {grid}: rel err {errs}")
    assert max(errs.values()) <= TOL, errs
    return ours, expected, ref, x


@pytest.mark.torch
def test_full_decoder_and_head_match_reference():
    """Released config (6 layers, 200 queries, presence token) on an 8x8 grid, and the head
    (DotProductScoring + _update_scores_and_boxes) on the decoder's outputs."""
    import torch
    from ultralytics.models.sam.sam3.sam3_image import SAM3SemanticModel

    from tests.reference import rel_err

    ours, expected, ref, x = _check_decoder(FULL, (8, 8), seed=0)
    assert ours.presence_logits.shape == (FULL.decoder_layers, 2, 1)
    assert ours.presence_features.shape == (2, FULL.d_model)

    torch_scoring = _torch_scoring(FULL, seed=1)
    fake = types.SimpleNamespace(
        use_dot_prod_scoring=True,
        dot_prod_scoring=torch_scoring,
        transformer=types.SimpleNamespace(decoder=ref),
        supervise_joint_box_scores=False,
    )
    out = {}
    with torch.no_grad():
        SAM3SemanticModel._update_scores_and_boxes(
            fake,
            out,
            expected["hidden_states"],
            expected["reference_boxes"],
            torch.from_numpy(x["prompt"]).transpose(0, 1),
            torch.from_numpy(~x["prompt_valid"]),
            dec_presence_out=expected["presence_logits"],
        )
    scoring = DotProductScoring(FULL.d_model, FULL.scoring_mlp_dim)
    args = (ours.hidden_states[-1], x["prompt"], x["prompt_valid"])
    variables = _variables(scoring, torch_scoring, *args)
    head = detections(ours, jax.jit(scoring.apply)(variables, *args))
    errs = {
        "pred_logits": rel_err(head.pred_logits, out["pred_logits"].numpy()),
        "pred_boxes": rel_err(head.pred_boxes, out["pred_boxes"].numpy()),
        "pred_boxes_xyxy": rel_err(head.pred_boxes_xyxy, out["pred_boxes_xyxy"].numpy()),
        "presence_logit": rel_err(head.presence_logit, out["presence_logit_dec"].numpy()),
    }
    print(f"sam3 head: rel err {errs}")
    assert head.pred_logits.shape == (2, FULL.num_queries, 1)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.torch
@pytest.mark.parametrize("presence", [True, False])
def test_non_square_grid_matches_reference(presence):
    cfg = dataclasses.replace(SMALL, presence_token=presence)
    ours, *_ = _check_decoder(cfg, (6, 10), seed=2)
    assert (ours.presence_logits is None) == (not presence)
    assert (ours.presence_features is None) == (not presence)


@pytest.mark.torch
def test_scoring_all_layers_matches_reference():
    """DotProductScoring on stacked layers (L, B, Q, D), including the mean over a
    non-prefix mask; hs scaled up so the +-12 clamp is exercised."""
    import torch

    from tests.reference import rel_err

    ref = _torch_scoring(FULL, seed=3)
    rng = np.random.default_rng(3)
    hs = 8 * rng.standard_normal((3, 2, 5, FULL.d_model)).astype(np.float32)
    prompt = rng.standard_normal((2, VALID.shape[1], FULL.d_model)).astype(np.float32)
    with torch.no_grad():
        expected = ref(
            torch.from_numpy(hs),
            torch.from_numpy(prompt).transpose(0, 1),
            torch.from_numpy(~VALID),
        ).numpy()
    scoring = DotProductScoring(FULL.d_model, FULL.scoring_mlp_dim)
    ours = scoring.apply(_variables(scoring, ref, hs, prompt, VALID), hs, prompt, VALID)
    err = rel_err(ours, expected)
    print(f"\nsam3 scoring (L, B, Q): rel err {err:.2e}")
    assert np.abs(expected).max() == 12.0  # some logits clamped
    assert err <= TOL


@pytest.mark.torch
def test_box_bias_and_sine_match_reference():
    """boxRPB and the box sine embedding alone, on boxes reaching outside [0, 1]."""
    import torch

    from tests.reference import rel_err

    ref = _torch_decoder(SMALL, seed=4)
    rng = np.random.default_rng(4)
    boxes = rng.uniform(-0.2, 1.2, (2, 7, 4)).astype(np.float32)  # (B, Q, 4)
    grid = (5, 9)
    with torch.no_grad():
        seq_boxes = torch.from_numpy(boxes).transpose(0, 1)
        bias = ref._get_rpb_matrix(seq_boxes, grid).numpy()
        from ultralytics.models.sam.sam3.model_misc import gen_sineembed_for_position

        sine = gen_sineembed_for_position(seq_boxes, SMALL.d_model).transpose(0, 1).numpy()
    model = Sam3DetrDecoder(SMALL)
    x = _inputs(SMALL, grid, 4)
    variables = _variables(model, ref, **x, spatial_shape=grid)["params"]

    def ours_bias(params, boxes):
        from sam_jax.models.layers import MLP

        heads = SMALL.num_heads
        mx, my = (MLP(SMALL.d_model, heads, 2) for _ in range(2))
        embed_x = lambda v: mx.apply({"params": params["boxRPB_embed_x"]}, v)  # noqa: E731
        embed_y = lambda v: my.apply({"params": params["boxRPB_embed_y"]}, v)  # noqa: E731
        return box_relative_bias(embed_x, embed_y, boxes, grid)

    errs = {
        "bias": rel_err(ours_bias(variables, boxes), bias),
        "sine": rel_err(box_sine_embedding(jnp.asarray(boxes), SMALL.d_model), sine),
    }
    print(f"\nsam3 boxRPB / sine: rel err {errs}")
    assert max(errs.values()) <= TOL, errs


def test_bfloat16_close_to_float32():
    grid = (4, 4)
    x = _inputs(SMALL, grid, 5)
    model = Sam3DetrDecoder(SMALL)
    variables = model.init(jax.random.key(0), **x, spatial_shape=grid)
    full = _decode(model, variables, x, spatial_shape=grid)
    half = _decode(Sam3DetrDecoder(SMALL, dtype=jnp.bfloat16), variables, x, spatial_shape=grid)
    assert half.hidden_states.dtype == half.boxes.dtype == jnp.float32
    err = float(jnp.abs(half.hidden_states - full.hidden_states).max())
    assert 0 < err < 0.2 * float(jnp.abs(full.hidden_states).max())


def test_full_size_variables():
    """The released decoder's and scorer's parameters by name and shape."""
    grid = (4, 4)
    x = _inputs(FULL, grid, 6)
    shapes = jax.eval_shape(
        lambda: Sam3DetrDecoder(FULL).init(jax.random.key(0), **x, spatial_shape=grid)
    )["params"]
    assert shapes["query_embed"]["weight"].shape == (200, 256)
    assert shapes["reference_points"]["weight"].shape == (200, 4)
    assert shapes["presence_token"]["weight"].shape == (1, 256)
    assert shapes["boxRPB_embed_x"]["layers_1"]["kernel"].shape == (256, 8)
    assert shapes["ref_point_head"]["layers_0"]["kernel"].shape == (512, 256)
    assert shapes["layers_5"]["ca_text"]["in_proj_weight"].shape == (768, 256)
    assert shapes["layers_5"]["linear1"]["kernel"].shape == (256, 2048)
    assert "layers_6" not in shapes
    scoring = DotProductScoring(FULL.d_model, FULL.scoring_mlp_dim)
    hs = jnp.zeros((2, 200, 256))
    sc = jax.eval_shape(lambda: scoring.init(jax.random.key(0), hs, x["prompt"], VALID))
    assert sc["params"]["prompt_mlp"]["layers_0"]["kernel"].shape == (256, 2048)
    assert sc["params"]["prompt_mlp"]["out_norm"]["scale"].shape == (256,)


def test_bad_inputs():
    grid = (4, 4)
    x = _inputs(SMALL, grid, 7)
    model = Sam3DetrDecoder(SMALL)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **x, spatial_shape=grid))

    def decode(spatial_shape=grid, **changes):
        jax.eval_shape(
            functools.partial(model.apply, spatial_shape=spatial_shape), variables, **(x | changes)
        )

    decode()
    cases = [
        ({"spatial_shape": (4, 5)}, "does not cover"),
        ({"spatial_shape": (4,)}, "two ints"),
        ({"memory": x["memory"][..., :8]}, "memory must be"),
        ({"memory": x["memory"][0]}, "memory must be"),
        ({"memory_pos": x["memory_pos"][:, :3]}, "memory_pos must be"),
        ({"prompt": x["prompt"][:1]}, "prompt must be"),
        ({"prompt": x["prompt"][:, :0]}, "prompt must be"),
        ({"prompt_valid": VALID.astype(np.int32)}, "prompt_valid must be"),
        ({"prompt_valid": VALID[:, :3]}, "prompt_valid must be"),
    ]
    for changes, what in cases:
        with pytest.raises(ValueError, match=what):
            decode(**changes)

    scoring = DotProductScoring(SMALL.d_model, 32)
    hs = np.zeros((2, 3, SMALL.d_model), np.float32)
    sv = jax.eval_shape(lambda: scoring.init(jax.random.key(0), hs, x["prompt"], VALID))
    for args, what in [
        ((hs[:1], x["prompt"], VALID), "hs must be"),
        ((hs[..., :8], x["prompt"], VALID), "hs must be"),
        ((hs, x["prompt"][0], VALID), "prompt must be"),
        ((hs, x["prompt"], VALID[:1]), "prompt_valid must be"),
    ]:
        with pytest.raises(ValueError, match=what):
            jax.eval_shape(scoring.apply, sv, *args)
    layers, q = SMALL.decoder_layers, SMALL.num_queries
    boxes = jnp.zeros((layers, 2, q, 4))
    out = DecoderOutput(jnp.zeros((layers, 2, q, SMALL.d_model)), boxes, boxes, None, None)
    assert detections(out, jnp.zeros((2, q, 1))).presence_logit is None
    with pytest.raises(ValueError, match="scores must be"):
        detections(out, jnp.zeros((2, q)))
