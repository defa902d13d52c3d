"""One-shot accelerator benchmark: encoder, prompt and video throughput in float32 and bf16,
and the real peak device memory of the train steps. Random weights; torch is never imported.

    python benchmarks/device_bench.py [--budget 420] [--only sam_b t_full ...]
    python benchmarks/device_bench.py --quick    # tiny models, small images: checks the code

Launch on a lent GPU through benchmarks/device.sh (its header says how). Jobs, in order:
  infer sam_b, infer sam2.1_t: for float32 and bf16 (`build(..., dtype=)`), the image encoder
    at 1024 px (images/s, batch 1 and 8), `predict_masks` from a cached embedding (ms, 1 and
    16 prompts, one click each, the embedding broadcast to the prompts inside the jit as the
    Predictor does) and, for sam2.1_t, `VideoPredictor.propagate_in_video` frames/s (one
    clicked object on a synthetic video, logits at the original size on the host included);
  train t_full, t_decoder_accum, l_clip_frozen, l_clip_all (benchmarks/train_memory.py's
    cases with attention "auto"): one real step on random inputs, then peak_bytes_in_use.
Times are medians of a few runs after a warm-up call (which also compiles), each result
waited for (block_until_ready, or host arrays).

Every job runs in its own subprocess: each train step's peak_bytes_in_use then starts from a
fresh allocator, and a job that fails (out of memory, a crash) or runs past its time leaves
the next ones running. The parent never initialises a JAX backend, so the children get the
whole device. Each job gets min(its cap, what is left of --budget) seconds; when too little
is left it is skipped with a note. Results are printed and written as JSON to
$OUT/device_results.json (or --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

GiB = 2**30
INFER_JOBS = ("sam_b", "sam2.1_t")
TRAIN_JOBS = ("t_full", "t_decoder_accum", "l_clip_frozen", "l_clip_all")
# Seconds a job may take at most (compiles included); the budget may cut it shorter.
CAPS = {"sam_b": 100, "sam2.1_t": 150, "t_full": 60, "t_decoder_accum": 60}
CAPS |= {"l_clip_frozen": 140, "l_clip_all": 110}  # l_clip_frozen draws sam2.1_l's weights
BUDGET_S = 420.0  # default seconds for all the jobs: device.sh's 480 s call, less margin
MIN_JOB_S = 30  # a job is not started with less left than this
# --quick checks the code on CPU, where even the tiny train steps can outlast the GPU run's
# caps (their compiles run on a few CPU cores): its caps and default budget are this many
# times the GPU run's, so the check reaches every job.
QUICK_SCALE = 3
CASE_MARGIN_S = 8  # inside a job, no new case starts this close to its deadline
CPU_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sizes:
    """What the inference job measures; `QUICK` keeps the same code paths at toy sizes."""

    batches: tuple[int, ...] = (1, 8)
    prompts: tuple[int, ...] = (1, 16)
    runs: int = 5
    video_frames: int = 24
    chunk: int = 8
    video_runs: int = 2


FULL, QUICK = Sizes(), Sizes(runs=2, video_frames=8, chunk=4, video_runs=1)


# ------------------------------------------------------------------ child: shared parts


def emit(path: str, **record: Any) -> None:
    """Append one result record to the job's JSON-lines file (flushed: the parent reads what
    was written even when it had to kill the job)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def tiny_sam_config() -> Any:
    """A two-block ViT SAM at 64 px (quick mode's stand-in for sam_b)."""
    from tests.tiny_configs import TINY_SAM

    return TINY_SAM


def infer_config(name: str, quick: bool) -> Any:
    from sam_jax.config import variant_config

    if not quick:
        return variant_config(name)
    from tests.tiny_configs import TINY2

    return TINY2 if name.startswith("sam2") else tiny_sam_config()


