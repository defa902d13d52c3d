"""Parity with transformers itself: SamModel, Sam2Model and Sam2VideoModel with every saved
parameter random, written by save_pretrained and read by sam_jax.load, on the same inputs;
folders written by --to hf run by transformers.

Parity figures are max|ours - ref| / max|ref|, printed (run with -s to read them).
"""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import sam_jax
from sam_jax.checkpoint import variable_shapes
from sam_jax.cli import main as cli_main
from sam_jax.config import VARIANTS
from sam_jax.convert.hf_config import config_from_hf
from sam_jax.convert.hf_keymap import sam_hf_names
from sam_jax.convert.hf_sam2_keymap import sam2_hf_names
from sam_jax.convert.hf_writer import save_hf
from sam_jax.convert.keymap import torch_key
from tests.test_hf_checkpoints import (
    OFFICIAL,
    PROMPTS,
    SAM2_HEADS,
    SAM2_VISION,
    S,
    _conversion_script_config,
    assert_same_variables,
    rel_err,
    report,
)


@pytest.fixture(scope="module")
def bundled():
    return {name: sam_jax.load(name) for name in ("sam_tiny_shapes", "sam2_tiny_shapes")}


# ------------------------------------------------------------- parity with transformers (torch)


def fill_random(model, seed: int):
    """Every saved parameter and buffer of an HF model (zero-initialised ones too) with seeded
    random values, as tests/reference.py fills the ultralytics modules; eval mode. The RoPE
    tables are not saved and keep their values (sam_jax computes them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if t.ndim == 1 and leaf == "weight":  # norm scales
                new = 1.0 + 0.2 * torch.randn(t.shape, generator=g)
            elif t.ndim >= 2 and leaf == "weight":
                new = torch.randn(t.shape, generator=g) / max(1, int(np.prod(t.shape[1:]))) ** 0.5
            else:
                new = 0.2 * torch.randn(t.shape, generator=g)
            t.copy_(new)
        if hasattr(model, "no_memory_embedding"):  # SAM 2: real files hold equal copies
            shared = model.shared_image_embedding.positional_embedding
            model.prompt_encoder.shared_embedding.positional_embedding.copy_(shared)
            # A positive object score, so that the masks are compared, not -1024 fills.
            model.mask_decoder.pred_obj_score_head.proj_out.bias += 3.0
    return model.eval()


def _apply(model, variables, *args, **kwargs):
    """`model.apply` as one compiled program (op by op, each operation of the model would be
    compiled on its own: several times slower here); str and bool keywords are static."""
    static = {k: v for k, v in kwargs.items() if isinstance(v, (bool, str))}
    arrays = {k: v for k, v in kwargs.items() if k not in static}
    run = jax.jit(lambda v, a, kw: model.apply(v, *a, **kw, **static))
    return run(variables, args, arrays)


def _nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _hf_prompts(torch, prompts: dict) -> dict:
    """sam_jax prompts -> transformers' (one mask per image: point batch of 1)."""
    out = {}
    if "point_coords" in prompts:
        out["input_points"] = torch.from_numpy(prompts["point_coords"])[:, None]
        out["input_labels"] = torch.from_numpy(prompts["point_labels"]).long()[:, None]
    if "boxes" in prompts:
        out["input_boxes"] = torch.from_numpy(prompts["boxes"])[:, None]
    return out


def _images(n: int = 2, size: int = S) -> np.ndarray:
    """Model-level images (normalised): both sides get the same preprocessed tensor."""
    return np.random.RandomState(0).randn(n, size, size, 3).astype(np.float32)


