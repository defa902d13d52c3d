"""SAM 3's text encoder against ultralytics' VETextEncoder, every parameter random.

The reference tokenizes with clip-anytorch's SimpleTokenizer wrapped in the padding that
ultralytics' CLIP fork adds (`__call__`); ours runs sam_jax.text.CLIPTokenizer, so the
captions go from text to features on both sides. A reduced encoder (2 blocks x 64 wide)
covers the math; one full-size encoder (24 x 1024) runs once.
"""

from __future__ import annotations

import functools
import gc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.models.sam3_text import SAM3_TEXT, Sam3TextConfig, Sam3TextEncoder
from sam_jax.text import CLIPTokenizer

TOL = 1e-4
SMALL = Sam3TextConfig(width=64, depth=2, num_heads=4, d_model=48)
CAPTIONS = [
    "a red car",
    "The dog's ball!?",
    "wow!😀 a cat!;",  # each "!" here is id 0, which the valid mask counts as padding
    "",
    "ＬＯＵＤ　ＮＯＩＳＥＳ, naïve café 🐶 &amp; 1,234",
    "a very long caption that certainly does not fit into thirty-two tokens because it "
    "goes on and on with more and more words describing every object in the scene",
    "!!?! person",
]


@functools.cache
def _tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


class _PaddedSimpleTokenizer:
    """clip-anytorch's SimpleTokenizer with the batch call SAM 3's reference expects:
    start, ids, end, cut to the context with the end token last, zero padding."""

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clip imports pkg_resources
            from clip.simple_tokenizer import SimpleTokenizer
        self.tok = SimpleTokenizer()

    def __call__(self, texts, context_length):
        import torch

        start, end = self.tok.encoder["<|startoftext|>"], self.tok.encoder["<|endoftext|>"]
        rows = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [start, *self.tok.encode(text), end][:context_length]
            ids[-1] = end
            rows[i, : len(ids)] = torch.tensor(ids)
        return rows


