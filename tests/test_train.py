"""Training library: losses, click simulation, the train step, sharding equivalence."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.checkpoint import build_from_config, variable_shapes
from sam_jax.config import VARIANTS
from sam_jax.projects.shapes.synthetic import scene, video
from sam_jax.train import clicks, losses
from sam_jax.train.step import TrainState, make_optimizer, make_train_step
from tests.tiny_configs import TINY2, TINY2_1, TINY_SAM, random_variables

TINY = TINY_SAM
# TINY with a one-layer mask decoder, for the tests that compile the interactive loss's
# gradients (padding, accumulation, precomputed embeddings, sharding, the steps): their
# claims are about the step, not the decoder's depth, and the second two-way layer is a
# third of those programs' compile time (the parity tests cover two layers).
TINY_1 = dataclasses.replace(TINY, decoder_depth=1)


@pytest.fixture(scope="module")
def tiny_sam():
    """TINY_1 and its random variables, shared: the tests compiling the same program on the
    same shapes (`_loss_and_grads`) then share one compile."""
    model = build_from_config(TINY_1)
    return model, random_variables(model)  # init_params compiles for 9 s


def test_losses_reference_values():
    target = jnp.zeros((1, 4, 4)).at[0, :2].set(1.0)
    perfect = jnp.where(target > 0, 20.0, -20.0)
    assert float(losses.dice_loss(perfect, target)[0]) < 1e-6
    assert float(losses.focal_loss(perfect, target)[0]) < 1e-9
    zero = jnp.zeros((1, 4, 4))
    # Focal at p = 0.5: mean over pixels of a_t * ln 2 * 0.25.
    want = (8 * 0.25 + 8 * 0.75) / 16 * np.log(2) * 0.25
    np.testing.assert_allclose(float(losses.focal_loss(zero, target)[0]), want, rtol=1e-6)
    np.testing.assert_allclose(float(losses.mask_iou(perfect, target)[0]), 1.0)


def test_multimask_rule_trains_only_the_best_mask():
    target = jnp.zeros((1, 8, 8)).at[0, 2:6, 2:6].set(1.0)
    good = jnp.where(target > 0, 5.0, -5.0)
    logits = jnp.stack([jnp.zeros((8, 8)), good[0], -good[0]])[None]
    iou = jnp.zeros((1, 3))
    g = jax.grad(lambda lg: losses.sam_loss(lg, iou, target)[0])(logits)
    assert float(jnp.abs(g[0, 1]).sum()) > 0
    assert float(jnp.abs(g[0, 0]).sum()) == 0 and float(jnp.abs(g[0, 2]).sum()) == 0


def test_clicks_land_where_they_should():
    key = jax.random.key(0)
    target = jnp.zeros((4, 16, 16), bool).at[:, 4:10, 6:12].set(True)
    xy, ok = clicks.sample_pixel(key, target)
    assert bool(ok.all())
    assert bool(target[jnp.arange(4), xy[:, 1].astype(int), xy[:, 0].astype(int)].all())
    np.testing.assert_array_equal(clicks.mask_box(target)[0], [6, 4, 12, 10])
    coords, labels = clicks.first_prompt(key, target)
    assert coords.shape == (4, 2, 2) and labels.shape == (4, 2)
    # A prediction that misses the right half: the corrective click is positive, in the miss.
    logits = jnp.where(target, 1.0, -1.0).at[:, :, 9:].set(-1.0)
    c, lab = clicks.corrective_click(key, logits, target)
    assert bool((lab[:, 0] == 1).all()) and bool((c[:, 0, 0] >= 9).all())
    # Perfect prediction -> padding click.
    _, lab = clicks.corrective_click(key, jnp.where(target, 1.0, -1.0), target)
    assert bool((lab == -1).all())


def scene_batch(b: int = 4, s: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(images (b, s, s, 3) float32 roughly normalised, targets (b, s, s) bool): the largest
    object of synthetic scenes 0 .. b - 1."""
    imgs, tgts = [], []
    for i in range(b):
        img, masks = scene(i, s)
        imgs.append(img)
        tgts.append(masks[np.argmax(masks.sum((1, 2)))])
    x = (np.stack(imgs).astype(np.float32) - 128) / 64
    return x, np.stack(tgts)


