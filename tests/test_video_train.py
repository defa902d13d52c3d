"""SAM 2 clip training: prompt simulation (VideoPrompting) and padding objects in clip_loss."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.checkpoint import build_from_config
from sam_jax.config import VARIANTS
from sam_jax.projects.shapes.synthetic import video
from sam_jax.tracking.memory_bank import empty_bank, ring_slot
from sam_jax.tracking.track_step import (
    TRACK,
    FrameInput,
    mask_prompt_impl,
    prompt_memory_impl,
    track_heads_impl,
)
from sam_jax.train import video_step
from sam_jax.train.batching import normalise
from sam_jax.train.clicks import cell_centre, corrective_click, sample_pixel
from sam_jax.train.losses import object_score_loss, sam_loss, soft_targets
from sam_jax.train.video_losses import clip_targets
from sam_jax.train.video_prompts import (
    SAM2_TRAINING,
    VideoPrompting,
    box_prompt,
    click_prompt,
    draw_prompts,
)
from sam_jax.train.video_step import clip_loss
from tests.tiny_configs import TINY2_1, random_variables

# The clip loss's gradient programs are the largest the suite compiles, and a third of
# their compile time is the mask decoder's second two-way layer: one layer keeps every
# prompt and memory path (the parity tests cover two). Likewise one memory-attention layer
# (sam2_tiny_shapes has two): the memory path is the same with one.
SHAPES_1 = dataclasses.replace(
    VARIANTS["sam2_tiny_shapes"], image_size=64, decoder_depth=1, memory_attention_layers=1
)


def _objects_found(config) -> tuple:
    """`config` with random weights, objects found everywhere (the object-score head
    biased) so pointers and masks are the heads' own."""
    model = build_from_config(config)
    variables = jax.tree.map(np.array, random_variables(model))
    head = variables["params"]["sam_mask_decoder"]["pred_obj_score_head"]["layers_2"]
    head["bias"] = head["bias"] + 10.0
    return model, variables


@pytest.fixture(scope="module")
def tiny_sam2():
    """TINY2_1 (64 px, multimask tracking), random weights, objects found everywhere."""
    return _objects_found(TINY2_1)


@pytest.fixture(scope="module")
def shapes_sam2():
    """SHAPES_1 (sam2_tiny_shapes' single-mask tracking and in-window conditioning, at 64
    px), random weights, objects found everywhere; its variables device arrays (as a train
    step's are: numpy ones cannot be indexed by traced values)."""
    model, variables = _objects_found(SHAPES_1)
    return model, jax.tree.map(jnp.asarray, variables)


def _clip(config, num_frames: int = 3, seed: int = 5):
    """(clips (1, T, 64, 64, 3) normalised, targets (1, T, K=3, 64, 64) bool)."""
    frames, masks = video(seed, num_frames, 64)
    return normalise(frames[None], config), masks[None]


def _trained_apart_from_encoder(variables):
    """(the parameters differentiated: all but the image encoder, a closure rebuilding the
    variables): gradients through the memory path without the encoder's backward pass."""
    params = dict(variables["params"])
    encoder = params.pop("image_encoder")
    rebuild = lambda p: {**variables, "params": {**p, "image_encoder": encoder}}
    return params, rebuild


# ------------------------------------------------------------------------ prompt draws


def test_draws_follow_the_protocol():
    """Over many draws of SAM2_TRAINING on 6 frames (object visible on frames 0, 2, 3):
    1 or 2 conditioning frames, the second a visible later frame; a corrected tracked
    frame only with point prompts, never a conditioning frame, its slot after theirs."""
    visible = jnp.array([True, False, True, True, False, False])
    keys = jax.random.split(jax.random.key(0), 400)
    p = jax.vmap(lambda k: draw_prompts(k, visible, SAM2_TRAINING, 1))(keys)
    p = jax.tree.map(np.asarray, p)
    n_cond = p.cond_active.sum(1)
    assert set(n_cond) == {1, 2} and (p.cond_frames[:, 0] == 0).all()
    assert set(p.cond_frames[:, 1]) == {2, 3}  # visible later frames only
    np.testing.assert_array_equal(p.is_cond.sum(1), n_cond)
    assert not (p.correct & p.is_cond).any() and not p.correct[:, 0].any()
    assert not p.correct[p.use_mask].any()
    n_correct = p.correct.sum(1)
    assert set(n_correct) == {0, 1}  # at most num_correct_frames = 2 frames in all
    assert (n_correct[n_cond == 2] == 0).all()
    slots = p.slot[p.correct]
    assert (slots >= n_cond[p.correct.any(1)]).all() and (slots < 2).all()
    assert 0.4 < p.use_mask.mean() < 0.6 and 0.4 < p.use_box.mean() < 0.6