@pytest.mark.torch
def test_sam_model_parity(tmp_path):
    import torch
    from transformers import SamConfig, SamModel

    # Meta's two-way transformer normalises with eps 1e-5, transformers' default is 1e-6: the
    # comparison is about the weights, so the HF model runs Meta's model. The gap the default
    # makes is printed below.
    config = SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           global_attn_indexes=[1], image_size=S, output_channels=32,
                           window_size=4, num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=S),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                 iou_head_hidden_dim=32, layer_norm_eps=1e-5),
    )  # fmt: skip
    hf = fill_random(SamModel(config), seed=1)
    hf.save_pretrained(tmp_path)
    model, variables = sam_jax.load(tmp_path)
    x = _images()
    emb = _apply(model, variables, x, method="encode_image")
    with torch.no_grad():
        ref_emb = hf.get_image_embeddings(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert report("SamModel image embeddings", rel_err(emb, _nhwc(ref_emb))) <= 1e-4
    for what, prompts in PROMPTS.items():
        for multimask in (True, False):
            logits, iou = _apply(
                model, variables, emb, **prompts, multimask_output=multimask, method="predict_masks"
            )
            with torch.no_grad():
                ref = hf(image_embeddings=ref_emb, multimask_output=multimask,
                         **_hf_prompts(torch, prompts))  # fmt: skip
            tag = f"SamModel {what} multimask={multimask}"
            assert report(f"{tag} logits", rel_err(logits, ref.pred_masks[:, 0])) <= 1e-3
            assert report(f"{tag} iou", rel_err(iou, ref.iou_scores[:, 0])) <= 1e-3
    for module in hf.mask_decoder.transformer.modules():
        if isinstance(module, torch.nn.LayerNorm) and module.eps == 1e-5:
            module.eps = 1e-6
    with torch.no_grad():
        ref = hf(image_embeddings=ref_emb, **_hf_prompts(torch, PROMPTS["points"]))
    logits, _ = _apply(model, variables, emb, **PROMPTS["points"], method="predict_masks")
    report("SamModel points logits, transformers' eps 1e-6", rel_err(logits, ref.pred_masks[:, 0]))


@pytest.mark.torch
def test_sharded_and_torch_bin_folders(bundled, tmp_path):
    """The other layouts save_pretrained writes: safetensors shards with their index, and
    pytorch_model.bin (read without torch, as any torch file)."""
    import torch
    from transformers import AutoModel

    model, variables = bundled["sam_tiny_shapes"]
    save_hf(tmp_path / "one", model, variables)
    hf = AutoModel.from_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "shards", max_shard_size="1MB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    (tmp_path / "one" / "config.json").rename(tmp_path / "bin" / "config.json")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for layout in ("shards", "bin"):
        model2, variables2 = sam_jax.load(tmp_path / layout)
        assert model2.config == model.config
        assert_same_variables(variables, variables2)


@pytest.mark.torch
def test_sam2_model_parity(tmp_path):
    """transformers' Sam2Model (the image model alone)."""
    import torch
    from transformers import Sam2Config, Sam2Model

    hf = fill_random(Sam2Model(Sam2Config(vision_config=SAM2_VISION, **SAM2_HEADS)), seed=2)
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="image-only"):
        model, variables = sam_jax.load(tmp_path)
    x = _images()
    feats = _apply(model, variables, x, method="encode_image")
    with torch.no_grad():
        ref_emb = hf.get_image_embeddings(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    no_mem = np.asarray(variables["params"]["no_mem_embed"]).reshape(1, 1, 1, -1)
    ours_emb = [*feats["high_res_features"], feats["vision_features"] + no_mem]
    for i, (a, b) in enumerate(zip(ours_emb, ref_emb, strict=True)):
        assert report(f"Sam2Model image embeddings level {i}", rel_err(a, _nhwc(b))) <= 1e-4
    for what, prompts in PROMPTS.items():
        for multimask in (True, False):
            logits, iou, obj = _apply(
                model,
                variables,
                feats,
                **prompts,
                multimask_output=multimask,
                method="predict_masks",
            )
            with torch.no_grad():
                ref = hf(image_embeddings=ref_emb, multimask_output=multimask,
                         **_hf_prompts(torch, prompts))  # fmt: skip
            tag = f"Sam2Model {what} multimask={multimask}"
            assert np.all(np.asarray(obj) > 0)  # else ours are -1024 fills, HF's are not
            assert report(f"{tag} logits", rel_err(logits, ref.pred_masks[:, 0])) <= 1e-3
            assert report(f"{tag} iou", rel_err(iou, ref.iou_scores[:, 0])) <= 1e-3
            assert rel_err(obj, ref.object_score_logits[:, 0]) <= 1e-3


def _track_hf(hf, pixels, point, bf16_memory: bool) -> dict[int, np.ndarray]:
    """transformers' video tracking of one clicked object: frame -> low-res logits."""
    import torch
    import transformers.models.sam2_video.modeling_sam2_video as video_module
    from transformers import Sam2VideoProcessor, Sam2VideoVideoProcessor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    class Float32Memory:
        """torch as the HF video module sees it, with bfloat16 meaning float32: it stores
        memory features in bfloat16 (as Meta's video predictor does), sam_jax in float32."""

        def __getattr__(self, name):
            return torch.float32 if name == "bfloat16" else getattr(torch, name)

    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": S, "width": S}),
        video_processor=Sam2VideoVideoProcessor(size={"height": S, "width": S}),
    )
    session = video_module.Sam2VideoInferenceSession(
        video=pixels, video_height=S, video_width=S, inference_device="cpu",
        video_storage_device="cpu", inference_state_device="cpu", dtype=torch.float32,
    )  # fmt: skip
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, obj_ids=1, input_points=[[[point]]], input_labels=[[[1]]]
    )
    saved = video_module.torch
    video_module.torch = saved if bf16_memory else Float32Memory()
    try:
        with torch.no_grad():
            out = {0: hf(inference_session=session, frame_idx=0).pred_masks}
            for o in hf.propagate_in_video_iterator(session):
                out[o.frame_idx] = o.pred_masks
    finally:
        video_module.torch = saved
    return {k: v.reshape(1, 1, S // 4, S // 4).float() for k, v in out.items()}


@pytest.mark.torch
def test_sam2_video_model_parity(tmp_path):
    """transformers' Sam2VideoModel: every weight is read, and 5 frames tracked from one click
    give the same masks as its own tracking."""
    import torch
    import torch.nn.functional as F
    from transformers import Sam2VideoConfig, Sam2VideoModel

    config = Sam2VideoConfig(
        vision_config=SAM2_VISION, **SAM2_HEADS, image_size=S, memory_attention_num_layers=2,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[4, 4],
    )  # fmt: skip
    hf = fill_random(Sam2VideoModel(config), seed=3)
    hf.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all weights there: no image-only warning
        model, variables = sam_jax.load(tmp_path)
    frames = np.random.RandomState(4).randint(0, 256, (5, S, S, 3)).astype(np.uint8)
    mean, std = np.array(model.config.pixel_mean), np.array(model.config.pixel_std)
    pixels = torch.from_numpy(((frames - mean) / std).astype(np.float32).transpose(0, 3, 1, 2))
    point = [20.0, 30.0]
    vp = sam_jax.VideoPredictor(model, variables, progress=False)
    state = vp.init_state(frames)
    _, _, logits = vp.add_new_points_or_box(state, 0, 1, points=np.array([point]), labels=[1])
    ours = {0: np.asarray(logits)}
    ours.update({f: np.asarray(lg) for f, _, lg in vp.propagate_in_video(state)})
    for bf16 in (False, True):
        ref = _track_hf(hf, pixels, point, bf16_memory=bf16)
        assert sorted(ref) == sorted(ours) == list(range(5))
        for f in ref:  # at frame size, upsampled as both models do (bilinear, half-pixel)
            up = F.interpolate(ref[f], size=(S, S), mode="bilinear", align_corners=False)
            err = rel_err(ours[f], up[:, 0])
            memory = "bfloat16 (transformers')" if bf16 else "float32"
            report(f"Sam2VideoModel tracking frame {f}, {memory} memory", err)
            assert err <= (1e-2 if bf16 else 1e-3)


def _hf_shapes_of(variant: str) -> dict[str, tuple]:
    """HF key -> shape of every tensor our writer gives for a variant, from shapes alone."""
    from sam_jax.convert.keymap import flax_to_torch

    flat = flatten_dict(variable_shapes(sam_jax.build(variant)))
    shapes = {  # a zero-strided view: transposed without allocating the weights
        torch_key(p[1:]): flax_to_torch(p[1:], np.broadcast_to(np.uint8(0), s.shape)).shape
        for p, s in flat.items()
    }
    names = (sam2_hf_names if variant.startswith("sam2") else sam_hf_names)(shapes)
    out = {n.key: shapes[k] for k, n in names.items() if n.row is None}
    out.update({n.key: (4, shapes[k][1]) for k, n in names.items() if n.row is not None})
    return out


@pytest.mark.torch
@pytest.mark.parametrize("variant", OFFICIAL)
def test_official_layouts(variant):
    """transformers' models as its conversion scripts configure them for Meta's checkpoints
    (built on the meta device: no memory): our config from their config.json is the variant,
    and their keys and shapes are exactly the key map's."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(**_conversion_script_config(variant))
    assert config_from_hf(config.to_dict()) == VARIANTS[variant]
    with torch.device("meta"):
        hf = AutoModel.from_config(config)
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    ours = _hf_shapes_of(variant)
    if variant.startswith("sam_"):  # tied to the model-level table, saved once
        del theirs["prompt_encoder.shared_embedding.positional_embedding"]
    else:
        ours["prompt_encoder.shared_embedding.positional_embedding"] = (2, 128)
    assert ours == theirs


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sam_tiny_shapes", "sam2_tiny_shapes"])
def test_written_folder_runs_in_transformers(bundled, name, tmp_path):
    """`sam-jax convert NAME DIR --to hf`: transformers loads DIR with nothing missing or
    left over, and its model gives our outputs."""
    import torch
    from transformers import AutoModel

    assert cli_main(["convert", name, str(tmp_path), "--to", "hf"]) == 0
    hf, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    model, variables = bundled[name]
    size = model.config.image_size
    x = _images(1, size)
    pts = np.array([[[0.3 * size, 0.6 * size]]], np.float32)
    prompts = dict(point_coords=pts, point_labels=np.ones((1, 1), np.int32))
    pixels = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref_emb = hf.get_image_embeddings(pixels)
    if name == "sam_tiny_shapes":
        logits, iou = _apply(model, variables, x, **prompts)
        with torch.no_grad():
            ref = hf(image_embeddings=ref_emb, **_hf_prompts(torch, prompts))
        ref_logits, ref_iou = ref.pred_masks[:, 0], ref.iou_scores[:, 0]
    else:  # the video model's image path: the best of the 3 masks
        logits, iou, _ = _apply(model, variables, x, **prompts)
        logits = logits[:, int(np.argmax(iou[0]))][:, None]
        with torch.no_grad():
            ref = hf._single_frame_forward(image_embeddings=ref_emb, **_hf_prompts(torch, prompts))
        ref_logits, ref_iou = ref.pred_masks, ref.iou_scores[:, 0]
    assert report(f"{name} written for transformers: logits", rel_err(logits, ref_logits)) <= 1e-3
    assert report(f"{name} written for transformers: iou", rel_err(iou, ref_iou)) <= 1e-3


@pytest.mark.torch
def test_full_size_sam_vit_base(tmp_path):
    """A sam-vit-base-shaped SamModel: read as sam_b, every tensor in place, the decoder's
    outputs equal. The full 1024-px encoder forward (about 2 min on 2 busy cores) runs when
    SAM_JAX_HF_FULL_FORWARD=1."""
    import torch
    from transformers import SamConfig, SamModel

    from sam_jax.convert.keymap import flax_to_torch

    hf = fill_random(SamModel(SamConfig(mask_decoder_config={"layer_norm_eps": 1e-5})), seed=5)
    hf.save_pretrained(tmp_path)
    model, variables = sam_jax.load(tmp_path)
    assert model.config == VARIANTS["sam_b"]
    theirs = hf.state_dict()
    names = sam_hf_names(torch_key(p[1:]) for p in flatten_dict(variables))
    for path, value in flatten_dict(variables).items():
        ref = theirs[names[torch_key(path[1:])].key].numpy()
        np.testing.assert_array_equal(flax_to_torch(path[1:], np.asarray(value)), ref)
    rng = np.random.RandomState(6)
    emb = rng.randn(1, 64, 64, 256).astype(np.float32)
    pts = np.array([[[100.0, 200.0], [700.0, 500.0]]], np.float32)
    prompts = dict(point_coords=pts, point_labels=np.array([[1, 0]], np.int32))
    if os.environ.get("SAM_JAX_HF_FULL_FORWARD") == "1":
        x = rng.randn(1, 1024, 1024, 3).astype(np.float32)
        emb = np.asarray(_apply(model, variables, x, method="encode_image"))
        with torch.no_grad():
            ref_emb = hf.get_image_embeddings(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        assert report("sam-vit-base image embeddings", rel_err(emb, _nhwc(ref_emb))) <= 1e-4
    logits, iou = _apply(model, variables, emb, **prompts, method="predict_masks")
    with torch.no_grad():
        emb_t = torch.from_numpy(emb.transpose(0, 3, 1, 2).copy())
        ref = hf(image_embeddings=emb_t, **_hf_prompts(torch, prompts))
    assert report("sam-vit-base logits", rel_err(logits, ref.pred_masks[:, 0])) <= 1e-3
    assert report("sam-vit-base iou", rel_err(iou, ref.iou_scores[:, 0])) <= 1e-3