def _changed_modules(before: dict, after: dict) -> set[str]:
    """Top-level modules of two params trees whose leaves differ anywhere."""
    return {
        name
        for name, sub in before.items()
        if any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(sub), jax.tree.leaves(after[name]), strict=True)
        )
    }


def _moved_by_a_first_update(tx, params: dict) -> set[str]:
    """The modules whose parameters the optimizer's first update (all-ones gradients)
    moves; tx.init and tx.update compiled as one program (op by op, each op compiles
    alone)."""
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    updates = jax.device_get(updates)
    return _changed_modules(params, jax.tree.map(lambda p, u: p + u, params, updates))


@pytest.mark.parametrize("trainable", ["decoder", "prompt_decoder", "all_but_encoder", "all"])
def test_optimizer_updates_only_what_trains(trainable):
    """The optimizer's update is non-zero exactly on the chosen modules. (The train step
    changes parameters only through it; one real step with everything training is below.)"""
    shapes = variable_shapes(build_from_config(TINY))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    tx = make_optimizer(params, trainable, 1e-3)
    moved = _moved_by_a_first_update(tx, params)
    want = {
        "decoder": {"mask_decoder"},
        "prompt_decoder": {"mask_decoder", "prompt_encoder"},
        "all_but_encoder": set(params) - {"image_encoder"},
        "all": set(params),
    }[trainable]
    assert moved == want, (trainable, moved)


def test_loss_decreases_and_bf16_and_remat_run(tiny_sam):
    """Steps with everything training lower the loss and move every module, never the
    buffers; the bf16-compute step with encoder remat runs on float32 parameters."""
    model, variables = tiny_sam
    before = jax.tree.map(np.array, variables)
    tx = make_optimizer(variables["params"], "all", 2e-3)
    x, t = scene_batch()
    step = make_train_step(model, tx, num_corrections=1)
    state = TrainState.create(variables, tx)
    first = None
    for i in range(15):
        state, met = step(state, x, t, jax.random.key(i))
        first = first if first is not None else float(met["loss"])
    assert float(met["loss"]) < first
    after = jax.device_get(state.variables)
    assert _changed_modules(before["params"], after["params"]) == set(before["params"])
    assert not _changed_modules(before["buffers"], after["buffers"])  # buffers never train
    remat_model = build_from_config(TINY_1, remat=True)
    bf16 = make_train_step(remat_model, tx, num_corrections=0, compute_dtype=jnp.bfloat16)
    state2, met2 = bf16(TrainState.create(variables, tx), x, t, jax.random.key(0))
    assert np.isfinite(float(met2["loss"]))
    assert state2.variables["params"]["mask_decoder"]["iou_token"]["weight"].dtype == jnp.float32


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np, optax
    from sam_jax.checkpoint import build_from_config
    from sam_jax.train.sharding import make_mesh, shard_batch, shard_tree
    from sam_jax.train.step import TrainState, make_train_step
    from tests.test_train import TINY_1, scene_batch
    from tests.tiny_configs import random_variables
    assert len(jax.devices()) == 4, jax.devices()
    model = build_from_config(TINY_1)
    variables = random_variables(model)
    # Plain SGD: Adam's first step is lr * sign(g), which turns float-level differences in
    # near-zero gradients into lr-sized parameter differences.
    tx = optax.sgd(0.1)
    step = make_train_step(model, tx, num_corrections=0)  # no corrective click: less to compile
    x, t = scene_batch(8)
    key = jax.random.key(3)
    single, m1 = step(TrainState.create(variables, tx), x, t, key)
    mesh = make_mesh(4)
    out = {}
    for fsdp in (False, True):
        state = shard_tree(TrainState.create(variables, tx), mesh, fsdp=fsdp)
        xs, ts = shard_batch((x, t), mesh)
        sharded, m2 = step(state, xs, ts, key)
        n_sharded = sum(len(l.sharding.device_set) > 1 and not l.sharding.is_fully_replicated
                        for l in jax.tree.leaves(state.variables["params"]))
        diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(single.variables), jax.tree.leaves(sharded.variables))]
        out[str(fsdp)] = dict(loss_single=float(m1["loss"]), loss_sharded=float(m2["loss"]),
                             max_param_diff=max(diffs), sharded_leaves=n_sharded,
                             batch_devices=len(xs.sharding.device_set))
    print(json.dumps(out))
    """
)


def test_sharded_step_matches_single_device():
    # keeps the caller's XLA flags (scripts/test.sh sets compile-time ones)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)
    for fsdp, r in out.items():
        assert r["batch_devices"] == 4
        assert abs(r["loss_single"] - r["loss_sharded"]) <= 1e-5 * max(1.0, abs(r["loss_single"]))
        assert r["max_param_diff"] <= 1e-5
        if fsdp == "True":
            assert r["sharded_leaves"] > 0


def test_bce_form_of_focal_has_finite_gradients_when_saturated():
    g = jax.grad(lambda lg: losses.focal_loss(lg, jnp.ones((2, 2)), 0.5, 0.0).sum())(
        jnp.full((2, 2), 40.0)
    )
    assert bool(jnp.isfinite(g).all())


@pytest.fixture(scope="module")
def tiny_sam2():
    """TINY2 with a one-layer mask decoder (TINY2_1): these tests' claims are about the
    step, the scan and the memory, not the decoder's depth, and its second layer is a third
    of the clip gradients' compile time."""
    model = build_from_config(TINY2_1)
    return model, random_variables(model)


