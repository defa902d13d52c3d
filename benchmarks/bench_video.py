"""SAM 2 video propagation: frames/s and peak memory, sam-jax vs the ultralytics loop.

Same random sam2.1_t weights, same frames and prompt, same run. The reference is
ultralytics 8.4.190's `SAM2Model.track_step` called frame by frame with the full history
(tests/video_reference.py: Meta's semantics, nothing pruned, float32), each frame encoded
by `forward_image`; sam-jax is `VideoPredictor.propagate_in_video` (letterbox, image
encoder, tracking, logits at the original size), timed after the scan was compiled. The
CPUs are shared with other jobs, so the two run chunk by chunk in turn in one process
(see `interleaved_fps`). Memory: peak resident set size (ru_maxrss) of a fresh subprocess per
(implementation, number of frames), so the growth from the shorter to the longer video is
what each implementation keeps per frame (VmHWM of the child's own address space).

Run: .venv/bin/python benchmarks/bench_video.py [--image-size 1024 --frames 8]
     [--memory-image-size 256 --memory-frames 50 200] [--skip-fps] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def synthetic_video(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Two moving shapes over a textured background, (t, h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        img = 90 + 40 * np.sin(xx / 17.0 + 0.2 * i)[..., None] * np.ones(3, np.float32)
        cx, cy = w * (0.25 + 0.4 * (i % 100) / 100), h * 0.45
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.1 * w) ** 2] = (220, 40, 40)
        img[(np.abs(xx - 0.7 * w) < 0.08 * w) & (np.abs(yy - 0.7 * h) < 0.12 * h)] = (30, 200, 60)
        out[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255)
    return out


def prompts(h: int, w: int, n: int) -> list:
    """(frame, obj_id, point) per object: objects prompted on different frames."""
    pts = [(0.25 * w, 0.45 * h), (0.7 * w, 0.7 * h), (0.5 * w, 0.2 * h)]
    return [(k, k + 1, pts[k % len(pts)]) for k in range(n)]


def build_reference(image_size: int, seed: int = 0):
    import torch  # noqa: F401

    from sam_jax.config import variant_config
    from tests.reference import randomize_
    from tests.reference_sam2 import build_reference_sam2

    cfg = variant_config("sam2.1_t", image_size)
    ref = randomize_(build_reference_sam2(cfg), seed=seed)
    with torch.no_grad():  # random weights: make objects found, so masks are not empty
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 1.0
    return cfg, ref


def jax_weights(image_size: int, path: str) -> None:
    """Convert the reference's random weights into a .safetensors file for sam-jax."""
    import jax

    import sam_jax
    from sam_jax.checkpoint import build_from_config, variable_shapes
    from sam_jax.convert.keymap import state_dict_to_variables

    cfg, ref = build_reference(image_size)
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = state_dict_to_variables(sd, variable_shapes(model))
    sam_jax.save(path, model, jax.device_get(params))


def run_ours(weights: str, frames: np.ndarray, n_obj: int, chunk: int, history: str) -> dict:
    import sam_jax

    model, params = sam_jax.load(weights)
    vp = sam_jax.VideoPredictor(model, params, chunk_size=chunk, progress=False)
    state = vp.init_state(frames, history=history)
    h, w = frames.shape[1:3]
    for f, obj, pt in prompts(h, w, n_obj):
        vp.add_new_points_or_box(state, f, obj, [pt], [1])
    t0 = time.perf_counter()
    for _ in vp.propagate_in_video(state, max_frame_num_to_track=0):
        pass  # compiles the scan (one chunk with only the prompted frame active)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    for _, _, logits in vp.propagate_in_video(state):
        n += 1
        _ = logits  # dropped: a streaming consumer
    dt = time.perf_counter() - t0
    bank = vp.memory_state(state, frames.shape[0] - 1)
    from sam_jax.tracking.memory_bank import bank_nbytes

    return {
        "frames": n,
        "seconds": dt,
        "fps": n / dt,
        "warmup_s": warm,
        "bank_bytes": bank_nbytes(bank),
        "history_backend": state.history.backend,
        "history_ram_bytes": state.history.ram_bytes(),
    }


def reference_tracker(image_size: int, frames: np.ndarray, n_obj: int, ref=None):
    """RefVideoTracker over `frames` with the prompts, frames letterboxed and encoded one at
    a time (nothing kept but the tracker's own full history)."""
    import torch

    from sam_jax.transforms import letterbox, letterbox_geometry
    from tests.video_reference import RefVideoTracker

    torch.set_num_threads(os.cpu_count() or 1)
    if ref is None:
        cfg, ref = build_reference(image_size)
    else:
        from sam_jax.config import variant_config

        cfg = variant_config("sam2.1_t", image_size)
    h, w = frames.shape[1:3]
    r = letterbox_geometry(h, w, image_size)[0]
    tracker = RefVideoTracker(ref, np.zeros((1, image_size, image_size, 3), np.float32))
    tracker.num_frames = len(frames)

    def features(f):
        if f not in tracker._feats:
            x = letterbox(frames[f], image_size).astype(np.float32)
            x = (x - np.float32(cfg.pixel_mean)) / np.float32(cfg.pixel_std)
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
            with torch.no_grad():
                out = ref.forward_image(x)
                _, vis, pos, sizes = ref._prepare_backbone_features(out)
            tracker._feats = {f: (vis, pos, sizes)}
        return tracker._feats[f]

    tracker._features = features
    for f, obj, pt in prompts(h, w, n_obj):
        tracker.add_points(obj, f, np.array([pt], np.float32) * np.float32(r), np.array([1]))
    return tracker


