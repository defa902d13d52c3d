"""Full-size SAM 2 parity at 1024 px, every weight random: max |ours - ref| / max |ref|.

    python benchmarks/parity_sam2.py sam2_t sam2.1_l ...   (default: all eight)

Each variant is built in ultralytics, randomised, saved as the official files are
({"model": state_dict}), loaded with `sam_jax.load` (variant detected from the keys), and
compared on the FPN levels, their position encodings and the SAM heads (box + clicks,
multimask on and off). The torch model is dropped before JAX runs, to bound memory.
"""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sam_jax  # noqa: E402
from sam_jax.config import VARIANTS  # noqa: E402
from tests.reference import nchw, randomize_, rel_err, to_nchw  # noqa: E402
from tests.reference_sam2 import build_reference_sam2  # noqa: E402

HEADS = ("low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks",
         "high_res_masks", "obj_ptr", "object_score_logits")  # fmt: skip


def parity(name: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    coords = np.array([[[100.0, 200.0], [812.0, 640.0], [300.0, 420.0], [700.0, 900.0]]])
    coords = coords.astype(np.float32)
    labels = np.array([[2, 3, 1, 0]], np.int32)

    ref = randomize_(build_reference_sam2(VARIANTS[name]), seed=0)
    with torch.no_grad():
        # Random weights put the object score near 0; a score <= 0 would replace every mask
        # logit by -1024 and hide the masks from the comparison, so make "object" sure.
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 10.0
        rout = ref.forward_image(to_nchw(images))
        emb = rout["vision_features"] + ref.no_mem_embed.view(1, -1, 1, 1)
        points = {
            "point_coords": torch.from_numpy(coords),
            "point_labels": torch.from_numpy(labels),
        }
        theirs = {
            mm: [o.numpy() for o in ref._forward_sam_heads(emb, points, None, rout["backbone_fpn"][:2], mm)]
            for mm in (True, False)
        }  # fmt: skip
    fpn = [nchw(x) for x in rout["backbone_fpn"]]
    pos = [nchw(x) for x in rout["vision_pos_enc"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        torch.save({"model": ref.state_dict()}, path)
        del ref, rout, emb
        gc.collect()
        model, params = sam_jax.load(path)
    assert model.config.name == name, model.config.name
    params = jax.device_put(params)  # one copy of the weights, owned by JAX
    gc.collect()

    feats = jax.jit(lambda p, x: model.apply(p, x, method="encode_image"))(params, images)
    errs = {}
    for i in range(3):
        errs[f"fpn{i}"] = rel_err(feats["backbone_fpn"][i], fpn[i])
        errs[f"pos{i}"] = rel_err(feats["vision_pos_enc"][i], pos[i])

    def heads(p, f, mm):
        e = f["vision_features"] + p["params"]["no_mem_embed"].reshape(1, 1, 1, -1)
        return model.apply(p, e, coords, labels, None, f["high_res_features"], mm,
                           method="forward_sam_heads")  # fmt: skip

    run = jax.jit(heads, static_argnums=2)
    for mm in (True, False):
        for key, a, b in zip(HEADS, run(params, feats, mm), theirs[mm], strict=True):
            errs[f"{key}[mm={int(mm)}]"] = rel_err(a, b)
    return errs


def main() -> None:
    names = sys.argv[1:] or [n for n in VARIANTS if n.startswith("sam2")]
    for name in names:
        errs = parity(name)
        feat = max(v for k, v in errs.items() if k.startswith(("fpn", "pos")))
        logit = max(v for k, v in errs.items() if "masks" in k)
        other = max(
            v for k, v in errs.items() if not k.startswith(("fpn", "pos")) and "masks" not in k
        )
        print(
            f"{name:<9} features/pos {feat:.2e}  mask logits {logit:.2e}  iou/ptr/score {other:.2e}"
        )
        print("          " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