def test_clip_gradients_go_through_the_tracking_memory_with_or_without_remat(tiny_sam2):
    """SAM 2 through the scan: frame 2's loss reaches the memory that frame 1 wrote inside
    the scan (the temporal encoding of a memory one frame back, row 0 of maskmem_tpos_enc,
    is used by nothing else), and steps on one clip lower its loss; remat_frames (frames
    encoded one at a time, each tracked frame recomputed in the backward pass) gives the
    clip loss and its gradients of the batched, stored pass. (One compiled gradient
    program of each pass serves both claims: the steps are that gradient and the
    optimizer's update, as make_train_step's are; make_train_step with clip_loss runs in
    test_finetune's video run.)"""
    import optax

    from sam_jax.train.batching import normalise
    from sam_jax.train.video_step import clip_loss

    model, variables = tiny_sam2
    variables = jax.tree.map(np.array, variables)
    # objects found everywhere: "no object" would swap the pointers for no_obj_ptr
    head = variables["params"]["sam_mask_decoder"]["pred_obj_score_head"]["layers_2"]
    head["bias"] = head["bias"] + 10.0
    frames, masks = video(5, 3, 64)
    areas = masks[0].reshape(masks.shape[1], -1).sum(1)
    clips = normalise(frames[None], TINY2)
    targets = masks[None, :, int(np.argmax(areas))]

    def loss_and_grads(remat_frames: bool):
        # no corrective click (less to compile): the image-mode test below runs clip_loss
        # with one
        def loss(params):
            v = {**variables, "params": params}
            return clip_loss(model, v, clips, targets, jax.random.key(1), 0, remat_frames)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    plain = loss_and_grads(False)
    (l_plain, _), g_plain = plain(variables["params"])
    (l_remat, _), g_remat = loss_and_grads(True)(variables["params"])
    np.testing.assert_allclose(float(l_remat), float(l_plain), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain), strict=True):
        # float32 rounding: the frames' matmuls are batched differently
        atol = 1e-5 * max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=atol)

    tx = make_optimizer(variables["params"], "all", 1e-3, weight_decay=0.0)

    @jax.jit
    def update(params, grads, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    before = jax.tree.map(np.asarray, variables["params"])
    after, opt_state = update(variables["params"], g_plain, tx.init(variables["params"]))

    def changed(*path):
        a, b = before, after
        for p in path:
            a, b = a[p], b[p]
        return float(np.abs(np.asarray(b) - a).max())

    assert changed("maskmem_tpos_enc") > 0
    assert (
        float(
            np.abs(np.asarray(after["maskmem_tpos_enc"][0]) - before["maskmem_tpos_enc"][0]).max()
        )
        > 0
    )
    for name in ("memory_encoder", "memory_attention", "obj_ptr_proj", "image_encoder"):
        leaves = jax.tree.leaves(
            jax.tree.map(lambda a, b: np.abs(np.asarray(b) - a).max(), before[name], after[name])
        )
        assert max(leaves) > 0, name
    first, params = float(l_plain), after
    for _ in range(8):
        (loss, _), grads = plain(params)
        params, opt_state = update(params, grads, opt_state)
    assert np.isfinite(first) and float(loss) < first
    with pytest.raises(ValueError, match="clips must be"):
        clip_loss(model, variables, clips[:, :1], targets[:, :1], jax.random.key(0))


def test_several_objects_per_image_equal_repeating_the_image(tiny_sam):
    """K objects per image (targets (B, K, S, S)): the image is encoded once, and the loss
    is exactly that of the image repeated K times with one object each."""
    from sam_jax.train.step import interactive_loss

    model, variables = tiny_sam
    x, _ = scene_batch(2)
    objs = np.stack([scene(i, 64)[1][:2] for i in range(2)])  # (2, K=2, S, S)
    loss = jax.jit(lambda x, t: interactive_loss(model, variables, x, t, jax.random.key(3), 1))
    shared, met = loss(x, objs)
    repeated, met_r = loss(np.repeat(x, 2, axis=0), objs.reshape(4, 64, 64))
    np.testing.assert_allclose(float(shared), float(repeated), rtol=1e-5)
    np.testing.assert_allclose(float(met["iou_last"]), float(met_r["iou_last"]), rtol=1e-5)


def test_sam2_trains_in_image_mode_and_on_several_objects_per_clip(tiny_sam2):
    """SAM 2 in image mode goes through the same interactive step as SAM (plus the
    object-score loss), and its dict of precomputed features (`encode_image`'s) gives the
    loss of its images (the step's metric; SAM's step from embeddings is tested below); a
    clip with K objects gives the loss of the clip repeated K times (here with a model
    shortened to remember one recent frame, `shorten_memory`)."""
    from sam_jax.projects.shapes.memory_window import shorten_memory
    from sam_jax.train.batching import normalise
    from sam_jax.train.step import interactive_loss
    from sam_jax.train.video_step import clip_loss

    model, variables = tiny_sam2
    # the decoder trains (the step then differentiates it alone): the claim is the image
    # step's, and SAM 2's encoder gets gradients in the clip test above
    tx = make_optimizer(variables["params"], "decoder", 1e-3, weight_decay=0.0)
    step = make_train_step(model, tx, num_corrections=1)
    x, t = scene_batch(2)
    state, met = step(TrainState.create(variables, tx), x, t[:, None], jax.random.key(1))
    assert np.isfinite(float(met["loss"]))
    changed = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - b).max()),
        variables["params"]["sam_mask_decoder"],
        state.variables["params"]["sam_mask_decoder"],
    )
    assert max(jax.tree.leaves(changed)) > 0
    # the step's loss (of the parameters before it) from the images, here from the features
    feats = jax.jit(lambda x: model.apply(variables, x, method="encode_image"))(x)
    key = jax.random.key(1)
    loss = jax.jit(lambda f: interactive_loss(model, variables, f, t[:, None], key, 1)[0])
    np.testing.assert_allclose(float(loss(feats)), float(met["loss"]), rtol=1e-5)

    short_model, short_vars = shorten_memory(model, variables, 2)
    frames, masks = video(5, 3, 64)
    clip = normalise(frames[None], TINY2)
    two = masks[None, :, :2]  # (1, T, K=2, S, S)
    loss = jax.jit(lambda c, t: clip_loss(short_model, short_vars, c, t, jax.random.key(2)))
    shared, _ = loss(clip, two)
    repeated, _ = loss(np.repeat(clip, 2, axis=0), np.moveaxis(two[0], 1, 0))
    assert np.isfinite(float(shared))
    np.testing.assert_allclose(float(shared), float(repeated), rtol=1e-5)


