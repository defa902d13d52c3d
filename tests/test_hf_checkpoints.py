"""Hugging Face transformers checkpoints (SamModel, Sam2Model, Sam2VideoModel): config and key
maps, strictness, the --to hf writer, Meta training checkpoints. Parity with transformers
itself: tests/test_hf_parity.py."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

import sam_jax
from sam_jax.checkpoint import variable_shapes
from sam_jax.cli import main as cli_main
from sam_jax.config import VARIANTS
from sam_jax.convert.hf_config import config_from_hf
from sam_jax.convert.hf_keymap import sam_hf_names
from sam_jax.convert.hf_reader import is_image_only
from sam_jax.convert.hf_sam2_keymap import POINT_EMBED_KEY, is_memory_key, sam2_hf_names
from sam_jax.convert.hf_writer import config_to_hf, save_hf
from sam_jax.convert.keymap import torch_key

S = 64  # image size of the small HF models
PTS = np.array([[[10.0, 20.0], [40.0, 50.0]], [[5.0, 60.0], [33.0, 12.0]]], np.float32)
LAB = np.array([[1, 0], [1, 1]], np.int32)
BOX = np.array([[4.0, 6.0, 50.0, 40.0], [10.0, 10.0, 60.0, 62.0]], np.float32)
PROMPTS = {
    "points": dict(point_coords=PTS, point_labels=LAB),
    "box": dict(boxes=BOX),
    "points+box": dict(point_coords=PTS, point_labels=LAB, boxes=BOX),
}
HIERA = dict(
    model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1,
    blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
    num_attention_heads_per_stage=[1, 2, 4, 8], window_size_per_stage=[8, 4, 6, 3],
    global_attention_blocks=[3], image_size=[S, S],
)  # fmt: skip
SAM2_VISION = dict(
    model_type="sam2_vision_model", backbone_config=HIERA, backbone_channel_list=[128, 64, 32, 16],
    backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2, [S // 16] * 2],
)  # fmt: skip
SAM2_HEADS = dict(
    prompt_encoder_config=dict(image_size=S),
    mask_decoder_config=dict(mlp_dim=64, iou_head_hidden_dim=32),
)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (ref: an array or a torch tensor)."""
    ref = np.asarray(ref.detach().numpy() if hasattr(ref, "detach") else ref, np.float64)
    ours = np.asarray(ours, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def report(what: str, value: float) -> float:
    print(f"[hf parity] {what}: {value:.2e}")
    return value


# ------------------------------------------------------------------ torch-free: configs, maps


def _conversion_script_config(variant: str) -> dict:
    """The HF config of a variant as transformers' conversion scripts build it: only the
    fields they set (the rest are transformers' defaults)."""
    sizes = {
        "sam_b": {},
        "sam_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      global_attn_indexes=[5, 11, 17, 23]),
        "sam_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                      global_attn_indexes=[7, 15, 23, 31]),
        "sam2_t": {},
        "sam2.1_b": dict(hidden_size=112, embed_dim_per_stage=[112, 224, 448, 896],
                         num_attention_heads_per_stage=[2, 4, 8, 16], num_attention_heads=2,
                         blocks_per_stage=[2, 3, 16, 3], global_attention_blocks=[12, 16, 20],
                         window_positional_embedding_background_size=[14, 14]),
        "sam2.1_l": dict(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                         num_attention_heads_per_stage=[2, 4, 8, 16], num_attention_heads=2,
                         blocks_per_stage=[2, 6, 36, 4], global_attention_blocks=[23, 33, 43],
                         window_size_per_stage=[8, 4, 16, 8]),
    }[variant]  # fmt: skip
    if variant.startswith("sam_"):
        return {"model_type": "sam", "vision_config": sizes}
    widths = sizes.get("embed_dim_per_stage", [96, 192, 384, 768])
    vision = {"model_type": "sam2_vision_model", "backbone_channel_list": widths[::-1],
              "backbone_config": {"model_type": "sam2_hiera_det_model", **sizes}}  # fmt: skip
    v21 = variant.startswith("sam2.1")
    return {
        "model_type": "sam2_video", "vision_config": vision,
        "enable_temporal_pos_encoding_for_object_pointers": v21,
        "enable_occlusion_spatial_embedding": v21,
    }  # fmt: skip


OFFICIAL = ["sam_b", "sam_l", "sam_h", "sam2_t", "sam2.1_b", "sam2.1_l"]


@pytest.mark.parametrize("variant", OFFICIAL)
def test_config_json_names_the_variants(variant):
    hf = _conversion_script_config(variant)
    assert config_from_hf(hf) == VARIANTS[variant]
    assert config_from_hf(config_to_hf(VARIANTS[variant])) == VARIANTS[variant]  # the writer's


def test_config_json_defaults_and_custom_models():
    assert config_from_hf({"model_type": "sam2"}).name == "sam2_t"  # image model: 2.0 memory
    custom = config_from_hf({"model_type": "sam", "vision_config": {"num_hidden_layers": 4}})
    assert (custom.name, custom.encoder.depth) == ("custom", 4)


@pytest.mark.parametrize(
    "hf, match",
    [
        ({"model_type": "sam", "vision_config": {"use_rel_pos": False}}, "use_rel_pos"),
        ({"model_type": "sam", "prompt_encoder_config": {"image_size": 512}}, "image sizes"),
        ({"model_type": "sam2_video", "max_cond_frame_num": 2}, "max_cond_frame_num"),
        (
            {"model_type": "sam2", "vision_config": {"backbone_config": {"hidden_size": 64}}},
            "embed_dim_per_stage",
        ),
        ({"model_type": "clip"}, "model_type 'clip'"),
    ],
)
def test_config_json_settings_sam_jax_lacks_are_named(hf, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf(hf)


@pytest.mark.parametrize("variant", ["sam_b", "sam2.1_b"])
def test_key_map_is_one_to_one(variant):
    """Distinct variables never share an HF key (SAM 2's stacked point embeddings aside)."""
    keys = [torch_key(p[1:]) for p in flatten_dict(variable_shapes(sam_jax.build(variant)))]
    names = (sam2_hf_names if variant.startswith("sam2") else sam_hf_names)(keys)
    single = [n.key for n in names.values() if n.row is None]
    assert len(single) == len(set(single))
    rows = sorted(n.row for n in names.values() if n.key == POINT_EMBED_KEY)
    assert rows == ([0, 1, 2, 3] if variant.startswith("sam2") else [])


def test_mobile_sam_has_no_hf_layout():
    with pytest.raises(ValueError, match="TinyViT"):
        config_to_hf(VARIANTS["mobile_sam"])


# ------------------------------------------------------ torch-free: the reader and the writer


@pytest.fixture(scope="module")
def bundled():
    return {name: sam_jax.load(name) for name in ("sam_tiny_shapes", "sam2_tiny_shapes")}


def assert_same_variables(a, b):
    fa, fb = flatten_dict(a), flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.mark.parametrize("name", ["sam_tiny_shapes", "sam2_tiny_shapes"])
def test_hf_folder_round_trip(bundled, name, tmp_path):
    model, variables = bundled[name]
    if name.startswith("sam2"):
        with pytest.warns(UserWarning, match="in_window"):  # transformers has no such policy
            save_hf(tmp_path / "hf", model, variables)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            save_hf(tmp_path / "hf", model, variables)
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    model2, variables2 = sam_jax.load(tmp_path / "hf")
    assert_same_variables(variables, variables2)
    if name == "sam_tiny_shapes":
        assert model2.config == model.config
    # The .safetensors file alone: the variant comes from the shapes.
    (tmp_path / "alone").mkdir()
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "alone" / "weights.safetensors")
    model3, variables3 = sam_jax.load(tmp_path / "alone" / "weights.safetensors")
    assert model3.config.name == name
    assert_same_variables(variables, variables3)


@pytest.fixture()
def sam_folder(bundled, tmp_path):
    save_hf(tmp_path / "hf", *bundled["sam_tiny_shapes"])
    return tmp_path / "hf"


def _edit(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), {"format": "pt"})


