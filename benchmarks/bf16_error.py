"""bfloat16 computation against float32: logit error and mask agreement.

    python benchmarks/bf16_error.py           # the reduced parity configs (about a minute)
    python benchmarks/bf16_error.py --full    # also sam_b, mobile_sam and sam2.1_t at 1024 px

Both models share one set of seeded random variables (tests/tiny_configs.random_variables:
kernels ~ N(0, 1/fan_in)) and random images and prompts; the bf16 model is
`sam_jax.build(name, dtype=jnp.bfloat16)`. Printed per model: max relative errors
(max |bf16 - f32| / max |f32|) of the image embedding, the mask logits, the IoU predictions
(and SAM 2's object scores, memory encoder and memory attention), and the pooled IoU of the
masks (logits > 0). SAM 2 logits are compared where both models keep the mask (object
score > 0). Numbers only; no timings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam_jax.config import variant_config  # noqa: E402
from tests.test_dtype import CASES, bf16_vs_f32  # noqa: E402

FULL = ("sam_b", "mobile_sam", "sam2.1_t")
KEYS = (
    "encoder",
    "logits",
    "iou",
    "mask_iou",
    "object_score",
    "memory_encoder",
    "memory_attention",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="add " + ", ".join(FULL) + " at 1024")
    args = parser.parse_args()
    cases = [(f"reduced {k} ({v.image_size} px, B=2)", v, 2) for k, v in CASES.items()]
    if args.full:
        cases += [(f"{name} (1024 px, B=1)", variant_config(name, 1024), 1) for name in FULL]
    print(f"{'model':<34}" + "".join(f"{k:>17}" for k in KEYS))
    for label, cfg, batch in cases:
        res = bf16_vs_f32(cfg, batch=batch)
        assert res["dtypes"] == ["float32"] and res["params_f32"], res
        cells = "".join(
            f"{res[k]:>17.4f}"
            if k == "mask_iou"
            else f"{res[k]:>17.2e}"
            if k in res
            else f"{'-':>17}"
            for k in KEYS
        )
        agree = "" if res.get("score_sign_agrees", True) else "  (object-score signs differ)"
        print(f"{label:<34}{cells}{agree}", flush=True)


if __name__ == "__main__":
    main()