def test_vit_patch_size_sets_the_embedding_grid():
    """A ViT with 8-px patches: the embedding grid, prompt grid and mask logits follow."""
    cfg = dataclasses.replace(TINY, encoder=dataclasses.replace(TINY.encoder, patch_size=8))
    assert (cfg.embed_size, cfg.mask_input_size) == (8, 32)
    model = build_from_config(cfg)
    variables = variable_shapes(model)  # shapes are all this needs: nothing is computed
    x, _ = scene_batch(1)
    emb = jax.eval_shape(lambda v: model.apply(v, x, method="encode_image"), variables)
    logits, iou = jax.eval_shape(
        lambda v: model.apply(
            v, x, point_coords=np.array([[[20.0, 30.0]]]), point_labels=np.array([[1]])
        ),
        variables,
    )
    assert emb.shape == (1, 8, 8, 32) and logits.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("name", ["sam_tiny_shapes", "sam2_tiny_shapes"])
def test_bundled_file_config_is_its_variant_entry(name):
    """`build(name)` (a fresh model to train) is the architecture the bundled file loads."""
    from safetensors import safe_open

    from sam_jax.checkpoint import bundled_models
    from sam_jax.config_json import config_from_json

    with safe_open(str(bundled_models()[name]), framework="numpy") as f:
        assert config_from_json(f.metadata()["config"]) == VARIANTS[name]