def random_params(cfg: Any, cache_dir: str, init: str) -> tuple[dict, str]:
    """Float32 random variables for `cfg` (host arrays) and where they came from. Drawn once
    per config per run (`sam_jax.init_params`, or numpy with init="numpy" or if init_params
    fails), then shared with later jobs through an .npz in cache_dir."""
    import jax
    from flax.traverse_util import flatten_dict, unflatten_dict

    from sam_jax.checkpoint import build_from_config, init_params
    from tests.tiny_configs import random_variables

    path = os.path.join(cache_dir, hashlib.sha1(repr(cfg).encode()).hexdigest()[:16] + ".npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return unflatten_dict({tuple(k.split("/")): z[k] for k in z.files}), "cached"
    model, t0 = build_from_config(cfg), time.perf_counter()
    variables, source = None, init
    if init == "init_params":
        try:
            variables = init_params(model, jax.random.key(0))
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the numpy draw
            source = f"numpy ({type(e).__name__} in init_params)"
    if variables is None:
        variables = random_variables(model)
    source += f", {time.perf_counter() - t0:.0f} s"
    tmp = path + ".tmp.npz"  # renamed when complete: a killed job leaves no half file
    np.savez(tmp, **{"/".join(k): np.asarray(v) for k, v in flatten_dict(variables).items()})
    os.replace(tmp, path)
    return variables, source


def guarded(out: str, deadline: float, label: str, fn: Any, **meta: Any) -> dict | None:
    """Run one case: its record, or an error / skipped record, is emitted; never raises."""
    if time.time() > deadline - CASE_MARGIN_S:
        emit(out, label=label, skipped="over the time budget", **meta)
        return None
    try:
        rec = fn()
    except Exception as e:  # noqa: BLE001 - one case's failure (OOM, say) must not stop the rest
        first = (str(e).strip().splitlines() or [""])[0][:300]
        emit(out, label=label, error=f"{type(e).__name__}: {first}", **meta)
        return None
    emit(out, label=label, **meta, **rec)
    return rec


def device_record(out: str) -> None:
    import jax

    d = jax.devices()[0]
    emit(out, label="device", platform=d.platform, device_kind=d.device_kind, jax=jax.__version__)


def memory_stats() -> dict:
    """The first device's allocator statistics ({} where the backend keeps none: CPU)."""
    import jax

    return jax.devices()[0].memory_stats() or {}


# ------------------------------------------------------------------ child: inference


def median_s(fn: Any, runs: int) -> float:
    """Median seconds of fn() over `runs` calls (fn waits for its own results)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def first_call_s(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def encoder_case(enc: Any, params: Any, s: int, batch: int, runs: int) -> dict:
    """Images/s of the jitted encoder `enc(params, images)` on a (batch, s, s, 3) batch."""
    import jax

    x = jax.device_put(np.random.default_rng(0).standard_normal((batch, s, s, 3), np.float32))
    call = lambda: jax.block_until_ready(enc(params, x))
    compile_s, sec = first_call_s(call), median_s(call, runs)
    return {"value": batch / sec, "unit": "images/s", "ms": sec * 1e3, "compile_s": compile_s}


def predict_case(model: Any, params: Any, feats: Any, k: int, runs: int) -> dict:
    """Milliseconds of `predict_masks` for k one-click prompts on one cached embedding."""
    import jax
    import jax.numpy as jnp

    s = model.config.image_size
    coords = np.random.default_rng(k).uniform(0, s, (k, 1, 2)).astype(np.float32)
    labels = np.ones((k, 1), np.int32)

    def run(p, f, c, lab):
        f = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (k, *a.shape[1:])), f)
        return model.apply(p, f, point_coords=c, point_labels=lab, method="predict_masks")

    fn = jax.jit(run)
    call = lambda: jax.block_until_ready(fn(params, feats, coords, labels))
    compile_s, sec = first_call_s(call), median_s(call, runs * 4)
    return {"value": sec * 1e3, "unit": "ms", "compile_s": compile_s}


def video_case(model: Any, params: Any, sizes: Sizes) -> dict:
    """Frames/s of `propagate_in_video` over a synthetic (T, 3S/4, S) video, one object
    clicked on frame 0; the first propagation (compiles) is not timed."""
    from bench_video import synthetic_video

    import sam_jax

    s = model.config.image_size
    frames = synthetic_video(sizes.video_frames, s * 3 // 4, s)
    vp = sam_jax.VideoPredictor(model, params, chunk_size=sizes.chunk, progress=False)
    state = vp.init_state(frames)
    h, w = frames.shape[1:3]
    vp.add_new_points_or_box(state, 0, 1, [(0.25 * w, 0.45 * h)], [1])
    count = lambda: sum(1 for _ in vp.propagate_in_video(state))
    warm_s = first_call_s(count)
    sec = median_s(count, sizes.video_runs)
    n = len(frames)
    return {"value": n / sec, "unit": "frames/s", "frames": n, "compile_s": warm_s}


def infer_dtype(args: argparse.Namespace, cfg: Any, params: Any, dname: str, dtype: Any) -> None:
    """The inference cases of one model at one computation dtype."""
    import jax

    from sam_jax.checkpoint import build_from_config

    sizes = QUICK if args.quick else FULL
    model = build_from_config(cfg, dtype=dtype)
    tag = "[tiny]" if args.quick else ""
    s, out, end, name = cfg.image_size, args.results, args.deadline, f"{args.job}{tag} {dname}"
    meta = {"job": args.job, "dtype": dname, "image_size": s}
    enc = jax.jit(lambda p, im: model.apply(p, im, method="encode_image"))
    for b in sizes.batches:
        fn = lambda b=b: encoder_case(enc, params, s, b, sizes.runs)
        guarded(out, end, f"{name} encoder {s}px B={b}", fn, batch=b, **meta)
    x = np.random.default_rng(1).standard_normal((1, s, s, 3), np.float32)
    # Encoded inside the guarded cases: an encoder that fails fails them, not the job.
    embed = functools.cache(lambda: enc(params, x))
    for k in sizes.prompts:
        fn = lambda k=k: predict_case(model, params, embed(), k, sizes.runs)
        guarded(out, end, f"{name} predict_masks {k} prompt(s)", fn, prompts=k, **meta)
    if args.job.startswith("sam2"):
        label = f"{name} video {3 * s // 4}x{s} {sizes.video_frames} frames"
        guarded(out, end, label, lambda: video_case(model, params, sizes), **meta)


def infer_job(args: argparse.Namespace) -> None:
    """Every inference case of one model, float32 then bf16, on the same random weights."""
    import jax
    import jax.numpy as jnp

    cfg = infer_config(args.job, args.quick)
    variables, source = random_params(cfg, args.cache_dir, args.init)
    emit(args.results, label=f"{args.job} weights", source=source)
    params = jax.device_put(variables)
    for dname, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        infer_dtype(args, cfg, params, dname, dtype)


# ------------------------------------------------------------------ child: training


def box_masks(rng: np.random.Generator, lead: tuple[int, ...], s: int) -> np.ndarray:
    """(*lead, s, s) bool: one random axis-aligned box per mask, s/8 to s/2 on a side."""
    size = rng.integers(s // 8, s // 2 + 1, (2, *lead))
    start = rng.integers(0, s - size + 1)
    yy = np.arange(s)[:, None]
    xx = np.arange(s)[None, :]
    y0, x0 = (a[..., None, None] for a in start)
    y1, x1 = (a[..., None, None] for a in start + size)
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def train_batch(case: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images (B, S, S, 3) or clips (B, T, S, S, 3) and box targets shaped as
    train_memory.py's abstract inputs (an object axis only when K > 1)."""
    rng = np.random.default_rng(seed)
    s, b = case.image_size, case.batch * case.accumulate
    lead = (b, case.frames) if case.frames else (b,)
    images = rng.standard_normal((*lead, s, s, 3), dtype=np.float32)
    objects = (case.objects,) if case.objects > 1 else ()
    return images, box_masks(rng, (*lead, *objects), s)


def train_case(args: argparse.Namespace) -> dict:
    """One of train_memory.py's cases run for real: compile, one step, `runs` timed steps,
    then the allocator's peak."""
    import jax
    import jax.numpy as jnp
    import optax
    import train_memory as tm

    from sam_jax.checkpoint import build_from_config
    from sam_jax.models.attention import default_impl
    from sam_jax.train.step import TrainState, make_optimizer, make_train_step
    from sam_jax.train.video_step import clip_loss

    case = dataclasses.replace(tm.CASES[args.job], attention="auto")
    if args.quick:
        case = dataclasses.replace(case, model="tiny2", image_size=64, frames=min(case.frames, 4))
    cfg = tm._config(case)
    variables, source = random_params(cfg, args.cache_dir, args.init)
    if source != "cached":  # drawing them used the device: start afresh for a clean peak
        emit(args.results, label=f"{args.job} weights", source=source)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    model = build_from_config(cfg, remat=case.remat)
    tx = make_optimizer(variables["params"], case.trainable, 1e-4, accumulate=case.opt_accumulate)
    if case.multisteps > 1:
        tx = optax.MultiSteps(tx, case.multisteps)
    state = TrainState.create(jax.device_put(variables), tx)
    del variables
    images, targets = (jax.device_put(a) for a in train_batch(case))
    dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[case.dtype]
    kwargs: dict[str, Any] = {"accumulate": case.accumulate} if case.accumulate > 1 else {}
    if case.frames:
        kwargs.update(loss_fn=clip_loss, remat_frames=case.remat_frames)
    step = make_train_step(
        model, tx, num_corrections=case.num_corrections, compute_dtype=dtype, **kwargs
    )
    key = jax.random.key(0)
    before = memory_stats().get("bytes_in_use")
    t0 = time.perf_counter()
    with default_impl(case.attention):  # read while tracing: the compiled step keeps it
        compiled = step.lower(state, images, targets, key).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    # Autotuning while compiling allocates too: if this equals the final peak, it set it.
    compile_peak = memory_stats().get("peak_bytes_in_use")
    state, metrics = compiled(state, images, targets, key)
    jax.block_until_ready(metrics)
    times = []
    for i in range(args.train_runs):
        t0 = time.perf_counter()
        state, metrics = compiled(state, images, targets, jax.random.fold_in(key, i + 1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    stats = memory_stats()
    peak = stats.get("peak_bytes_in_use")
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    return {
        "value": None if peak is None else peak / GiB,
        "unit": "GiB peak",
        "bytes_in_use_before_GiB": None if before is None else before / GiB,
        "peak_after_compile_GiB": None if compile_peak is None else compile_peak / GiB,
        "bytes_limit_GiB": stats.get("bytes_limit", 0) / GiB or None,
        "xla_temp_GiB": temp / GiB,
        "step_ms": statistics.median(times) * 1e3,
        "compile_s": compile_s,
        "settings": dataclasses.asdict(case),
        "metrics": scalars,
    }


def train_job(args: argparse.Namespace) -> None:
    label = f"train {args.job}" + ("[tiny2]" if args.quick else "")
    guarded(args.results, args.deadline, label, lambda: train_case(args))


# ------------------------------------------------------------------ parent


def gpu_name() -> str:
    """nvidia-smi's name, memory and driver of each GPU, or a note that there is none."""
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi"
    q = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    out = subprocess.run(q, capture_output=True, text=True, check=False)
    return out.stdout.strip().replace("\n", "; ") or f"nvidia-smi failed: {out.stderr.strip()}"


def child_env(quick: bool) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The train steps may need most of the card; JAX takes 75% of it by default.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    if quick:  # fast CPU compiles: the quick numbers only check the code paths
        env.setdefault("XLA_FLAGS", CPU_XLA_FLAGS)
    return env


def run_job(args: argparse.Namespace, job: str, timeout: float, cache: str) -> list[dict]:
    """Run one job in a subprocess for at most `timeout` s; its records (and a record for a
    crash or a timeout)."""
    results = os.path.join(cache, f"{job}.jsonl")
    cmd = [sys.executable, __file__, "--child", job, "--results", results]
    cmd += ["--cache-dir", cache, "--deadline", str(time.time() + timeout), "--init", args.init]
    cmd += ["--train-runs", str(args.train_runs)] + (["--quick"] if args.quick else [])
    note = None
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=child_env(args.quick))
        if p.returncode != 0:
            tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
            note = f"exit {p.returncode}: " + " | ".join(tail)[-500:]
    except subprocess.TimeoutExpired:
        note = f"killed after {timeout:.0f} s (job cap or budget); later cases not run"
    records = []
    if os.path.exists(results):
        with open(results) as f:
            records = [json.loads(line) for line in f if line.strip()]
    if note:
        records.append({"label": f"{job} job", "error": note})
    return records


def fmt(rec: dict) -> str:
    label = f"{rec['label']:<46}"
    if "error" in rec:
        return f"{label} FAILED: {rec['error']}"
    if "skipped" in rec:
        return f"{label} skipped: {rec['skipped']}"
    if rec["label"] == "device":
        return f"device: {rec['platform']} {rec['device_kind']}, jax {rec['jax']}"
    if "source" in rec:
        return f"{label} random, {rec['source']}"
    if rec["unit"] == "GiB peak":
        peak = "n/a (no allocator stats)" if rec["value"] is None else f"{rec['value']:.2f} GiB"
        before = rec["bytes_in_use_before_GiB"]
        extra = "" if before is None else f" (state+batch {before:.2f} GiB)"
        loss = rec["metrics"].get("loss", float("nan"))
        return (
            f"{label} peak {peak}{extra}  step {rec['step_ms']:.0f} ms  loss {loss:.3g}  "
            f"XLA temp {rec['xla_temp_GiB']:.2f} GiB  compile {rec['compile_s']:.0f} s"
        )
    extra = f"  ({rec['ms']:.1f} ms/batch)" if "ms" in rec else ""
    return f"{label} {rec['value']:9.2f} {rec['unit']}{extra}  compile {rec['compile_s']:.1f} s"


def write_json(report: dict, path: str | None) -> None:
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, path)


def main_parent(args: argparse.Namespace) -> None:
    import jax  # the version only: no backend is initialised here

    start = time.monotonic()
    jobs = [j for j in INFER_JOBS + TRAIN_JOBS if not args.only or j in args.only]
    out = os.environ.get("OUT")
    path = args.json or (os.path.join(out, "device_results.json") if out else None)
    report: dict[str, Any] = {"gpu": gpu_name(), "jax": jax.__version__, "quick": args.quick}
    report |= {"budget_s": args.budget, "python": sys.version.split()[0], "results": []}
    print(f"GPU: {report['gpu']}\njax {jax.__version__}, budget {args.budget:.0f} s", flush=True)
    scale = QUICK_SCALE if args.quick else 1
    with tempfile.TemporaryDirectory() as cache:
        for job in jobs:
            left = args.budget - (time.monotonic() - start)
            if left < MIN_JOB_S:
                recs = [{"label": f"{job} job", "skipped": f"over the budget ({left:.0f} s left)"}]
            else:
                recs = run_job(args, job, min(CAPS[job] * scale, left), cache)
            for rec in recs:
                if rec["label"] == "device":
                    if "device" in report:
                        continue  # every job reports it; printed once
                    report["device"] = rec
                report["results"].append({"job": job, **rec})
                print(fmt(rec), flush=True)
            write_json(report, path)
    total = time.monotonic() - start
    report["total_s"] = total
    write_json(report, path)
    print(f"done in {total:.0f} s" + (f"; results in {path}" if path else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models: a CPU check of the code")
    ap.add_argument(
        "--budget",
        type=float,
        help=f"seconds for all the jobs ({BUDGET_S:.0f}; --quick: {QUICK_SCALE}x as long)",
    )
    ap.add_argument("--only", nargs="+", choices=INFER_JOBS + TRAIN_JOBS, help="these jobs")
    ap.add_argument("--json", help="results file (default $OUT/device_results.json)")
    ap.add_argument("--init", choices=("init_params", "numpy"), default="init_params")
    ap.add_argument("--train-runs", type=int, help="timed steps per train case (3; quick 1)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.train_runs = args.train_runs or (1 if args.quick else 3)
    if args.budget is None:
        args.budget = BUDGET_S * (QUICK_SCALE if args.quick else 1)
    if args.budget <= 0 or args.train_runs < 1:
        raise ValueError(
            f"--budget and --train-runs must be positive; got {args.budget}, {args.train_runs}"
        )
    if not args.child:
        main_parent(args)
        return
    args.job = args.child
    device_record(args.results)
    (infer_job if args.job in INFER_JOBS else train_job)(args)


if __name__ == "__main__":
    main()
