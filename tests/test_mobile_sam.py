"""MobileSAM: TinyViT encoder parity with ultralytics, conversion, detection and export.

Every parameter and BatchNorm running statistic of the reference is randomised
(tests/reference.py `randomize_`), so layout or indexing bugs cannot hide behind zeros.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

import sam_jax  # noqa: E402
from sam_jax.checkpoint import variable_shapes  # noqa: E402
from sam_jax.config import SamConfig, TinyViTConfig  # noqa: E402
from sam_jax.convert.detect import detect_variant  # noqa: E402
from sam_jax.convert.export import export_torch  # noqa: E402
from sam_jax.convert.keymap import flax_to_torch, state_dict_to_variables, torch_key  # noqa: E402
from sam_jax.models.sam import Sam  # noqa: E402
from sam_jax.models.tiny_vit import TinyViT, attention_bias_index  # noqa: E402
from tests.tiny_configs import SMALL_TINY_VIT  # noqa: E402

try:  # tests/ may or may not be a package, depending on how pytest is pointed at it
    from tests.reference import build_reference_sam, nchw, randomize_, rel_err, to_nchw
except ImportError:  # pragma: no cover
    from reference import build_reference_sam, nchw, randomize_, rel_err, to_nchw

ENC_TOL = 1e-4
MASK_TOL = 1e-3
# torch nn.Parameters of mobile_sam.pt (header of reference/state_dict_keys/mobile_sam.txt);
# the 'params' collection holds exactly those (buffers and BatchNorm statistics live apart).
MOBILE_SAM_TORCH_PARAMS = 10_130_092

SMALL = SMALL_TINY_VIT  # reduced TinyViT for speed (tests/tiny_configs.py)


def reference_tiny_vit(cfg: TinyViTConfig) -> torch.nn.Module:
    """ultralytics TinyViT for a sam_jax TinyViTConfig, built at 1024 like the real one."""
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    return TinyViT(
        img_size=1024,
        in_chans=3,
        num_classes=cfg.num_classes,
        embed_dims=list(cfg.embed_dims),
        depths=list(cfg.depths),
        num_heads=list(cfg.num_heads),
        window_sizes=list(cfg.window_sizes),
        mlp_ratio=cfg.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        mbconv_expand_ratio=cfg.mbconv_expand_ratio,
        local_conv_size=cfg.local_conv_size,
        layer_lr_decay=0.8,
    )


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def torch_masks(ref, emb: torch.Tensor, coords, labels, boxes) -> np.ndarray:
    """Low-res multimask logits (B, 3, S/4, S/4); the reference decoder takes one image."""
    out = []
    with torch.no_grad():
        for b in range(emb.shape[0]):
            sparse, dense = ref.prompt_encoder(
                points=(torch.from_numpy(coords[b : b + 1]), torch.from_numpy(labels[b : b + 1])),
                boxes=torch.from_numpy(boxes[b : b + 1]),
                masks=None,
            )
            masks, _ = ref.mask_decoder(
                image_embeddings=emb[b : b + 1],
                image_pe=ref.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            out.append(masks.numpy())
    return np.concatenate(out)


def prompts(batch: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, size, (batch, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0]] * batch, np.int32)
    lo = rng.uniform(0, size / 2, (batch, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(16, size / 2, (batch, 2))], 1).astype(np.float32)
    return coords, labels, boxes


def test_attention_bias_index_matches_first_appearance_order() -> None:
    """The closed form equals the reference's numbering of offsets by first appearance."""
    for ws in (1, 3, 7):
        pts = [(i, j) for i in range(ws) for j in range(ws)]
        seen: dict[tuple[int, int], int] = {}
        idx = [
            seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen))
            for a in pts
            for b in pts
        ]
        np.testing.assert_array_equal(attention_bias_index(ws).ravel(), idx)