def test_iou_weight_scales_the_iou_head_mse():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 8, 8)), jnp.float32)
    iou = jnp.asarray(rng.uniform(size=(2, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 8, 8)) > 0.5)
    one, met = losses.sam_loss(logits, iou, target, iou_weight=1.0)
    five, _ = losses.sam_loss(logits, iou, target, iou_weight=5.0)
    assert float(met["iou_mse"]) > 0
    np.testing.assert_allclose(float(five - one), 4 * float(met["iou_mse"]), rtol=1e-5)


def test_trainable_takes_a_project_rule():
    """A (trained, frozen) glob pair or a path rule chooses what trains like a preset does;
    an unknown preset or a malformed rule is a clear error."""
    from sam_jax.train.step import trainable_labels

    shapes = variable_shapes(build_from_config(TINY))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    preset = trainable_labels(params, "decoder")
    assert trainable_labels(params, (None, ("image_encoder/*", "prompt_encoder/*"))) == preset
    assert trainable_labels(params, lambda name: name.startswith("mask_decoder/")) == preset
    tx = make_optimizer(params, (("mask_decoder/*",), ()), 1e-3)
    moved = _moved_by_a_first_update(tx, params)
    assert moved == {"mask_decoder"}
    with pytest.raises(ValueError, match="trainable must be one of"):
        trainable_labels(params, "encoder")
    with pytest.raises(ValueError, match="glob"):
        trainable_labels(params, ("mask_decoder/*",))


def test_warmup_cosine_schedule():
    from sam_jax.train.schedule import warmup_cosine

    schedule = warmup_cosine(1e-3, 100)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 1e-3, rtol=1e-6)  # warm-up: 100 // 20 steps
    np.testing.assert_allclose(float(schedule(100)), 5e-5, rtol=1e-5)
    one = warmup_cosine(1e-3, 1)  # a single step is valid: its learning rate is 0
    assert float(one(0)) == 0.0 and np.isfinite(float(one(1)))


def test_innermost_pixel_and_batches():
    from sam_jax.train.batching import batches, normalise, promptable
    from sam_jax.train.clicks import innermost_pixel

    mask = np.zeros((9, 12), bool)
    mask[2:7, 3:10] = True  # 5 x 7: one pixel is farthest from the background
    assert innermost_pixel(mask) == (6, 4)
    with pytest.raises(ValueError, match="at least one True pixel"):
        innermost_pixel(np.zeros((4, 4), bool))
    pool = [scene(i, 32) for i in range(3)]
    pool = [(img, masks[promptable(masks)]) for img, masks in pool]
    images, targets = next(batches(pool, batch_size=2, seed=0, objects_per_image=3))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert targets.shape == (2, 3, 32, 32) and targets.dtype == bool
    x = normalise(images, TINY)
    assert x.dtype == np.float32
    np.testing.assert_allclose(
        x[0, 0, 0] * TINY.pixel_std + TINY.pixel_mean, images[0, 0, 0], atol=1e-4
    )


def test_frozen_leaves_get_no_gradient_work(tiny_sam2):
    """The step differentiates only what trains: a frozen encoder's backward pass is not in
    the program (fewer matmuls than with everything training), with or without gradient
    accumulation (its loop body is the step's, matmul for matmul)."""
    model, variables = tiny_sam2
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((2, 64, 64), jnp.bool_)
    key = jax.eval_shape(lambda: jax.random.key(0))

    def matmuls(trainable: str, accumulate: int) -> int:
        tx = make_optimizer(variables["params"], trainable, 1e-3)
        step = make_train_step(model, tx, num_corrections=0, accumulate=accumulate)
        state = jax.eval_shape(lambda: TrainState.create(variables, tx))
        return step.lower(state, x, t, key).as_text().count("stablehlo.dot_general")

    decoder, everything = matmuls("decoder", 1), matmuls("all", 1)
    assert matmuls("decoder", 2) == decoder < matmuls("all_but_encoder", 1) < everything
    assert matmuls("all", 2) == everything