def test_missing_and_unused_hf_keys_are_named(sam_folder):
    def edit(t):
        del t["mask_decoder.iou_token.weight"]
        t["extra"] = np.zeros(3, np.float32)

    _edit(sam_folder, edit)
    with pytest.raises(ValueError, match=r"(?s)1 model variable.*iou_token\.weight \(1, 128\)"
                       r".*1 checkpoint key.*extra \(3,\)"):  # fmt: skip
        sam_jax.load(sam_folder)


def test_misshapen_hf_key_is_named_with_both_shapes(sam_folder):
    qkv = "vision_encoder.layers.0.attn.qkv.weight"
    _edit(sam_folder, lambda t: t.update({qkv: np.zeros((384, 64), np.float32)}))
    with pytest.raises(ValueError, match=r"qkv\.weight.*\(384, 64\).*\(384, 128\)"):
        sam_jax.load(sam_folder)


def test_prompt_encoder_copy_must_equal_the_shared_table(sam_folder):
    alias = "prompt_encoder.shared_embedding.positional_embedding"
    shared = "shared_image_embedding.positional_embedding"
    _edit(sam_folder, lambda t: t.update({alias: t[shared]}))
    sam_jax.load(sam_folder)  # older files hold both copies, equal
    _edit(sam_folder, lambda t: t.update({alias: t[shared] + 1}))
    with pytest.raises(ValueError, match="hold different values"):
        sam_jax.load(sam_folder)


