"""Parity of SAM 2's memory attention and memory encoder with ultralytics, every weight random."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.memory_attention import MemoryAttention
from sam_jax.models.memory_encoder import MemoryEncoder
from sam_jax.models.position_encoding import sine_position_encoding
from tests.reference import nchw, randomize_, rel_err, to_nchw

TOL = 1e-4


def _load(module, torch_module, *args, **static):
    """Flax variables of `module` from the torch module's state_dict (static: non-array args)."""
    sd = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    init = functools.partial(module.init, jax.random.key(0), **static)
    target = jax.eval_shape(init, *args)
    return state_dict_to_variables(sd, target)


@functools.cache
def _ref_memory_attention():
    from ultralytics.models.sam.modules.memory_attention import (
        MemoryAttention as RefMemoryAttention,
    )
    from ultralytics.models.sam.modules.memory_attention import MemoryAttentionLayer

    ref = RefMemoryAttention(
        d_model=256, pos_enc_at_input=True, num_layers=4, layer=MemoryAttentionLayer()
    )
    return randomize_(ref, seed=1)


def _run_ref_attention(ref, feat_hw, curr, curr_pos, memory, memory_pos, num_ptr):
    from ultralytics.models.sam.modules.utils import compute_axial_cis

    h, w = feat_hw
    # The reference infers a square grid from the token count; give it the (h, w) table
    # (row-major tokens, x = column) so non-square grids compare too.
    for layer in ref.layers:
        for attn in (layer.self_attn, layer.cross_attn_image):
            attn.freqs_cis = compute_axial_cis(dim=256, end_x=w, end_y=h)

    def seq_first(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(1, 0, 2)))

    with torch.no_grad():
        out = ref(
            curr=seq_first(curr),
            memory=seq_first(memory),
            curr_pos=seq_first(curr_pos),
            memory_pos=seq_first(memory_pos),
            num_obj_ptr_tokens=num_ptr,
        )
    return out.numpy().transpose(1, 0, 2)


def _inputs(rng, b, hw, m):
    f = np.float32
    return (
        rng.standard_normal((b, hw, 256)).astype(f),
        rng.standard_normal((b, hw, 256)).astype(f),
        rng.standard_normal((b, m, 64)).astype(f),
        rng.standard_normal((b, m, 64)).astype(f),
    )


def _ours_attention(ref, feat_hw, num_ptr, curr, curr_pos, memory, memory_pos, mask=None):
    module = MemoryAttention()
    fn = functools.partial(
        module.apply, num_obj_ptr_tokens=num_ptr, memory_mask=mask, feat_hw=feat_hw
    )
    args = (curr, curr_pos, memory, memory_pos)
    variables = _load(
        module,
        ref,
        *args,
        num_obj_ptr_tokens=num_ptr,
        feat_hw=feat_hw,
    )
    return np.asarray(jax.jit(fn)(variables, *args))


