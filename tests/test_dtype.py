"""bfloat16 computation (`sam_jax.build(..., dtype=jnp.bfloat16)`) against float32.

A bf16 model keeps float32 parameters, computes its encoders' (and SAM 2's memory
modules') matrix products in bf16 with LayerNorm and softmax statistics in float32, and
returns float32. Its figures against the float32 model on the reduced parity configs
(random weights, as the parity tests use) are printed here and by benchmarks/bf16_error.py.
The float32 default is checked bit for bit by the parity tests.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sam_jax
from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import SAM2_1, Sam2Config, SamConfig, ViTConfig
from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.train.step import TrainState, interactive_loss, make_optimizer, make_train_step
from tests.tiny_configs import SMALL_HIERA, SMALL_TINY_VIT, random_variables

BF16 = jnp.bfloat16

# The reduced configs of the parity tests: test_sam_parity's SMALL_VIT, test_mobile_sam's
# SMALL, test_sam2_image's SMALL["2.1"] (restated: those modules import torch).
CASES = {
    "sam_vit": SamConfig(
        encoder=ViTConfig(
            embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), pretrain_image_size=256
        ),
        image_size=256,
    ),
    "tiny_vit": SamConfig(
        encoder=SMALL_TINY_VIT,
        image_size=256,
    ),
    "sam2": Sam2Config(encoder=SMALL_HIERA, image_size=128, **SAM2_1),
}


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (0 for empty arrays)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def mask_iou(ours, ref) -> float:
    """IoU of the masks (logits > 0), pooled over every mask given; 1 when both are empty."""
    a, b = np.asarray(ours) > 0, np.asarray(ref) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _prompts(b: int, s: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lo, hi = np.sort(rng.uniform(0, s, (2, b, 2)), axis=0)
    return {
        "point_coords": rng.uniform(0, s, (b, 2, 2)).astype(np.float32),
        "point_labels": np.array([[1, 0], [1, 1]] * b, np.int32)[:b],
        "boxes": np.concatenate([lo, hi], axis=1).astype(np.float32),
    }


def _variables(model, seed: int) -> dict:
    """`random_variables` with BatchNorm variances made positive (TinyViT's running `var`)."""
    flat = flax.traverse_util.flatten_dict(random_variables(model, seed))
    flat = {k: np.abs(v) + 0.5 if k[-1] == "var" else v for k, v in flat.items()}
    return flax.traverse_util.unflatten_dict(flat)


def _objects_present(variables: dict) -> dict:
    """`variables` with SAM 2's object-score output bias raised by 1e4, so that every mask is
    kept rather than filled with -1024 (the score only gates the masks), to compare logits."""
    flat = dict(flax.traverse_util.flatten_dict(variables))
    key = ("params", "sam_mask_decoder", "pred_obj_score_head", "layers_2", "bias")
    flat[key] = flat[key] + np.float32(1e4)
    return flax.traverse_util.unflatten_dict(flat)


def _apply(model, method, *args, **kwargs):
    return jax.jit(lambda v, *a: model.apply(v, *a, method=method, **kwargs))


def bf16_vs_f32(cfg, variables=None, batch: int = 2, seed: int = 0) -> dict:
    """Errors of the bf16 model against the float32 one on random images and prompts.

    Returns {"dtypes": every output dtype of the bf16 model, "params_f32": whether its
    variables are all float32, "encoder": rel err of the image embedding, "logits": rel err
    of the mask logits, "iou": rel err of the IoU predictions, "mask_iou": pooled mask IoU};
    SAM 2 adds "object_score" (rel err), "score_sign_agrees" (whether both models keep the
    same masks), "memory_encoder" and "memory_attention" (rel errs of those modules on the
    float32 model's features); its logits are compared with every mask kept
    (`_objects_present`), random weights leaving many below the object-score threshold."""
    m32, m16 = build_from_config(cfg), build_from_config(cfg, dtype=BF16)
    shapes16 = variable_shapes(m16)
    variables = _variables(m32, seed) if variables is None else variables
    s = cfg.image_size
    x = np.random.default_rng(seed).standard_normal((batch, s, s, 3)).astype(np.float32)
    prompts = _prompts(batch, s, seed)
    outs = {}
    for name, m in (("f32", m32), ("bf16", m16)):
        feats = _apply(m, "encode_image")(variables, x)
        outs[name] = (feats, _apply(m, "predict_masks", **prompts)(variables, feats))
    (f32_feats, f32_out), (feats, out) = outs["f32"], outs["bf16"]
    leaves = jax.tree.leaves((feats, out))
    emb = "vision_features"
    res = {
        "dtypes": sorted({str(a.dtype) for a in leaves}),
        "params_f32": all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes16))
        and jax.tree.structure(shapes16) == jax.tree.structure(variable_shapes(m32)),
        "encoder": rel_err(
            feats[emb] if isinstance(cfg, Sam2Config) else feats,
            f32_feats[emb] if isinstance(cfg, Sam2Config) else f32_feats,
        ),  # fmt: skip
        "iou": rel_err(out[1], f32_out[1]),
    }
    logits, ref_logits = out[0], f32_out[0]
    if isinstance(cfg, Sam2Config):
        res["object_score"] = rel_err(out[2], f32_out[2])
        res["score_sign_agrees"] = bool(np.array_equal(out[2] > 0, f32_out[2] > 0))
        present = _objects_present(variables)
        logits = _apply(m16, "predict_masks", **prompts)(present, feats)[0]
        ref_logits = _apply(m32, "predict_masks", **prompts)(present, f32_feats)[0]
        assert np.asarray(ref_logits).min() > -1024  # every mask kept
        res.update(_memory_errors(m32, m16, variables, f32_feats, seed))
    res["logits"] = rel_err(logits, ref_logits)
    res["mask_iou"] = mask_iou(logits, ref_logits)
    return res