def run_reference(image_size: int, frames: np.ndarray, n_obj: int) -> dict:
    tracker = reference_tracker(image_size, frames, n_obj)
    t0 = time.perf_counter()
    n = 0
    for _ in tracker.propagate():
        n += 1
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": dt, "fps": n / dt}


def interleaved_fps(image_size: int, num_frames: int, n_obj: int, chunk: int) -> dict:
    """Both implementations in one process, chunk by chunk in turn (ours, then the
    reference, on the same frames), so that load from other jobs on shared CPUs hits both
    alike. Each of our chunks is one `propagate_in_video` call of `chunk` frames (one scan,
    nothing left in flight), resumed from the history as the reference resumes from its
    output dicts."""
    import jax

    import sam_jax
    from sam_jax.checkpoint import build_from_config, variable_shapes
    from sam_jax.convert.keymap import state_dict_to_variables

    cfg, ref = build_reference(image_size)
    model = build_from_config(cfg)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    params = jax.device_put(state_dict_to_variables(sd, variable_shapes(model)))
    frames = synthetic_video(num_frames, image_size * 3 // 4, image_size)
    h, w = frames.shape[1:3]
    vp = sam_jax.VideoPredictor(model, params, chunk_size=chunk, progress=False)
    state = vp.init_state(frames)
    for f, obj, pt in prompts(h, w, n_obj):
        vp.add_new_points_or_box(state, f, obj, [pt], [1])
    t0 = time.perf_counter()
    for _ in vp.propagate_in_video(state, max_frame_num_to_track=0):
        pass  # compiles the scan
    compile_s = time.perf_counter() - t0
    tracker = reference_tracker(image_size, frames, n_obj, ref)
    ours, theirs = [], []
    for start in range(0, num_frames, chunk):
        t0 = time.perf_counter()
        n = sum(1 for _ in vp.propagate_in_video(state, start, chunk - 1))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = sum(1 for _ in tracker.propagate(start=start, max_frames=chunk - 1))
        theirs.append(time.perf_counter() - t0)
        assert n == m
    return {"ours": ours, "ref": theirs, "compile_s": compile_s, "chunk": chunk}


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM belongs to the process's own address
    space; ru_maxrss would also count the parent's size at fork time (Linux keeps it
    across exec), which made every child report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    frames = synthetic_video(args.frames, args.height, args.width)
    if args.child == "ours":
        res = run_ours(args.weights, frames, args.objects, args.chunk, args.history)
    else:
        res = run_reference(args.image_size, frames, args.objects)
    res["peak_rss_mb"] = peak_rss_mb()
    res["input_mb"] = frames.nbytes / 2**20  # the decoded video the caller holds in RAM
    print("RESULT " + json.dumps(res), flush=True)


def spawn(kind: str, args, frames: int, size: int, weights: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--frames",
        str(frames),
        "--image-size",
        str(size),
        "--height",
        str(size * 3 // 4),
        "--width",
        str(size),
        "--objects",
        str(args.objects),
        "--chunk",
        str(args.chunk),
        "--history",
        args.history,
        "--weights",
        weights,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} child failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--history", default="auto")
    ap.add_argument("--memory-image-size", type=int, default=256)
    ap.add_argument("--memory-frames", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--skip-fps", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-reference-memory", action="store_true")
    # internal: subprocess mode
    ap.add_argument("--child", choices=["ours", "ref"])
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--weights")
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    print(f"sam2.1_t, random weights, {args.objects} object(s), {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_fps:
            s = args.image_size
            res = interleaved_fps(s, args.frames, args.objects, args.chunk)
            ours, ref, c = res["ours"], res["ref"], res["chunk"]
            print(
                f"propagation at {s} px ({s * 3 // 4}x{s} frames), {args.frames} frames, "
                f"chunks of {c} interleaved: sam-jax {args.frames / sum(ours):.3f} frames/s, "
                f"ultralytics loop {args.frames / sum(ref):.3f} frames/s: "
                f"x{sum(ref) / sum(ours):.2f} (scan compile {res['compile_s']:.1f} s, not counted)",
                flush=True,
            )
            print("  per chunk (s), ours: " + " ".join(f"{x:.1f}" for x in ours))
            print("  per chunk (s), ref:  " + " ".join(f"{x:.1f}" for x in ref))
            if len(ours) > 1:
                print(
                    f"  after the first chunk (all memory slots in use): "
                    f"x{sum(ref[1:]) / sum(ours[1:]):.2f}",
                    flush=True,
                )
        if not args.skip_memory:
            s = args.memory_image_size
            w = os.path.join(tmp, f"w{s}.safetensors")
            jax_weights(s, w)
            kinds = ["ours"] + ([] if args.skip_reference_memory else ["ref"])
            for kind in kinds:
                for t in args.memory_frames:
                    res = spawn(kind, args, t, s, w)
                    extra = ""
                    if kind == "ours":
                        extra = (
                            f", bank {res['bank_bytes'] / 2**20:.2f} MiB, history "
                            f"{res['history_backend']} {res['history_ram_bytes'] / 2**20:.1f} MiB in RAM"
                        )
                    print(
                        f"memory at {s} px, {t} frames: {kind:<4} peak RSS "
                        f"{res['peak_rss_mb']:.0f} MB, {res['peak_rss_mb'] - res['input_mb']:.0f} MB "
                        f"without the input video array of {res['input_mb']:.0f} MB "
                        f"({res['fps']:.2f} frames/s{extra})",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