def test_optimizer_accumulation_keeps_state_for_trained_leaves_only():
    """make_optimizer(..., accumulate=N): the parameters move on every N-th call, and the
    accumulated gradients (like Adam's moments) exist for the trained leaves only."""
    shapes = variable_shapes(build_from_config(TINY))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    tx = make_optimizer(params, "decoder", 1e-3, accumulate=2)
    state = jax.jit(tx.init)(params)
    n_decoder = sum(x.size for x in jax.tree.leaves(params["mask_decoder"]))
    # acc_grads + Adam's mu and nu, decoder-sized each; counters are scalars
    assert sum(x.size for x in jax.tree.leaves(state)) < 3 * n_decoder + 16
    grads = jax.tree.map(np.ones_like, params)
    update = jax.jit(tx.update)  # one compiled program (op by op, each op compiles alone)
    for call in range(2):
        updates, state = update(grads, state, params)
        updates = jax.device_get(updates)
        moved = _changed_modules(params, jax.tree.map(lambda p, u: p + u, params, updates))
        assert moved == (set() if call == 0 else {"mask_decoder"}), (call, moved)


def test_empty_targets_get_padding_prompts_and_rows_draw_alone():
    """An empty target (a padding object) is prompted by padding points only, finite; with
    per_row, a row's prompt is the one it gets on its own, whatever the batch around it."""
    target = jnp.zeros((3, 16, 16), bool).at[0, 4:10, 6:12].set(True).at[2, 1:5, 1:5].set(True)
    keys = jax.random.split(jax.random.key(0), 3)
    coords, labels = clicks.per_row(clicks.first_prompt, keys, target)
    assert bool((labels[1] == -1).all()) and bool(jnp.isfinite(coords).all())
    assert bool((labels[0] != -1).any()) and bool((labels[2] != -1).any())
    for i in (0, 2):
        alone = clicks.first_prompt(keys[i], target[i : i + 1])
        np.testing.assert_array_equal(coords[i], alone[0][0])
        np.testing.assert_array_equal(labels[i], alone[1][0])


def test_sam_loss_weights_leave_padding_out():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(3, 3, 8, 8)), jnp.float32)
    iou = jnp.asarray(rng.uniform(size=(3, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(3, 8, 8)) > 0.5)
    w = jnp.array([1.0, 1.0, 0.0])
    weighted, met = losses.sam_loss(logits, iou, target, weights=w)
    two, met2 = losses.sam_loss(logits[:2], iou[:2], target[:2])
    np.testing.assert_allclose(float(weighted), float(two), rtol=1e-6)
    np.testing.assert_allclose(float(met["iou"]), float(met2["iou"]), rtol=1e-6)
    g = jax.grad(lambda lg: losses.sam_loss(lg, iou, target, weights=w)[0])(logits)
    assert not np.any(np.asarray(g[2]))
    g0 = jax.grad(lambda lg: losses.sam_loss(lg, iou, target, weights=0 * w)[0])(logits)
    assert float(losses.sam_loss(logits, iou, target, weights=0 * w)[0]) == 0.0
    assert not np.any(np.asarray(g0)) and bool(jnp.isfinite(g0).all())


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(model, variables, images, targets, key, valid=None):
    """((loss, metrics), gradients of the parameters) of the interactive loss with one
    corrective click. The data are arguments, not constants of the program: calls with the
    same shapes (other targets, another key) share one compiled program."""
    from sam_jax.train.step import interactive_loss

    def loss(params):
        v = {**variables, "params": params}
        return interactive_loss(model, v, images, targets, key, 1, valid=valid)

    return jax.value_and_grad(loss, has_aux=True)(variables["params"])


def test_padding_objects_add_no_loss_gradient_or_metric(tiny_sam):
    """Targets (B=2, K=2) whose last object is padding (valid False) give the loss,
    gradients and metrics of the 3 real objects alone (as three one-object rows), whatever
    the padding slot holds (garbage or an empty mask: no NaN from its prompts)."""
    model, variables = tiny_sam
    x, _ = scene_batch(2)
    objs = np.stack([scene(i, 64)[1][:2] for i in range(2)])  # (2, K=2, S, S)
    valid = np.array([[True, True], [True, False]])
    key = jax.random.key(7)
    garbage = objs.copy()
    garbage[1, 1] = np.random.default_rng(0).uniform(size=(64, 64)) > 0.5
    empty = objs.copy()
    empty[1, 1] = False
    rows = np.stack([objs[0, 0], objs[0, 1], objs[1, 0]])  # the flattened order, padding last
    (want, met_w), g_want = _loss_and_grads(model, variables, x[[0, 0, 1]], rows, key)
    for padded in (garbage, empty):
        (got, met), g = _loss_and_grads(model, variables, x, padded, key, valid)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        for name in ("iou_first", "iou_last"):
            np.testing.assert_allclose(float(met[name]), float(met_w[name]), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want), strict=True):
            assert bool(jnp.isfinite(a).all())
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))
    with pytest.raises(ValueError, match="valid must be"):
        _loss_and_grads(model, variables, x, objs, key, valid[:, :1])