def _memory_errors(m32, m16, variables, feats, seed: int) -> dict:
    """SAM 2's memory encoder and memory attention, bf16 against float32, on the same inputs
    (the float32 model's features; a random mask; 2 memory frames and 4 pointer tokens)."""
    cfg = m32.config
    pix = feats["vision_features"]
    b, g = pix.shape[0], cfg.embed_size
    rng = np.random.default_rng(seed + 1)
    masks = rng.standard_normal((b, cfg.image_size, cfg.image_size, 1)).astype(np.float32) * 4
    ptr = rng.standard_normal((b, 4, cfg.mem_dim)).astype(np.float32)

    def mem_enc(m, pix, masks):
        return m.memory_encoder(pix, masks)

    def mem_attn(m, pix, pos, mem, mem_pos):
        mem = jnp.concatenate([mem.reshape(b, -1, cfg.mem_dim)] * 2 + [ptr], axis=1)
        mem_pos = jnp.concatenate([mem_pos.reshape(b, -1, cfg.mem_dim)] * 2 + [ptr], axis=1)
        flat = (b, g * g, -1)
        return m.memory_attention(
            pix.reshape(flat), pos.reshape(flat), mem, mem_pos, num_obj_ptr_tokens=4, feat_hw=(g, g)
        )

    enc = {n: _apply(m, mem_enc)(variables, pix, masks) for n, m in (("f32", m32), ("bf16", m16))}
    pos = feats["vision_pos_enc"][-1]
    attn = {
        n: _apply(m, mem_attn)(variables, pix, pos, *enc["f32"])
        for n, m in (("f32", m32), ("bf16", m16))
    }
    assert enc["bf16"][0].dtype == attn["bf16"].dtype == jnp.float32
    return {
        "memory_encoder": rel_err(enc["bf16"][0], enc["f32"][0]),
        "memory_attention": rel_err(attn["bf16"], attn["f32"]),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_close_to_float32(case):
    """Float32 parameters and outputs; logits within a few percent; masks agree."""
    res = bf16_vs_f32(CASES[case])
    print(f"\n{case}: " + ", ".join(f"{k} {v}" for k, v in res.items()))
    assert res["params_f32"]
    assert res["dtypes"] == ["float32"]
    assert res["encoder"] < 0.05
    assert res["logits"] < 0.05
    assert res["iou"] < 0.05
    assert res["mask_iou"] > 0.9
    if case == "sam2":
        assert res["score_sign_agrees"]
        assert res["object_score"] < 0.05
        assert res["memory_encoder"] < 0.05
        assert res["memory_attention"] < 0.05


def _equations(jaxpr):
    """Every equation of a jaxpr, those of nested jaxprs (jit, remat, scan, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, tuple | list) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _dtype_census(fn, *args) -> dict[str, int]:
    """Counts of matrix products by operand dtype, and of sums (LayerNorm and softmax
    statistics) taken in bf16."""
    counts = {"dot_bf16": 0, "dot_f32": 0, "sum_bf16": 0}
    for eqn in _equations(jax.make_jaxpr(fn)(*args).jaxpr):
        name = eqn.primitive.name
        dtype = eqn.invars[0].aval.dtype if eqn.invars else None
        if name in ("dot_general", "conv_general_dilated"):
            counts["dot_bf16" if dtype == BF16 else "dot_f32"] += 1
        if name == "reduce_sum" and dtype == BF16:
            counts["sum_bf16"] += 1
    return counts


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_products_and_float32_statistics(case):
    """In the bf16 encoder every matrix product and convolution is bf16 and no sum is (the
    LayerNorm and softmax statistics stay float32); the float32 model has no bf16 at all."""
    cfg = CASES[case]
    s = cfg.image_size
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    m16, m32 = build_from_config(cfg, dtype=BF16), build_from_config(cfg)
    variables = variable_shapes(m32)
    enc16 = _dtype_census(lambda v, x: m16.apply(v, x, method="encode_image"), variables, x)
    enc32 = _dtype_census(lambda v, x: m32.apply(v, x, method="encode_image"), variables, x)
    print(f"\n{case}: bf16 model {enc16}, float32 model {enc32}")
    # SAM 2 resizes Hiera's position tables (two products of static weights with the float32
    # tables) and projects the two finest levels for the decoder, all in float32.
    assert enc16["dot_f32"] == (4 if case == "sam2" else 0)
    assert enc16["dot_bf16"] > 10 and enc16["sum_bf16"] == 0
    assert enc32["dot_bf16"] == 0 and enc32["sum_bf16"] == 0


def test_train_step_runs_the_bf16_model():
    """make_train_step(compute_dtype=bf16) hands the loss the bf16 model with the float32
    variables and images (so LayerNorm and softmax statistics stay float32, as checked
    above), where it used to cast every leaf; parameters and optimizer state stay float32."""
    cfg = CASES["sam_vit"]
    model = build_from_config(cfg)
    variables = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), variable_shapes(model))
    tx = make_optimizer(variables["params"], "all", 1e-3)
    seen = []

    def loss_fn(model, variables, images, *args, **kwargs):
        seen.append((model.dtype, {a.dtype for a in jax.tree.leaves((variables, images))}))
        return interactive_loss(model, variables, images, *args, **kwargs)

    s = cfg.image_size
    args = (
        TrainState.create(variables, tx),
        jnp.zeros((1, s, s, 3)),
        jnp.zeros((1, s, s), bool),
        jax.random.key(0),
    )
    f32 = {jnp.dtype(jnp.float32)}
    for dtype, want in ((BF16, BF16), (None, jnp.float32)):
        step = make_train_step(model, tx, num_corrections=0, compute_dtype=dtype, loss_fn=loss_fn)
        new_state = jax.eval_shape(step, *args)[0]  # traces the step without compiling it
        assert seen.pop() == (want, f32)
        assert {a.dtype for a in jax.tree.leaves(new_state)} <= f32 | {jnp.dtype(jnp.int32)}


def test_load_with_dtype_and_predictor():
    """sam_jax.load(name, dtype=bf16): float32 variables, a bf16 model; the Predictor's masks
    on a synthetic scene agree with the float32 model's (the bundled weights are trained)."""
    m16, params = sam_jax.load("sam_tiny_shapes", dtype=BF16)
    m32, params32 = sam_jax.load("sam_tiny_shapes")
    assert m16.dtype == BF16 and m32.dtype == jnp.float32
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(params))
    image, objects = scene(3, size=200)
    ys, xs = np.nonzero(objects[0])
    click = np.array([[xs.mean(), ys.mean()]], np.float32)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    results = []
    for model, p in ((m16, params), (m32, params32)):
        pred = sam_jax.Predictor(model, p)
        pred.set_image(image)
        masks, scores, logits = pred.predict(point_coords=click, point_labels=np.ones(1), box=box)
        assert logits.dtype == np.float32 and scores.dtype == np.float32
        results.append((masks, scores))
    (masks, scores), (ref_masks, ref_scores) = results
    iou = mask_iou(masks, ref_masks)
    print(f"\nPredictor bf16 vs float32: mask IoU {iou:.4f}, scores rel err "
          f"{rel_err(scores, ref_scores):.2e}")  # fmt: skip
    assert iou > 0.95
    assert rel_err(scores, ref_scores) < 0.05


