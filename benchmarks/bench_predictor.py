"""Image predictor speed: sam_jax.Predictor against ultralytics' SAM Predictor, same weights.

    python benchmarks/bench_predictor.py                       # sam_b, predict at 1024,
                                                               # generate at 512, 16x16 points
    python benchmarks/bench_predictor.py --gen-size 1024 --points-per-side 32

Weights are random (no real checkpoint can be downloaded here): every parameter of an
ultralytics SAMModel is filled with seeded noise and converted. The IoU head's last bias is
raised by 0.5 and the generate thresholds are lowered (pred_iou 0, stability 0.6 at offset
0.1, box NMS 1.0) so that masks pass every stage of segment-everything in both pipelines, as
real weights would make them do; with the default thresholds random masks are all dropped
early, which would measure less of the pipeline.

Both libraries run in the same process on the same CPU threads, measurements interleaved
(one call of each per round) so that load from other processes hits both alike; the median
and the minimum over the rounds are reported. Compilation (JAX) is done before timing.

predict: one click after set_image, multimask output, masks at the original size.
  ultralytics: `predictor(points=..., labels=..., multimask_output=True)` (its per-prompt
  call) and also its lower-level `inference_features` (no Results objects).
generate: the whole segment-everything run on one image, encoder included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.reference


def build_pair(variant: str, size: int, seed: int = 0):
    """(ultralytics SAMModel with random weights, our model, our variables) at input size."""
    import torch

    from sam_jax.checkpoint import build_from_config, variable_shapes
    from sam_jax.config import variant_config
    from sam_jax.convert.keymap import state_dict_to_variables
    from tests.reference import build_reference_sam, build_reference_vit, randomize_

    cfg = variant_config(variant, size)
    ref = randomize_(build_reference_sam(build_reference_vit(cfg.encoder), size), seed=seed)
    with torch.no_grad():
        ref.mask_decoder.iou_prediction_head.layers[-1].bias += 0.5
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    return ref, model, state_dict_to_variables(sd, variable_shapes(model))


def ref_predictor(ref, size: int, **overrides):
    from ultralytics.models.sam.predict import Predictor

    args = dict(imgsz=size, device="cpu", conf=0.0, verbose=False, save=False, **overrides)
    p = Predictor(overrides=args)
    p.setup_model(ref, verbose=False)
    return p


def interleaved(fns: dict, rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds of each call: per round, each function `calls` times in a row, in turn.

    With calls > 1 the median is a user's steady state (one library called repeatedly);
    the first call after the other library ran also pays for that library's threads and
    evicted caches, and each block still sees the same outside load as its neighbours."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def report(times: dict[str, list[float]], unit: float = 1e3, suffix: str = "ms") -> None:
    for name, ts in times.items():
        print(
            f"  {name:<44s} median {statistics.median(ts) * unit:9.1f} {suffix}"
            f"   min {min(ts) * unit:9.1f} {suffix}"
        )


def ratio(times, slow: str, fast: str) -> str:
    med = statistics.median(times[slow]) / statistics.median(times[fast])
    best = min(times[slow]) / min(times[fast])
    return f"{slow} / {fast}: {med:.2f}x (median), {best:.2f}x (min)"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", default="sam_b")
    ap.add_argument("--size", type=int, default=1024, help="model input size for predict")
    ap.add_argument("--gen-size", type=int, default=512, help="model input size for generate")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15, help="predict rounds")
    ap.add_argument(
        "--calls", type=int, default=5, help="predict calls in a row per library and round"
    )
    ap.add_argument("--gen-rounds", type=int, default=2, help="generate rounds")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    args = ap.parse_args()

    import jax
    import torch

    from sam_jax.predictors.image import Predictor

    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[: args.height, : args.width]
    image[(yy - args.height / 2) ** 2 + (xx - args.width / 3) ** 2 < (args.height / 4) ** 2] = (
        200,
        40,
        30,
    )
    bgr = np.ascontiguousarray(image[..., ::-1])
    h, w = image.shape[:2]

    if not args.skip_predict:
        s = args.size
        print(f"\npredict: {args.variant} at {s} px, image {w}x{h}")
        ref, model, params = build_pair(args.variant, s)
        ours, up = Predictor(model, params), ref_predictor(ref, s)
        t = time.perf_counter()
        ours.set_image(image)
        jax.block_until_ready(ours.get_image_embedding())
        t_compile = time.perf_counter() - t
        enc = interleaved(
            {
                "sam_jax set_image": lambda: jax.block_until_ready(
                    (ours.set_image(image), ours.get_image_embedding())[1]
                ),
                "ultralytics set_image": lambda: up.set_image(bgr),
            },
            rounds=2,
        )
        print(f"  (sam_jax first set_image, compilation included: {t_compile:.1f} s)")
        report(enc, 1.0, "s")
        point, label = np.array([[w * 0.4, h * 0.5]]), np.array([1])
        k = 16
        pts_k = rng.uniform(0, 1, (k, 1, 2)) * [w, h]
        ours.predict(point, label)  # compile
        ours.predict(pts_k, np.ones((k, 1)))
        times = interleaved(
            {
                "sam_jax predict (1 point)": lambda: ours.predict(point, label),
                "ultralytics __call__ (1 point)": lambda: up(
                    points=point, labels=label, multimask_output=True
                ),
                "ultralytics inference_features (1 point)": lambda: up.inference_features(
                    up.features, (h, w), (s, s), points=point, labels=label, multimask_output=True
                ),
                f"sam_jax predict ({k} prompts, one batch)": lambda: ours.predict(
                    pts_k, np.ones((k, 1))
                ),
                f"ultralytics inference_features ({k} prompts)": lambda: up.inference_features(
                    up.features,
                    (h, w),
                    (s, s),
                    points=pts_k,
                    labels=np.ones((k, 1)),
                    multimask_output=True,
                ),
            },
            rounds=args.rounds,
            calls=args.calls,
        )
        report(times)
        print("  " + ratio(times, "ultralytics __call__ (1 point)", "sam_jax predict (1 point)"))
        print(
            "  "
            + ratio(times, "ultralytics inference_features (1 point)", "sam_jax predict (1 point)")
        )
        print(
            "  "
            + ratio(
                times,
                f"ultralytics inference_features ({k} prompts)",
                f"sam_jax predict ({k} prompts, one batch)",
            )
        )
        del ours, up, ref, model, params

    if not args.skip_generate:
        s = args.gen_size
        gen = dict(
            pred_iou_thresh=0.0,
            stability_score_thresh=0.6,
            stability_score_offset=0.1,
            box_nms_thresh=1.0,
        )
        print(
            f"\ngenerate: {args.variant} at {s} px, image {w}x{h}, {args.points_per_side}^2 points, "
            f"batches of 64, {gen}"
        )
        ref, model, params = build_pair(args.variant, s)
        ours, up = Predictor(model, params), ref_predictor(ref, s, iou=gen["box_nms_thresh"])
        t = time.perf_counter()
        n_ours = len(ours.generate(image, points_per_side=args.points_per_side, **gen))
        print(f"  (sam_jax first generate, compilation included: {time.perf_counter() - t:.1f} s)")
        counts = {}

        def run_ref():
            res = up(
                source=bgr,
                points_stride=args.points_per_side,
                conf_thres=gen["pred_iou_thresh"],
                stability_score_thresh=gen["stability_score_thresh"],
                stability_score_offset=gen["stability_score_offset"],
            )[0]
            counts["ultralytics"] = 0 if res.masks is None else len(res.masks)

        times = interleaved(
            {
                "sam_jax generate": lambda: ours.generate(
                    image, points_per_side=args.points_per_side, **gen
                ),
                "ultralytics generate": run_ref,
            },
            rounds=args.gen_rounds,
        )
        print(f"  masks: sam_jax {n_ours}, ultralytics {counts['ultralytics']}")
        report(times, 1.0, "s")
        print("  " + ratio(times, "ultralytics generate", "sam_jax generate"))


if __name__ == "__main__":
    main()