@pytest.mark.torch
@pytest.mark.parametrize("size", [256, 512])
def test_small_tiny_vit_parity(size: int) -> None:
    """Encoder features and mask logits of a reduced TinyViT SAM, at sizes set via set_imgsz."""
    ref = build_reference_sam(reference_tiny_vit(SMALL), image_size=size)
    randomize_(ref, seed=size)
    model = Sam(SamConfig(encoder=SMALL, image_size=size))
    variables = state_dict_to_variables(numpy_state_dict(ref), variable_shapes(model))

    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        ref_emb = ref.image_encoder(to_nchw(x))
    emb = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))(variables, x)
    assert emb.shape == (2, size // 16, size // 16, 256)
    err = rel_err(emb, nchw(ref_emb))
    print(f"small TinyViT S={size}: encoder rel err {err:.2e}")
    assert err <= ENC_TOL

    coords, labels, boxes = prompts(2, size, seed=1)
    ours, _ = jax.jit(
        lambda v, e: model.apply(
            v, e, point_coords=coords, point_labels=labels, boxes=boxes, method="predict_masks"
        )
    )(variables, emb)
    # Both decoders get the reference's embeddings, so this isolates the SAM head; the
    # end-to-end figure is checked on the full model below.
    err_m = rel_err(ours, torch_masks(ref, ref_emb, coords, labels, boxes))
    print(f"small TinyViT S={size}: mask logits rel err {err_m:.2e}")
    assert err_m <= MASK_TOL


@pytest.fixture(scope="module")
def mobile_sam_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """The full-size reference MobileSAM, randomised and saved as the real file is saved."""
    from ultralytics.models.sam.build import build_mobile_sam

    ref = randomize_(build_mobile_sam(), seed=7)
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.mark.torch
def test_mobile_sam_convert_and_parity(mobile_sam_file, tmp_path: Path) -> None:
    path, ref = mobile_sam_file
    model, variables = sam_jax.load(path)  # the variant is detected from keys and shapes
    assert model.config.name == "mobile_sam"

    # Conversion: every file key has a place (BatchNorm counters aside) with its shape.
    sd = numpy_state_dict(ref)
    assert detect_variant(sd) == "mobile_sam"
    flat = flatten_dict(variables)
    listing = (Path(__file__).parent / "data" / "state_dict_keys" / "mobile_sam.txt").read_text()
    want = {
        key: tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        for key, shape, _ in (line.split("\t") for line in listing.splitlines()[1:])
    }
    assert {k: v.shape for k, v in sd.items()} == want  # the real file's 439 keys and shapes
    keys = {torch_key(p[1:]) for p in flat}
    assert keys == {k for k in sd if not k.endswith("num_batches_tracked")}
    for p, value in flat.items():  # every value came from its key, layout fixed
        np.testing.assert_array_equal(flax_to_torch(p[1:], np.asarray(value)), sd[torch_key(p[1:])])
    n_params = sum(v.size for p, v in flat.items() if p[0] == "params")
    assert n_params == MOBILE_SAM_TORCH_PARAMS
    n_stats = sum(v.size for p, v in flat.items() if p[0] == "batch_stats")
    assert n_stats == sum(v.size for k, v in sd.items() if ".running_" in k)

    # Parity at 1024: encoder features, then mask logits from our own embeddings.
    x = np.random.default_rng(3).standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    with torch.no_grad():
        ref_emb = ref.image_encoder(to_nchw(x))
    encode = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))
    emb = encode(variables, x)
    err = rel_err(emb, nchw(ref_emb))
    print(f"mobile_sam S=1024: encoder rel err {err:.2e}")
    assert err <= ENC_TOL

    coords, labels, boxes = prompts(1, 1024, seed=4)
    ours, _ = jax.jit(
        lambda v, e: model.apply(
            v, e, point_coords=coords, point_labels=labels, boxes=boxes, method="predict_masks"
        )
    )(variables, emb)
    err_m = rel_err(ours, torch_masks(ref, ref_emb, coords, labels, boxes))
    print(f"mobile_sam S=1024: mask logits rel err (end to end) {err_m:.2e}")
    assert err_m <= MASK_TOL

    # Export round trip: our file loads strictly into the reference, bit for bit, head too.
    from ultralytics.models.sam.build import build_mobile_sam

    out = tmp_path / "exported.pt"
    export_torch(out, model, variables)
    back = build_mobile_sam()
    back.load_state_dict(torch.load(out, weights_only=True), strict=True)
    back.eval()  # the reference caches its attention biases when switched to eval
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    with torch.no_grad():
        assert torch.equal(back.image_encoder(to_nchw(x)), ref_emb)


def test_mobile_sam_init_creates_everything() -> None:
    """init_everything creates params and batch stats matching the checkpoint layout."""
    model = sam_jax.build("mobile_sam", image_size=256)
    shapes = variable_shapes(model)
    assert {"params", "batch_stats"} <= set(shapes)
    enc = shapes["params"]["image_encoder"]
    assert enc["head"]["kernel"].shape == (320, 1000)
    assert enc["layers_1"]["blocks_0"]["attn"]["attention_biases"].shape == (4, 49)
    bn = shapes["batch_stats"]["image_encoder"]["layers_0"]["blocks_0"]["conv1"]["bn"]
    assert bn["mean"].shape == bn["var"].shape == (256,)


def test_remat_is_applied_and_harmless() -> None:
    """remat=True puts the blocks under jax.checkpoint and computes the same function.
    Also: num_classes=0 leaves only norm_head, as the reference's head is then an Identity.
    (Gradients are not compiled here: that alone would take most of this file's budget.)"""
    cfg = TinyViTConfig(
        embed_dims=(8, 16, 16, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 2, 2),
        window_sizes=(7, 3, 3, 3),
        num_classes=0,
    )
    plain, remat = TinyViT(cfg), TinyViT(cfg, remat=True)
    x = np.random.default_rng(5).standard_normal((1, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(plain.init, jax.random.key(0), x)
    assert "norm_head" in shapes["params"] and "head" not in shapes["params"]
    rng = np.random.default_rng(6)
    variables = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape, np.float32), shapes)

    def checkpoints(m: TinyViT) -> int:
        jaxpr = jax.make_jaxpr(jax.grad(lambda v: m.apply(v, x).sum()))(variables)
        return str(jaxpr).count("checkpoint") + str(jaxpr).count("remat")

    assert checkpoints(plain) == 0 and checkpoints(remat) > 0
    both = jax.jit(lambda v: (plain.apply(v, x), remat.apply(v, x)))(variables)
    np.testing.assert_allclose(*both, rtol=1e-6, atol=1e-6)


def test_detect_rejects_unknown_tiny_vit() -> None:
    """A TinyViT file with other widths is recognised as TinyViT but fits no variant."""
    sd = {
        "image_encoder.patch_embed.seq.2.c.weight": np.zeros((96, 48, 3, 3), np.float32),
        "image_encoder.layers.0.blocks.0.conv1.c.weight": np.zeros((384, 96, 1, 1)),
    }
    with pytest.raises(ValueError, match="TinyViTConfig"):
        detect_variant(sd)


def test_config_json_round_trip() -> None:
    """The config written into .safetensors metadata reads back as the same TinyViT config."""
    from sam_jax.config import VARIANTS
    from sam_jax.config_json import config_from_json, config_to_json

    cfg = VARIANTS["mobile_sam"]
    assert config_from_json(config_to_json(cfg)) == cfg