def test_bfloat16_hf_file(bundled, sam_folder):
    """Tensors in a dtype numpy lacks are read too (and returned as float32)."""
    import jax.numpy as jnp
    from safetensors.flax import save_file as save_flax

    path = sam_folder / "model.safetensors"
    half = {k: jnp.asarray(v, jnp.bfloat16) for k, v in load_file(str(path)).items()}
    save_flax(half, str(path), {"format": "pt"})
    _, variables = sam_jax.load(sam_folder)
    want = flatten_dict(bundled["sam_tiny_shapes"][1])
    for k, v in flatten_dict(variables).items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, np.asarray(jnp.asarray(want[k], jnp.bfloat16), np.float32))


def test_image_only_sam2_file(bundled, tmp_path):
    """An HF Sam2Model file: the image model works, the memory path is NaN (and said so)."""
    model, variables = bundled["sam2_tiny_shapes"]
    with pytest.warns(UserWarning):
        save_hf(tmp_path / "full", model, variables)
    tensors = load_file(str(tmp_path / "full" / "model.safetensors"))
    names = sam2_hf_names(torch_key(p[1:]) for p in flatten_dict(variables))
    memory = {n.key for k, n in names.items() if is_memory_key(k)}
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "config.json").write_text(json.dumps({**config, "model_type": "sam2"}))
    image = {k: v for k, v in tensors.items() if k not in memory}
    save_file(image, str(tmp_path / "image" / "model.safetensors"), {"format": "pt"})
    with pytest.warns(UserWarning, match="image-only SAM 2 checkpoint"):
        model2, variables2 = sam_jax.load(tmp_path / "image")
    assert is_image_only(variables2) and not is_image_only(variables)
    x = np.random.RandomState(0).randn(1, 256, 256, 3).astype(np.float32)
    pts, lab = np.array([[[100.0, 90.0]]], np.float32), np.ones((1, 1), np.int32)
    ours = [m.apply(v, x, point_coords=pts, point_labels=lab) for m, v in
            ((model, variables), (model2, variables2))]  # fmt: skip
    for a, b in zip(*ours, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="image-only file"):
        sam_jax.VideoPredictor(model2, variables2)
    save_hf(tmp_path / "back", model2, variables2)  # written back as a Sam2Model
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "sam2"
    partial = {**image, "no_object_pointer": tensors["no_object_pointer"]}
    save_file(partial, str(tmp_path / "image" / "model.safetensors"), {"format": "pt"})
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        sam_jax.load(tmp_path / "image")


def test_cli_to_hf(bundled, tmp_path, capsys):
    assert cli_main(["convert", "sam_tiny_shapes", str(tmp_path / "out"), "--to", "hf"]) == 0
    assert_same_variables(sam_jax.load(tmp_path / "out")[1], bundled["sam_tiny_shapes"][1])
    assert cli_main(["convert", "sam_tiny_shapes", str(tmp_path / "out")]) == 1
    assert "--to hf" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli_main(["convert", "sam_tiny_shapes", str(tmp_path / "file"), "--to", "hf"]) == 1
    assert "writes a folder" in capsys.readouterr().err


# --------------------------------------------------------- Meta training checkpoints (torch)


@pytest.mark.torch
def test_meta_training_checkpoint_reads_the_model(bundled, tmp_path):
    """{"model", "optimizer", "epoch", ...} as Meta's SAM 2 trainer saves: the weights are
    read, the rest named in one warning."""
    import torch

    from sam_jax.convert.export import export_torch

    model, variables = bundled["sam2_tiny_shapes"]
    export_torch(tmp_path / "plain.pt", model, variables)
    sd = torch.load(tmp_path / "plain.pt", weights_only=True)["model"]
    params = [
        torch.nn.Parameter(sd["no_obj_ptr"].clone()),
        torch.nn.Parameter(sd["no_mem_embed"].clone()),
    ]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    checkpoint = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "loss": torch.nn.Module().state_dict(),
        "steps": {"train": 120, "val": 0},
        "time_elapsed": 812.5,
        "best_meter_values": {},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    ignored = "best_meter_values, epoch, loss, optimizer, scaler, steps, time_elapsed"
    with pytest.warns(UserWarning, match=f"ignored {ignored}$") as record:
        model2, variables2 = sam_jax.load(tmp_path / "checkpoint.pt")
    assert len([r for r in record if r.category is UserWarning]) == 1
    assert model2.config.name == "sam2_tiny_shapes"
    assert_same_variables(variables, variables2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bare {"model": ...} file reads silently
        sam_jax.load(tmp_path / "plain.pt")
