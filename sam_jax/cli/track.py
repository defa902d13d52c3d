"""`sam-jax track`: prompt one or several objects on one frame, track them through a video,
write per-frame masks and an overlay animation."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sam_jax.cli import flags
from sam_jax.cli.images import label_image, overlay, save_picture, save_png

DESCRIPTION = f"""\
Track objects prompted on frame --frame of FRAMES_OR_VIDEO through the whole video (frames
after it, then frames before it) with a SAM 2 checkpoint.

Outputs in --out DIR: mask_NNNNN.png for every frame (with one object its mask, 255 inside
and 0 outside; with several a label PNG whose pixels hold each object's id, 0 elsewhere,
the smaller mask on top where masks overlap) and overlay.gif (the masks tinted on the
frames).

{flags.PROMPTS_HELP}"""


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
    """Track the objects prompted on args.frame; write args.out/mask_NNNNN.png, overlay.gif."""
    from PIL import Image

    from sam_jax import VideoPredictor
    from sam_jax.video_io import open_frames

    objects = flags.group_prompts(args.point, args.box)
    if not objects:
        raise ValueError(
            f"nothing to track: give --point {flags.POINT_METAVAR} and/or --box {flags.BOX_METAVAR}"
        )
    frames = open_frames(args.frames)
    if not 0 <= args.frame < len(frames):
        raise ValueError(f"--frame {args.frame} is outside the video's {len(frames)} frames")
    model, params = _load_sam2(args)
    vp = VideoPredictor(model, params, progress=not args.quiet)
    state = vp.init_state(frames)
    for obj in objects:
        clicks = len(obj.points) > 0
        vp.add_new_points_or_box(
            state,
            frame_idx=args.frame,
            obj_id=obj.obj_id,
            points=obj.points if clicks else None,
            labels=obj.labels if clicks else None,
            box=obj.box,
        )
    out = Path(args.out)
    pictures = {}
    for reverse in (False, True):  # frames after the prompt, then those before it
        for f, obj_ids, logits in vp.propagate_in_video(
            state, start_frame_idx=args.frame, reverse=reverse
        ):
            masks = list(logits > 0)
            values = [255] if len(obj_ids) == 1 else [int(i) for i in obj_ids]
            save_png(label_image(masks[0].shape, masks, values), out / f"mask_{f:05d}.png")
            pictures[f] = Image.fromarray(overlay(np.asarray(frames[f]), masks))
    ordered = [pictures[f] for f in sorted(pictures)]
    save_picture(
        ordered[0],
        out / "overlay.gif",
        "GIF",
        save_all=True,
        append_images=ordered[1:],
        duration=80,
        loop=0,
    )
    what = "1 object" if len(objects) == 1 else f"{len(objects)} objects"
    print(f"tracked {what} over {len(ordered)} frames: {out}/mask_*.png and {out}/overlay.gif")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `track` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "track",
        help="track objects prompted on one frame through a video (SAM 2); writes per-frame "
        "masks and an overlay animation",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