def _reference(cfg: Sam3TextConfig, seed: int):
    import torch
    from ultralytics.models.sam.sam3.text_encoder_ve import VETextEncoder

    from tests.reference import randomize_

    torch.manual_seed(seed)
    ref = VETextEncoder(
        d_model=cfg.d_model,
        tokenizer=_PaddedSimpleTokenizer(),
        width=cfg.width,
        heads=cfg.num_heads,
        layers=cfg.depth,
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
    )
    randomize_(ref, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        # The causal mask is a constant, not a stored buffer: restore it.
        ref.encoder.attn_mask.copy_(ref.encoder.build_causal_mask())
        # randomize_ scales by fan-in only tensors named "weight"; the packed q/k/v weight
        # left at 0.2 std gives logits of std ~40 at width 1024, where 24 blocks amplify
        # float32 rounding ~3x per block (torch's own float32 and float64 differ by 0.1).
        for block in ref.encoder.transformer.resblocks:
            w = block.attn.in_proj_weight
            w.copy_(torch.randn(w.shape, generator=g) / w.shape[1] ** 0.5)
    return ref


def _state_dict(ref) -> dict[str, np.ndarray]:
    """The reference's state_dict as numpy (its keys are what convert.keymap derives: the
    block norms ln_1 / ln_2 are kept whole, LITERAL_NAMES)."""
    return {key: value.detach().numpy() for key, value in ref.state_dict().items()}


def _variables(model: Sam3TextEncoder, ref) -> dict:
    state_dict = _state_dict(ref)
    ids = jnp.zeros((1, model.config.context_length), jnp.int32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    return state_dict_to_variables(state_dict, target)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, variables, ids):
    return model.apply(variables, ids)


def _compare(cfg: Sam3TextConfig, seed: int, captions: list[str]) -> dict[str, float]:
    import torch

    from tests.reference import rel_err

    ref = _reference(cfg, seed)
    ids = _tokenizer()(captions, cfg.context_length)
    np.testing.assert_array_equal(ids, ref.tokenizer(captions, cfg.context_length).numpy())
    with torch.no_grad():
        padding, features, embeds = (t.numpy() for t in ref(captions))
    model = Sam3TextEncoder(cfg)
    variables = _variables(model, ref)
    del ref
    gc.collect()
    out = _apply(model, variables, jnp.asarray(ids))
    np.testing.assert_array_equal(out["language_valid"], ~padding)
    np.testing.assert_array_equal(out["language_valid"], ids != 0)
    assert out["language_features"].shape == (len(captions), cfg.context_length, cfg.d_model)
    return {
        "features": rel_err(out["language_features"], features.transpose(1, 0, 2)),
        "embeds": rel_err(out["language_embeds"], embeds.transpose(1, 0, 2)),
    }


@pytest.mark.torch
def test_small_encoder_matches_reference():
    errs = _compare(SMALL, seed=1, captions=CAPTIONS)
    print(f"\nsam3 text 2x64: rel err {errs}")
    assert errs["features"] < TOL and errs["embeds"] == 0.0


@pytest.mark.torch
def test_shorter_sequence_matches_reference():
    """Fewer than context_length ids: position table and causal mask cut to L."""
    import torch

    from tests.reference import rel_err

    ref = _reference(SMALL, seed=2)
    ids = _tokenizer()(CAPTIONS, 7)
    with torch.no_grad():
        _, tokens = ref.encoder(torch.from_numpy(ids).long())
        expected = ref.resizer(tokens).numpy()
    model = Sam3TextEncoder(SMALL)
    out = _apply(model, _variables(model, ref), jnp.asarray(ids))
    err = rel_err(out["language_features"], expected)
    print(f"\nsam3 text 2x64, L=7: rel err {err:.2e}")
    assert out["language_features"].shape == (len(CAPTIONS), 7, SMALL.d_model)
    assert err < TOL


@pytest.mark.torch
def test_conversion_is_strict():
    ref = _reference(SMALL, seed=3)
    model = Sam3TextEncoder(SMALL)
    state_dict = _state_dict(ref)
    assert len(state_dict) == 7 + 12 * SMALL.depth
    ids = jnp.zeros((1, SMALL.context_length), jnp.int32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    del state_dict["encoder.transformer.resblocks.1.attn.in_proj_weight"]
    with pytest.raises(ValueError, match="in_proj_weight"):
        state_dict_to_variables(state_dict, target)


def test_full_size_variables():
    """The released encoder's variables: 24 blocks of 12 tensors + 7 others, 353.7M numbers."""
    model = Sam3TextEncoder(SAM3_TEXT)
    ids = jnp.zeros((1, 32), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    leaves = jax.tree_util.tree_leaves(shapes)
    assert len(leaves) == 7 + 12 * 24
    assert sum(int(np.prod(x.shape)) for x in leaves) == 353_724_672
    enc = shapes["params"]["encoder"]
    assert enc["transformer"]["resblocks_23"]["attn"]["in_proj_weight"].shape == (3072, 1024)
    assert enc["text_projection"].shape == (1024, 512)
    assert shapes["params"]["resizer"]["kernel"].shape == (1024, 256)


def test_bfloat16_close_to_float32():
    model = Sam3TextEncoder(SMALL)
    ids = jnp.asarray(_tokenizer()(CAPTIONS[:3]))
    variables = model.init(jax.random.key(0), ids)
    full = _apply(model, variables, ids)["language_features"]
    half = _apply(Sam3TextEncoder(SMALL, dtype=jnp.bfloat16), variables, ids)
    assert half["language_features"].dtype == jnp.float32
    err = float(jnp.abs(half["language_features"] - full).max() / jnp.abs(full).max())
    assert 0 < err < 5e-2


def test_bad_ids():
    model = Sam3TextEncoder(SMALL)
    good = jnp.zeros((2, 32), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), good))
    for bad, what in [
        (jnp.zeros((2, 33), jnp.int32), "L <= 32"),
        (jnp.zeros((32,), jnp.int32), r"\(B, L\)"),
        (jnp.zeros((2, 32), jnp.float32), "integers"),
    ]:
        with pytest.raises(ValueError, match=what):
            jax.eval_shape(model.apply, variables, bad)
    with pytest.raises(ValueError, match="multiple of"):
        Sam3TextConfig(width=64, num_heads=5)


@pytest.mark.torch
def test_full_size_encoder_matches_reference():
    errs = _compare(SAM3_TEXT, seed=4, captions=CAPTIONS[:4])
    print(f"\nsam3 text 24x1024: rel err {errs}")
    assert errs["features"] < TOL and errs["embeds"] == 0.0