def test_video_predictor_bf16():
    """VideoPredictor with the bundled SAM 2 in bf16: per-frame masks agree with float32."""
    frames, objects = video(5, num_frames=4, size=128, num_objects=2)
    ys, xs = np.nonzero(objects[0, 0])
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    tracks = []
    for dtype in (BF16, jnp.float32):
        model, params = sam_jax.load("sam2_tiny_shapes", dtype=dtype)
        vp = sam_jax.VideoPredictor(model, params, progress=False)
        state = vp.init_state(frames)
        vp.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=box)
        tracks.append({f: logits for f, _, logits in vp.propagate_in_video(state)})
    ious = [mask_iou(tracks[0][f], tracks[1][f]) for f in sorted(tracks[1])]
    print(f"\nVideoPredictor bf16 vs float32: per-frame mask IoU {np.round(ious, 4).tolist()}")
    assert len(ious) == 4 and min(ious) > 0.9
    assert all(tracks[0][f].dtype == np.float32 for f in tracks[0])


def test_float32_is_the_default():
    """build / load without dtype give the float32 model (parity tests check its values)."""
    assert sam_jax.build("sam_b").dtype == jnp.float32
    model = build_from_config(CASES["sam2"], dtype=BF16)
    names = {"image_encoder", "memory_attention", "memory_encoder"}
    bound = model.bind(flax.core.freeze(random_variables(model)))
    assert all(getattr(bound, n).dtype == BF16 for n in names)