def test_default_draw_is_one_click_on_frame_0():
    p = draw_prompts(jax.random.key(1), jnp.ones(5, bool), VideoPrompting(), 3)
    assert not bool(p.use_mask) and not bool(p.use_box.any())
    np.testing.assert_array_equal(p.cond_frames, [0])
    assert not bool(p.correct.any()) and int(p.is_cond.sum()) == 1
    assert VideoPrompting().num_cond_slots(3) == 1
    assert SAM2_TRAINING.num_cond_slots(7) == 2 and SAM2_TRAINING.num_cond_slots(0) == 2


def test_first_prompts_at_logit_resolution():
    """A click lands in its cell's centre, a box's corners near the mask's box edges (in
    input pixels, 4 per logit cell here); an empty target gives padding labels."""
    target = jnp.zeros((2, 8, 8), bool).at[0, 2:5, 3:7].set(True)
    coords, labels = click_prompt(jax.random.key(0), target, 4.0)
    x, y = (np.asarray(coords[0, 0]) - 1.5) / 4
    assert bool(target[0, int(y), int(x)]) and labels.tolist() == [[1], [-1]]
    coords, labels = box_prompt(jax.random.key(0), target, 4.0)
    np.testing.assert_allclose(coords[0].reshape(4), [12, 8, 28, 20], atol=0.1 * 16 * 3)
    assert labels.tolist() == [[2, 3], [-1, -1]]


def test_bad_prompting_is_a_clear_error(tiny_sam2):
    with pytest.raises(ValueError, match="prob_box must be in"):
        VideoPrompting(prob_box=1.5)
    with pytest.raises(ValueError, match="num_correct_frames"):
        VideoPrompting(num_cond_frames=2, num_correct_frames=1)
    model, variables = tiny_sam2
    clips, targets = _clip(TINY2_1, num_frames=2)
    three = VideoPrompting(num_cond_frames=3, num_correct_frames=3)
    with pytest.raises(ValueError, match="clips have 2"):
        clip_loss(model, variables, clips, targets, jax.random.key(0), prompting=three)
    with pytest.raises(ValueError, match=r"valid must be \(B, K\)"):
        clip_loss(model, variables, clips, targets, jax.random.key(0), valid=np.ones(3, bool))


# --------------------------------------------------------------- the default protocol


def _old_frame_loss(heads, soft, multimask):
    """The clip loss's per-frame loss before VideoPrompting (one object, batch 1)."""
    present = jnp.any(soft > 0.5)
    if multimask:
        logits, iou = heads.low_res_multimasks, heads.ious
    else:
        logits, iou = heads.low_res_masks, heads.ious[:, :1]
    mask_loss, met = sam_loss(logits, iou, soft[None])
    score_loss = object_score_loss(heads.object_score_logits, present[None])[0]
    return jnp.where(present, mask_loss, 0.0) + score_loss, jnp.where(present, met["iou"], jnp.nan)