def test_accumulation_averages_the_micro_batch_gradients_with_their_valid_rows(tiny_sam):
    """make_train_step(..., accumulate=2) with valid: micro-batch i (rows i*b.. of the
    images, targets and valid) runs with key fold_in(key, i); the update is the optimizer's
    on the mean of the micro-batches' gradients with their own masks, on the trained leaves
    only (`trainable`); the metrics are their means. (Accumulating without valid: the step
    from precomputed embeddings below. Micro-batches of (B=2, K=2) objects: their reference
    gradients are the padding test's compiled program.)"""
    import optax

    from sam_jax.train.step import trainable_labels

    model, variables = tiny_sam
    labels = trainable_labels(variables["params"], "decoder")
    tx = optax.multi_transform({"train": optax.sgd(1.0), "freeze": optax.set_to_zero()}, labels)
    step = make_train_step(model, tx, num_corrections=1, trainable="decoder", accumulate=2)
    x, _ = scene_batch(4)
    objs = np.stack([scene(i, 64)[1][:2] for i in range(4)])
    valid = np.array([[True, False], [True, True], [True, True], [False, True]])
    key = jax.random.key(9)
    state, met = step(TrainState.create(variables, tx), x, objs, key, valid)
    micro = [
        _loss_and_grads(
            model,
            variables,
            x[2 * i : 2 * i + 2],
            objs[2 * i : 2 * i + 2],
            jax.random.fold_in(key, i),
            valid[2 * i : 2 * i + 2],
        )
        for i in range(2)
    ]
    want = jax.tree.map(
        lambda p, a, b: p - (a + b) / 2,
        variables["params"]["mask_decoder"],
        *[grads["mask_decoder"] for _, grads in micro],
    )
    got = state.variables["params"]
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got["mask_decoder"]), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    assert _changed_modules(variables["params"], jax.device_get(got)) == {"mask_decoder"}
    (_, m0), (_, m1) = (loss_and_metrics for loss_and_metrics, _ in micro)
    np.testing.assert_allclose(float(met["loss"]), (m0["loss"] + m1["loss"]) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match="must divide the batch"):
        step(TrainState.create(variables, tx), x[:1], objs[:1], key, valid[:1])


def test_step_from_precomputed_embeddings_equals_the_step_from_images(tiny_sam):
    """A decoder-only step (accumulating 2 micro-batches, so the embeddings' leading axis
    is split) from `encode_image`'s output gives the new parameters of the step from the
    images. (SAM 2's dict of features gives the loss of its images: the image-mode test.)"""
    import optax

    from sam_jax.train.step import trainable_labels

    model, variables = tiny_sam
    labels = trainable_labels(variables["params"], "decoder")
    tx = optax.multi_transform({"train": optax.sgd(1.0), "freeze": optax.set_to_zero()}, labels)
    # the step differentiates the decoder alone (no backward pass through the encoder)
    step = make_train_step(model, tx, num_corrections=1, trainable="decoder", accumulate=2)
    x, t = scene_batch(2)
    key = jax.random.key(4)
    emb = jax.jit(lambda x: model.apply(variables, x, method="encode_image"))(x)
    from_images, m1 = step(TrainState.create(variables, tx), x, t, key)
    from_emb, m2 = step(TrainState.create(variables, tx), emb, t, key)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    a, b = from_images.variables["params"], from_emb.variables["params"]
    assert _changed_modules(variables["params"], jax.device_get(b)) == {"mask_decoder"}
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)


