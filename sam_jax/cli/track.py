"""`sam-jax track`: prompt one object on one frame, track it through a video, write masks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sam_jax.cli import flags
from sam_jax.cli.images import overlay


def _load_sam2(args: argparse.Namespace):
    from sam_jax.checkpoint import load
    from sam_jax.config import Sam2Config

    model, params = load(args.checkpoint, variant=args.variant)
    if not isinstance(model.config, Sam2Config):
        raise ValueError(
            f"tracking needs a SAM 2 checkpoint; {args.checkpoint} is {model.config.name}"
        )
    return model, params


def run(args: argparse.Namespace) -> None:
    """Track the object prompted on args.frame; write args.out/mask_NNNNN.png, overlay.gif."""
    from PIL import Image

    from sam_jax import VideoPredictor
    from sam_jax.video_io import open_frames

    points = args.point or []
    if not points and args.box is None:
        raise ValueError("nothing to track: give --point X,Y[,LABEL] and/or --box X0,Y0,X1,Y1")
    frames = open_frames(args.frames)
    if not 0 <= args.frame < len(frames):
        raise ValueError(f"--frame {args.frame} is outside the video's {len(frames)} frames")
    model, params = _load_sam2(args)
    vp = VideoPredictor(model, params, progress=not args.quiet)
    state = vp.init_state(frames)
    vp.add_new_points_or_box(
        state,
        frame_idx=args.frame,
        obj_id=1,
        points=np.array([p[:2] for p in points], np.float32) if points else None,
        labels=np.array([p[2] for p in points], np.int32) if points else None,
        box=None if args.box is None else np.array(args.box, np.float32),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {}
    for reverse in (False, True):  # frames after the prompt, then those before it
        for f, _, logits in vp.propagate_in_video(
            state, start_frame_idx=args.frame, reverse=reverse
        ):
            mask = logits[0] > 0
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"mask_{f:05d}.png")
            pictures[f] = Image.fromarray(overlay(frames[f], [mask]))
    ordered = [pictures[f] for f in sorted(pictures)]
    ordered[0].save(
        out / "overlay.gif", save_all=True, append_images=ordered[1:], duration=80, loop=0
    )
    print(f"tracked {len(ordered)} frames: {out}/mask_*.png and {out}/overlay.gif")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `track` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "track",
        help="track an object prompted on one frame through a video (SAM 2); writes per-frame "
        "masks and an overlay animation",
    )
    p.add_argument(
        "frames", metavar="FRAMES_OR_VIDEO", help="a folder of JPEG/PNG frames or a video file"
    )
    flags.add_checkpoint(p, help="a SAM 2 checkpoint: " + flags.CHECKPOINT_HELP)
    flags.add_variant(p)
    p.add_argument(
        "--frame", type=int, default=0, metavar="F", help="index of the prompted frame (0)"
    )
    flags.add_prompts(p, pixels_of="frame")
    flags.add_out(p, metavar="DIR", help="output folder")
    flags.add_quiet(p)
    p.set_defaults(run=run)