def _old_frame0(m, vision, hr0, hr1, soft, key, num_corrections):
    """Frame 0 as the clip loss prompted it before VideoPrompting: a click, corrections."""
    cfg = m.config
    target0 = soft[0] > 0.5
    keys = jax.random.split(key, num_corrections + 1)
    point, _ = sample_pixel(keys[0], target0[None])
    scale = cfg.image_size / cfg.mask_input_size
    coords, labels = cell_centre(point[:, None], scale), jnp.ones((1, 1), jnp.int32)
    pix0 = vision[:1] + m.no_mem_embed.reshape(1, 1, 1, -1)
    mask_in, losses = None, []
    for r in range(num_corrections + 1):
        heads = m.forward_sam_heads(
            pix0, coords, labels, mask_in, [hr0[:1], hr1[:1]], multimask_output=r == 0
        )
        losses.append(_old_frame_loss(heads, soft[0], r == 0)[0])
        low = jax.lax.stop_gradient(heads.low_res_masks[:, 0])
        if r < num_corrections:
            click, click_label = corrective_click(keys[r + 1], low, target0[None])
            coords = jnp.concatenate([coords, cell_centre(click, scale)], axis=1)
            labels = jnp.concatenate([labels, click_label], axis=1)
            mask_in = jnp.clip(low, -32.0, 32.0)[..., None]
    score = heads.object_score_logits[:, 0]
    mem = prompt_memory_impl(m, vision[0], heads.low_res_masks[:, 0], score)
    return mem, heads.obj_ptr, jnp.mean(jnp.stack(losses))


def _old_clip_loss(model, variables, clips, targets, key, num_corrections):
    """clip_loss before VideoPrompting, for (1, T, K, S, S) targets, through the tracker's
    own step (`track_heads_impl`): the reference the defaults must reproduce."""
    cfg = model.config
    t, k = clips.shape[1], targets.shape[2]
    f = model.apply(variables, clips[0], method="encode_image")
    vision, (hr0, hr1) = f["vision_features"], f["high_res_features"]
    g = vision.shape[1]
    soft = soft_targets(targets[0], cfg.mask_input_size)  # (T, K, 4g, 4g)

    def one(sf, key):
        args = (vision, hr0, hr1, sf, key, num_corrections)
        mem, ptr, loss0 = model.apply(variables, *args, method=_old_frame0)
        bank = empty_bank(1, 1, g, cfg.mem_dim, cfg.d_model, cfg.num_maskmem - 1,
                          cfg.max_obj_ptrs_in_encoder - 1, t, xp=jnp)  # fmt: skip
        bank = bank.replace(
            cond_feats=mem[:, None], cond_ptrs=ptr[:, None], cond_valid=jnp.ones((1, 1), bool)
        )
        frames = FrameInput(
            frame_idx=jnp.arange(1, t, dtype=jnp.int32),
            vision_features=vision[1:],
            high_res_0=hr0[1:],
            high_res_1=hr1[1:],
            kind=jnp.full((t - 1, 1), TRACK, jnp.int32),
            stored_feats=jnp.zeros((t - 1, 1, g, g, cfg.mem_dim)),
            stored_ptrs=jnp.zeros((t - 1, 1, cfg.d_model)),
        )

        def body(bank, xs):
            bank, _, heads = model.apply(variables, bank, xs[0], method=track_heads_impl)
            return bank, _old_frame_loss(heads, xs[1], cfg.multimask_output_for_tracking)[0]

        _, losses = jax.lax.scan(body, bank, (frames, sf[1:]))
        return (loss0 + jnp.sum(losses)) / t

    keys = jax.random.split(key, k)
    return jnp.mean(jax.vmap(one, in_axes=(1, 0))(soft, keys))


def test_default_prompting_equals_the_former_clip_loss(tiny_sam2):
    """VideoPrompting() (one click on frame 0, corrections there): the loss and gradients
    of the clip loss as it was, built from the tracker's own step."""
    model, variables = tiny_sam2
    clips, targets = _clip(TINY2_1)
    targets = targets[:, :, :2]
    params, rebuild = _trained_apart_from_encoder(variables)
    key = jax.random.key(7)
    new = lambda p: clip_loss(model, rebuild(p), clips, targets, key, 1, prompting=VideoPrompting())
    old = lambda p: _old_clip_loss(model, rebuild(p), clips, targets, key, 1)

    @jax.jit
    def run(p):
        return jax.value_and_grad(lambda q: new(q)[0])(p), jax.value_and_grad(old)(p)

    (l_new, g_new), (l_old, g_old) = run(params)
    assert np.isfinite(float(l_old))
    np.testing.assert_allclose(float(l_new), float(l_old), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_old), strict=True):
        atol = 1e-5 * max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=atol)