@pytest.mark.torch
@pytest.mark.parametrize(
    "feat_hw, num_frames, num_ptr",
    [((8, 8), 2, 8), ((6, 10), 2, 12), ((16, 16), 1, 0)],
)
def test_memory_attention_parity(feat_hw, num_frames, num_ptr):
    ref = _ref_memory_attention()
    hw = feat_hw[0] * feat_hw[1]
    rng = np.random.default_rng(0)
    args = _inputs(rng, 2, hw, num_frames * hw + num_ptr)
    expected = _run_ref_attention(ref, feat_hw, *args, num_ptr)
    ours = _ours_attention(ref, feat_hw, num_ptr, *args)
    err = rel_err(ours, expected)
    print(f"memory attention {feat_hw} frames={num_frames} ptr_tokens={num_ptr}: rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.torch
def test_memory_attention_masked_slots_match_valid_only():
    """A fixed-shape bank (3 frame slots, 4 pointers = 16 tokens) with empty slots holding
    garbage gives, per batch element, the reference's output on only the valid memories."""
    ref = _ref_memory_attention()
    feat_hw, slots, ptr_slots = (8, 8), 3, 4
    hw = feat_hw[0] * feat_hw[1]
    num_ptr = 4 * ptr_slots
    rng = np.random.default_rng(1)
    curr, curr_pos, memory, memory_pos = _inputs(rng, 2, hw, slots * hw + num_ptr)
    frame_ok = np.array([[True, False, True], [False, True, False]])
    ptr_ok = np.array([[True, True, False, True], [False, True, False, False]])
    mask = np.concatenate([np.repeat(frame_ok, hw, axis=1), np.repeat(ptr_ok, 4, axis=1)], 1)
    memory[~mask] = 1e4 * rng.standard_normal((int((~mask).sum()), 64))
    memory_pos[~mask] = np.nan
    memory[1, 5] = np.nan  # frame slot 0 of element 1 is empty

    ours = _ours_attention(
        ref, feat_hw, num_ptr, curr, curr_pos, memory, memory_pos, jnp.asarray(mask)
    )
    for i in range(2):
        valid = mask[i]
        expected = _run_ref_attention(
            ref,
            feat_hw,
            curr[i : i + 1],
            curr_pos[i : i + 1],
            memory[i : i + 1, valid],
            memory_pos[i : i + 1, valid],
            4 * int(ptr_ok[i].sum()),
        )
        err = rel_err(ours[i : i + 1], expected)
        print(f"masked bank, element {i}: rel err {err:.2e}")
        assert err <= TOL


@functools.cache
def _ref_memory_encoder():
    from ultralytics.models.sam.modules.encoders import MemoryEncoder as RefMemoryEncoder

    return randomize_(RefMemoryEncoder(out_dim=64), seed=2)


@pytest.mark.torch
@pytest.mark.parametrize("feat_hw, skip_sigmoid", [((8, 8), True), ((6, 10), False)])
def test_memory_encoder_parity(feat_hw, skip_sigmoid):
    ref = _ref_memory_encoder()
    h, w = feat_hw
    rng = np.random.default_rng(3)
    pix = rng.standard_normal((2, h, w, 256)).astype(np.float32)
    logits = 4 * rng.standard_normal((2, 16 * h, 16 * w, 1)).astype(np.float32)
    # the tracker's input: sigmoid(logits) * 20 - 10 with the sigmoid already applied
    masks = (20 / (1 + np.exp(-logits)) - 10).astype(np.float32) if skip_sigmoid else logits
    with torch.no_grad():
        out = ref(to_nchw(pix), to_nchw(masks), skip_mask_sigmoid=skip_sigmoid)
    exp_feat, exp_pos = nchw(out["vision_features"]), nchw(out["vision_pos_enc"][0])

    module = MemoryEncoder(out_dim=64)
    variables = _load(module, ref, pix, masks, skip_mask_sigmoid=skip_sigmoid)
    feat, pos = jax.jit(functools.partial(module.apply, skip_mask_sigmoid=skip_sigmoid))(
        variables, pix, masks
    )
    assert feat.shape == (2, h, w, 64) and pos.shape == (2, h, w, 64)
    err_f, err_p = rel_err(feat, exp_feat), rel_err(pos, exp_pos)
    print(
        f"memory encoder {feat_hw} skip_sigmoid={skip_sigmoid}: features {err_f:.2e}, pos {err_p:.2e}"
    )
    assert err_f <= TOL and err_p <= 1e-6


@pytest.mark.torch
def test_sine_position_encoding_256():
    from ultralytics.models.sam.modules.blocks import PositionEmbeddingSine

    ref = PositionEmbeddingSine(num_pos_feats=256)
    expected = nchw(ref(torch.zeros(1, 256, 5, 7)))[0]
    assert rel_err(sine_position_encoding(5, 7, 256), expected) <= 1e-6


@pytest.mark.torch
def test_rope_tables_match_reference_at_64x64():
    """The reference rebuilds its table at run time from sqrt(#tokens) (floats) for 64x64."""
    from ultralytics.models.sam.modules.utils import compute_axial_cis

    from sam_jax.models.rope import axial_rope_tables

    cis = compute_axial_cis(dim=256, end_x=64.0, end_y=64.0)
    cos, sin = axial_rope_tables(64, 64, 256)
    assert np.abs(cos - cis.real.numpy()).max() <= 1e-6
    assert np.abs(sin - cis.imag.numpy()).max() <= 1e-6


def test_depthwise_conv_matches_grouped_conv_and_its_gradient():
    """The shifted-product depthwise convolution equals flax's grouped nn.Conv on the same
    parameters, in value and in the gradients of input and kernel, also under vmap (the
    case XLA's grouped convolution made slow)."""
    import flax.linen as nn

    from sam_jax.models.layers import DepthwiseConv

    x = jax.random.normal(jax.random.key(0), (2, 3, 9, 11, 16))
    ours = DepthwiseConv(7)
    variables = ours.init(jax.random.key(1), x[0])
    variables = jax.tree.map(
        lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), variables
    )
    grouped = nn.Conv(16, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=16)

    def loss(module, v, x):
        return jnp.sum(jnp.sin(jax.vmap(lambda xi: module.apply(v, xi))(x)))

    val_a, (gv_a, gx_a) = jax.value_and_grad(functools.partial(loss, ours), (0, 1))(variables, x)
    val_b, (gv_b, gx_b) = jax.value_and_grad(functools.partial(loss, grouped), (0, 1))(variables, x)
    np.testing.assert_allclose(val_a, val_b, rtol=1e-5)
    np.testing.assert_allclose(gx_a, gx_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(gv_a), jax.tree.leaves(gv_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
