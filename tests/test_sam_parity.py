"""SAM (ViT) parity against ultralytics with every parameter randomised."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch
from reference import build_reference_sam, build_reference_vit, nchw, randomize_, rel_err, to_nchw

import sam_jax
from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import SamConfig, ViTConfig
from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.convert.torch_reader import read_state_dict

pytestmark = pytest.mark.torch  # every test here builds the PyTorch reference

# Reduced encoder: 2 windowed + 2 global blocks, tables stored for 256 px (16x16 grid).
SMALL_VIT = ViTConfig(
    embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), pretrain_image_size=256
)


def _convert_via_file(ref: torch.nn.Module, model, tmp_path) -> dict:
    path = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), path)  # SAM 1 files are raw state_dicts
    return state_dict_to_variables(read_state_dict(path), variable_shapes(model))


@pytest.fixture(scope="module", params=[256, 320], ids=["S256", "S320"])
def small_pair(request, tmp_path_factory):
    """(reference SAMModel, our model, our variables, S) at image size S."""
    s = request.param
    ref = randomize_(build_reference_sam(build_reference_vit(SMALL_VIT)), seed=s)
    ref.set_imgsz((s, s))
    model = build_from_config(SamConfig(encoder=SMALL_VIT, image_size=s))
    variables = _convert_via_file(ref, model, tmp_path_factory.mktemp("ckpt"))
    return ref, model, variables, s


def _prompts(s: int, b: int = 2) -> dict:
    rng = np.random.RandomState(s)
    return {
        "points": (
            rng.uniform(0, s, (b, 3, 2)).astype(np.float32),
            np.array([[1, 0, 1], [1, -1, 0]][:b], np.int32),
        ),
        "boxes": np.array([[10, 20, 100, 120], [5, 5, 200, 150]][:b], np.float32),
        "masks": rng.randn(b, s // 4, s // 4, 1).astype(np.float32),
    }


PROMPT_SETS = [
    ("points",),
    ("boxes",),
    ("points", "boxes"),
    ("masks",),
    ("points", "boxes", "masks"),
    (),
]


def _reference_decode(ref, emb_t, kinds, p, multimask):
    """Reference prompt encoding + decoding, one image embedding per prompt set."""
    with torch.no_grad():
        pts = tuple(torch.from_numpy(a) for a in p["points"]) if "points" in kinds else None
        boxes = torch.from_numpy(p["boxes"]) if "boxes" in kinds else None
        masks = to_nchw(p["masks"]) if "masks" in kinds else None
        sparse, dense = ref.prompt_encoder(pts, boxes, masks)
        pe = ref.prompt_encoder.get_dense_pe()
        b = sparse.shape[0]
        outs = [
            ref.mask_decoder(emb_t[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], multimask)
            for i in range(b)
        ]
    return sparse, dense, torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def test_encoder_features(small_pair):
    ref, model, variables, s = small_pair
    x = np.random.RandomState(0).randn(2, s, s, 3).astype(np.float32)
    with torch.no_grad():
        want = nchw(ref.image_encoder(to_nchw(x)))
    got = jax.jit(lambda v, im: model.apply(v, im, method="encode_image"))(variables, x)
    assert got.shape == (2, s // 16, s // 16, 256)
    assert rel_err(got, want) <= 1e-4


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _encode_and_decode(model, variables, emb, prompts, b, multimask):
    """Our prompt encoder's (sparse, dense, dense PE) and predict_masks' (logits, iou), one
    compiled program (run op by op, every op was dispatched and compiled alone)."""
    pe_module = model.bind(variables).prompt_encoder
    names = ("point_coords", "point_labels", "boxes", "mask_inputs")  # jit sorts dict keys
    sparse, dense = pe_module(b, *(prompts[k] for k in names))
    out = model.apply(variables, emb, **prompts, multimask_output=multimask, method="predict_masks")
    return sparse, dense, pe_module.dense_pe(), out


@pytest.mark.parametrize("kinds", PROMPT_SETS, ids=lambda k: "+".join(k) or "none")
@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
def test_prompt_encoder_and_decoder(small_pair, kinds, multimask):
    ref, model, variables, s = small_pair
    p = _prompts(s, b=1 if not kinds else 2)
    b = 1 if not kinds else 2
    emb = np.random.RandomState(1).randn(b, s // 16, s // 16, 256).astype(np.float32)
    sparse_r, dense_r, logits_r, iou_r = _reference_decode(ref, to_nchw(emb), kinds, p, multimask)
    prompts = {
        "point_coords": p["points"][0] if "points" in kinds else None,
        "point_labels": p["points"][1] if "points" in kinds else None,
        "boxes": p["boxes"] if "boxes" in kinds else None,
        "mask_inputs": p["masks"] if "masks" in kinds else None,
    }
    sparse, dense, dense_pe, (logits, iou) = _encode_and_decode(
        model, variables, emb, prompts, b, multimask
    )
    assert rel_err(sparse, sparse_r.numpy()) <= 1e-5
    assert (
        rel_err(np.broadcast_to(dense, (b, *dense.shape[1:])), nchw(dense_r.expand(b, -1, -1, -1)))
        <= 1e-5
    )
    assert rel_err(dense_pe[None], nchw(ref.prompt_encoder.get_dense_pe())) <= 1e-5

    m = 3 if multimask else 1
    assert logits.shape == (b, m, s // 4, s // 4) and iou.shape == (b, m)
    assert rel_err(logits, logits_r.numpy()) <= 1e-3
    assert rel_err(iou, iou_r.numpy()) <= 1e-3


def test_end_to_end_call(small_pair):
    """`model.apply(params, images, ...)` = encode_image then predict_masks."""
    ref, model, variables, s = small_pair
    x = np.random.RandomState(2).randn(1, s, s, 3).astype(np.float32)
    p = _prompts(s, b=1)
    run = jax.jit(
        lambda v, im, pts, labels: model.apply(v, im, point_coords=pts, point_labels=labels)
    )
    logits, iou = run(variables, x, *p["points"])
    with torch.no_grad():
        emb = ref.image_encoder(to_nchw(x))
    _, _, logits_r, iou_r = _reference_decode(ref, emb, ("points",), p, True)
    assert rel_err(logits, logits_r.numpy()) <= 1e-3
    assert rel_err(iou, iou_r.numpy()) <= 1e-3


def test_bad_shapes_name_the_problem(small_pair):
    _, model, variables, s = small_pair
    emb = np.zeros((2, s // 16, s // 16, 256), np.float32)
    with pytest.raises(ValueError, match="point_labels"):
        model.apply(
            variables,
            emb,
            point_coords=np.zeros((2, 3, 2)),
            point_labels=np.zeros((2, 2), np.int32),
            method="predict_masks",
        )
    with pytest.raises(ValueError, match="boxes"):
        model.apply(variables, emb, boxes=np.zeros((1, 4)), method="predict_masks")
    with pytest.raises(ValueError, match="images"):
        model.apply(variables, np.zeros((1, s + 16, s, 3), np.float32), method="encode_image")


# XLA's optimisations for the full-size forward, whatever XLA_FLAGS the suite runs under: at
# 1024 px the encoder is run-bound, and at level 0 it runs about twice as long.
OPTIMISED = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def test_full_size_sam_b(tmp_path):
    """One full-size forward: sam_b at 1024, loaded through sam_jax.load (auto-detected)."""
    from ultralytics.models.sam.build import build_sam_vit_b

    ref = randomize_(build_sam_vit_b(), seed=7)
    path = tmp_path / "sam_b.pt"
    torch.save(ref.state_dict(), path)
    model, variables = sam_jax.load(path)
    assert model.config.name == "sam_b"
    x = np.random.RandomState(3).randn(1, 1024, 1024, 3).astype(np.float32)
    with torch.no_grad():
        emb_r = ref.image_encoder(to_nchw(x))
    encode = jax.jit(lambda v, im: model.apply(v, im, method="encode_image"))
    emb = encode.lower(variables, x).compile(OPTIMISED)(variables, x)
    err_feat = rel_err(emb, nchw(emb_r))
    p = _prompts(1024, b=1)
    # jitted: run op by op at 1024 px, the decoder dispatched (and compiled) each op alone
    decode = jax.jit(
        lambda v, e, pts, labels: model.apply(
            v, e, point_coords=pts, point_labels=labels, method="predict_masks"
        )
    )
    logits, iou = decode(variables, emb, *p["points"])
    _, _, logits_r, iou_r = _reference_decode(ref, emb_r, ("points",), p, True)
    err_logits = rel_err(logits, logits_r.numpy())
    print(f"sam_b 1024: features {err_feat:.2e}, logits {err_logits:.2e}")
    assert err_feat <= 1e-4
    assert err_logits <= 1e-3
    assert rel_err(iou, iou_r.numpy()) <= 1e-3