# -------------------------------------------------------------------- prompt kinds


def _object_draws(config, targets, key, prompting, num_corrections):
    """The ClipPrompts clip_loss draws for each object of one clip (1, T, K, S, S)."""
    draws = _compiled_draws(config, targets, key, prompting, num_corrections)
    return jax.tree.map(np.asarray, draws)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _compiled_draws(config, targets, key, prompting, num_corrections):
    """_object_draws' arrays, one compiled program for every key (a search over keys
    traced the draws op by op for each)."""
    soft = soft_targets(targets[0], config.mask_input_size)  # (T, K, 4g, 4g)
    visible = jnp.any(soft > 0.5, axis=(2, 3)).T  # (K, T)
    keys = jax.random.split(key, targets.shape[2])
    draw = lambda k, v: draw_prompts(jax.random.fold_in(k, 1), v, prompting, num_corrections)
    return jax.vmap(draw)(keys, visible)


def test_every_prompt_kind_trains(shapes_sam2):
    """SAM 2's training protocol (SAM2_TRAINING: every prompt kind, random conditioning and
    corrected frames) on one clip whose three objects get a mask, a box and a click, with a
    corrected tracked frame, plus a padding object (empty, valid False), the tracked frames
    recomputed in the backward pass (remat_frames): finite loss, metrics and gradients,
    which reach what each kind uses."""
    model, variables = shapes_sam2
    clips, targets = _clip(model.config, num_frames=3)
    targets = np.concatenate([targets, np.zeros_like(targets[:, :, :1])], axis=2)
    valid = np.array([[True, True, True, False]])
    for seed in range(200):  # a key under which the real objects cover every kind
        key = jax.random.key(seed)
        p = _object_draws(model.config, targets, key, SAM2_TRAINING, 1)
        p = jax.tree.map(lambda x: x[:3], p)
        points = ~p.use_mask
        if (
            p.use_mask.any()
            and (points & p.use_box[:, 0]).any()
            and (points & ~p.use_box[:, 0]).any()
            and p.correct.any()
        ):
            break
    else:
        raise AssertionError("no key covers every prompt kind")
    params, rebuild = _trained_apart_from_encoder(variables)

    def loss(q):
        v = rebuild(q)
        return clip_loss(
            model, v, clips, targets, key, 1, True, prompting=SAM2_TRAINING, valid=valid
        )

    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert np.isfinite(float(value)) and all(np.isfinite(float(v)) for v in metrics.values())
    assert all(bool(np.isfinite(g).all()) for g in jax.tree.leaves(grads))
    # the mask prompt's pointer (mask_downsample), the memory path, the prompt encoder
    for name in ("mask_downsample", "memory_encoder", "memory_attention", "sam_prompt_encoder"):
        assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name


@pytest.mark.parametrize(
    "prompting",
    [
        VideoPrompting(prob_box=1.0),
        VideoPrompting(prob_mask=1.0, num_cond_frames=2),
        VideoPrompting(num_correct_frames=2, correct_as_cond=False, prob_click_from_target=1.0),
    ],
    ids=["box", "mask", "click-corrections-in-ring"],
)
def test_each_pure_prompt_kind_traces(shapes_sam2, prompting):
    """Each kind alone (a program without the others' branches) traces to a scalar loss
    and gradients of the parameters' shapes (jax.eval_shape: nothing is compiled), with
    the tracked frames recomputed in the backward pass (remat_frames). (All kinds at once,
    SAM2_TRAINING, compile and run in test_every_prompt_kind_trains.)"""
    model, variables = shapes_sam2
    clips, targets = _clip(model.config, num_frames=3)
    key = jax.random.key(0)
    loss = lambda v: clip_loss(model, v, clips, targets, key, 2, True, prompting=prompting)
    value, grads = jax.eval_shape(jax.value_and_grad(lambda v: loss(v)[0]), variables)
    assert value.shape == ()
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(np.shape, variables)