# SAM's with a one-layer mask decoder: the claim is which output head trains, not the
# decoder's depth (2.9 s less to compile; SAM 2's gains nothing measurable at one layer)
@pytest.mark.parametrize("config", [TINY_1, TINY2], ids=["sam", "sam2"])
def test_first_prompt_head_follows_prompt_kind(config):
    """As SAM 2 trains: a first click trains the multimask output (its best mask), a first
    box the single-mask output. Each object's loss (num_corrections=0), isolated with
    valid=, equals SAM's loss on the head its drawn prompt kind selects."""
    from sam_jax.train.step import interactive_loss

    model = build_from_config(config)
    variables = random_variables(model)
    s = config.image_size
    x, _ = scene_batch(1, s)
    objs = np.stack([scene(i, s)[1][0] for i in range(6)])  # (6, S, S): six objects
    images = jnp.repeat(x, 6, axis=0)
    key = jax.random.key(11)
    # compiled, not run op by op (each op of the encoder and decoder compiled on its own)
    emb = jax.jit(lambda im: model.apply(variables, im, method="encode_image"))(images)
    rows = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), 0))(jnp.arange(6))
    coords, labels = clicks.per_row(clicks.first_prompt, rows, jnp.asarray(objs))
    kinds = np.asarray(labels[:, 0])
    assert {1, 2} <= set(kinds.tolist()), "the seed should draw both clicks and boxes"
    soft = losses.soft_targets(jnp.asarray(objs), config.mask_input_size)
    loss = jax.jit(lambda v: interactive_loss(model, variables, images, objs, key, 0, valid=v)[0])
    predict = jax.jit(
        lambda multi: model.apply(
            variables,
            emb,
            point_coords=coords,
            point_labels=labels,
            multimask_output=multi,
            method="predict_masks",
        ),
        static_argnums=0,
    )
    for multi in (True, False):  # every object through one head, each loss on its own
        out = predict(multi)
        for i in np.flatnonzero((kinds == 1) == multi):
            want, _ = losses.sam_loss(out[0][i : i + 1], out[1][i : i + 1], soft[i : i + 1])
            if len(out) == 3:
                want = want + losses.object_score_loss(out[2][i : i + 1], jnp.ones(1, bool))[0]
            got = loss(np.arange(6) == i)
            np.testing.assert_allclose(float(got), float(want), rtol=2e-5)


def test_void_pixels_add_no_loss_and_get_no_click():
    """sam_loss with pixel_weights: what logits do on 0-weighted cells changes neither the
    loss nor the IoU; all-ones weights are no weights. Corrective clicks avoid void cells."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 16, 16)), jnp.float32)
    iou = jnp.asarray(rng.uniform(size=(2, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 16, 16)) > 0.5, jnp.float32)
    known = np.ones((2, 16, 16), np.float32)
    known[:, :8] = 0.0
    plain, _ = losses.sam_loss(logits, iou, target)
    ones, _ = losses.sam_loss(logits, iou, target, pixel_weights=jnp.ones((2, 16, 16)))
    np.testing.assert_allclose(float(ones), float(plain), rtol=1e-6)
    a, met_a = losses.sam_loss(logits, iou, target, pixel_weights=known)
    moved = logits.at[:, :, :8].set(-logits[:, :, :8] + 3.0)
    b, met_b = losses.sam_loss(moved, iou, target, pixel_weights=known)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    np.testing.assert_allclose(float(met_a["iou"]), float(met_b["iou"]), rtol=1e-6)
    assert abs(float(a) - float(plain)) > 1e-3
    wrong = jnp.zeros((4, 16, 16)).at[:, :, :12].set(5.0)  # errors in columns 0 .. 11
    void = jnp.zeros((4, 16, 16), bool).at[:, :, :10].set(True)
    keys = jax.random.split(jax.random.key(0), 4)
    xy, lab = clicks.per_row(
        clicks.corrective_click, keys, wrong, jnp.zeros((4, 16, 16), bool), void
    )
    assert (np.asarray(xy[:, 0, 0]) >= 10).all() and (np.asarray(lab) == 0).all()