@pytest.fixture(scope="module")
def encoded_clip(shapes_sam2):
    """A 3-frame clip's encoded frames (one compiled encoder call, shared) and its first
    object's targets at logit resolution (all known) and full size."""
    model, variables = shapes_sam2
    clips, targets = _clip(model.config, num_frames=3)
    encode = jax.jit(lambda v, x: video_step._encode_frames(model, v, x, False))
    frames = encode(variables, jnp.asarray(clips[0]))
    soft = clip_targets(targets[:1, :, 0], None, model.config.mask_input_size)[0]
    return frames, soft, jnp.asarray(targets[0, :, 0])


def test_mask_prompt_is_the_first_frames_output(shapes_sam2, encoded_clip):
    """prob_mask=1: frame 0's output is its ground-truth mask (`mask_prompt_impl`), its
    memory that output's, whatever the key."""
    model, variables = shapes_sam2
    frames, soft, masks = encoded_clip
    prompting = VideoPrompting(prob_mask=1.0)

    @jax.jit
    def cond_stage(key):
        prompts = draw_prompts(key, jnp.ones(3, bool), prompting, 1)
        args = (*frames, soft, masks, prompts, key, prompting, 1, {})
        return model.apply(variables, *args, method=video_step._cond_frames_impl)

    out, mems = cond_stage(jax.random.key(0))
    vision, hr0, hr1 = frames

    @jax.jit
    def frame0_by_hand(variables):
        low, ptr, score = model.apply(
            variables, vision[0], hr0[0], hr1[0], masks[:1], method=mask_prompt_impl
        )
        mem = model.apply(variables, vision[0], low, score, method=prompt_memory_impl)
        return low, ptr, score, mem

    low, ptr, score, want = frame0_by_hand(variables)
    np.testing.assert_allclose(out.low, low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.ptr, ptr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.score, [10.0])
    np.testing.assert_allclose(mems, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    assert float(out.iou_first[0]) > 0.9
    again, _ = cond_stage(jax.random.key(1))
    np.testing.assert_array_equal(again.low, out.low)


@pytest.mark.parametrize("as_cond", [True, False])
def test_conditioning_and_corrected_frames_fill_the_bank(shapes_sam2, encoded_clip, as_cond):
    """Two initial conditioning frames fill two conditioning slots (frame 0 and a later
    one); a corrected tracked frame fills the third (correct_as_cond), its ring slots (of
    memories and of pointers) left empty, or else enters the rings like a tracked frame.
    (3 frames: frames 1 and 2 are the later conditioning frame and the corrected one.)"""
    model, variables = shapes_sam2
    frames, soft, masks = encoded_clip
    prompting = VideoPrompting(num_cond_frames=2, num_correct_frames=3, correct_as_cond=as_cond)
    options = (1, False, prompting, {})
    run = jax.jit(
        lambda k: video_step._track_clip(model, variables, frames, soft, masks, k, options)
    )
    bank, out, prompts, losses, ious = jax.tree.map(np.asarray, run(jax.random.key(3)))
    cond = prompts.cond_frames
    assert cond[0] == 0 and cond[1] > 0 and prompts.cond_active.all()
    (fixed,) = np.nonzero(prompts.correct)[0]  # the other later frame, corrected
    assert {int(cond[1]), int(fixed)} == {1, 2}
    ring = ring_slot(fixed, bank.recent_valid.shape[1])
    ptr = ring_slot(fixed, bank.ptr_valid.shape[1])
    assert bank.recent_frames[0, ring] == fixed and bank.ptr_frames[0, ptr] == fixed
    if as_cond:
        np.testing.assert_array_equal(bank.cond_valid[0], [True, True, True])
        np.testing.assert_array_equal(bank.cond_frames[0], [0, cond[1], fixed])
        assert not bank.recent_valid[0, ring] and not bank.ptr_valid[0, ptr]
    else:
        np.testing.assert_array_equal(bank.cond_valid[0], [True, True])
        np.testing.assert_array_equal(bank.cond_frames[0], [0, cond[1]])
        assert bank.recent_valid[0, ring] and bank.ptr_valid[0, ptr]
    assert not bank.recent_valid[0, ring_slot(cond[1], bank.recent_valid.shape[1])]
    assert losses[cond[1] - 1] == 0 and np.isnan(ious[cond[1] - 1])  # counted before the scan
    assert np.isfinite(out.loss).all() and np.isfinite(losses).all() and losses[fixed - 1] > 0


# ---------------------------------------------------------------------- validity


def test_padding_objects_change_nothing(tiny_sam2):
    """A padding object (all-background target, valid False) leaves the loss, its
    gradients and the metrics those of the clip without it, all finite; so does a padding
    clip in a (B, T, S, S) batch. (Mask prompts: no draw depends on the object count, so
    the clip without the padding object is also the clip with its real object twice, both
    valid: the padded and the doubled clip run one compiled gradient program, and the clip
    alone, a program of its own, anchors the loss and metrics.)"""
    model, variables = tiny_sam2
    clips, targets = _clip(TINY2_1)
    real = targets[:, :, :1]
    params, rebuild = _trained_apart_from_encoder(variables)
    masks = VideoPrompting(prob_mask=1.0)
    key = jax.random.key(2)

    def loss(q, t, valid=None, c=clips):
        return clip_loss(model, rebuild(q), c, t, key, 1, prompting=masks, valid=valid)

    grads = jax.jit(jax.value_and_grad(loss, has_aux=True))
    padded = np.concatenate([real, np.zeros_like(real)], axis=2)
    (l_p, m_p), g_p = grads(params, padded, np.array([[True, False]]))
    doubled = np.concatenate([real, real], axis=2)
    (l_a, m_a), g_a = grads(params, doubled, np.array([[True, True]]))
    assert np.isfinite(float(l_a))
    np.testing.assert_allclose(float(l_p), float(l_a), rtol=1e-6)
    for k in m_a:
        np.testing.assert_allclose(float(m_p[k]), float(m_a[k]), rtol=1e-6)
    # float32 rounding (the objects' weighted contributions are summed in one batched
    # product, in another order), on the gradients' scale
    atol = 1e-5 * max(float(np.abs(g).max()) for g in jax.tree.leaves(g_a))
    for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_a), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=atol)
    # the clip alone: its one object (B, T, S, S)
    l_one, m_one = jax.jit(lambda q: loss(q, real[:, :, 0]))(params)
    np.testing.assert_allclose(float(l_p), float(l_one), rtol=1e-6)
    for k in m_one:
        np.testing.assert_allclose(float(m_p[k]), float(m_one[k]), rtol=1e-6)
    # the second clip (frames reversed, its object visible) marked padding
    two = np.concatenate([clips, clips[:, ::-1]])
    flat = np.concatenate([real[:, :, 0], real[:, ::-1, 0]])
    l_two, m_two = jax.jit(lambda q: loss(q, flat, np.array([True, False]), two))(params)
    np.testing.assert_allclose(float(l_two), float(l_one), rtol=1e-6)
    for k in m_one:
        np.testing.assert_allclose(float(m_two[k]), float(m_one[k]), rtol=1e-6)


def test_unannotated_frames_add_no_loss(tiny_sam2):
    """A frame whose pixels are all void (a sparsely annotated video) adds nothing: its
    targets can be anything; the loss is the mean over the annotated frames."""
    model, variables = tiny_sam2
    variables = jax.tree.map(jnp.asarray, variables)  # indexed by traced frame numbers
    clips, targets = _clip(TINY2_1, 3)
    targets = targets[:, :, 0]  # (1, T, S, S): one object
    key = jax.random.key(4)
    loss = jax.jit(lambda t, ig: clip_loss(model, variables, clips, t, key, 1, ignore=ig)[0])
    known = np.zeros(targets.shape, bool)
    ignore = known.copy()
    ignore[:, 2] = True
    other = targets.copy()
    other[:, 2] = ~other[:, 2]
    a, b, c = loss(targets, ignore), loss(other, ignore), loss(targets, known)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    assert abs(float(a) - float(c)) > 1e-4  # the frame counts when it is known
    with pytest.raises(ValueError, match="ignore must be"):
        clip_loss(model, variables, clips, targets, key, 1, ignore=ignore[:, :2])
