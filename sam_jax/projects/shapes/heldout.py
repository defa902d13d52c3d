"""A shifted-look shapes dataset written to disk: COCO images and DAVIS-layout videos.

The bundled models were trained on `synthetic.py`'s look: square 256-px images, a linear
gradient background with small blobs, thin lines and faint noise, objects of any RGB colour
with radius 7-20% of the image. The same five shape kinds are drawn here with another look,
so that fine-tuning on it has something to learn while the task stays the same:

* backgrounds: multi-octave cloud noise, marble veins, brick tiles, or a radial gradient
  under strong grain, with no blobs or lines (`heldout_background`);
* colours: muted (HSV saturation at most MAX_SATURATION, also for the background), objects
  shaded as if lit from one side, with dots, a grid, blotches or plain fill;
* sizes: object radii log-uniform over 5-32% of the image's shorter side; images not
  square (IMAGE_SHAPES, chosen per image or per video).

Written as files a user would have (`write_heldout`):

    OUT/coco_train/annotations.json + NNNNNN.jpg   COCO, compressed RLE by pycocotools
    OUT/coco_val/...
    OUT/davis_train/JPEGImages/<video>/NNNNN.jpg + Annotations/<video>/NNNNN.png
    OUT/davis_val/...                              (palette PNGs, index = object id)

Train and val splits are disjoint seed ranges (TRAIN_SEED0, VAL_SEED0); every image and
video is a function of its seed alone. Command line:

    python -m sam_jax.projects.shapes.heldout OUT --images 200 --val-images 60 \
        --videos 24 --val-videos 36
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.projects.shapes.synthetic import KINDS, Shape, shape_mask

TRAIN_SEED0 = 40_000_000  # disjoint from synthetic.py's training, held-out and validation
VAL_SEED0 = 50_000_000
IMAGE_SHAPES = ((240, 320), (320, 240), (224, 352), (288, 288))  # (H, W)
BACKGROUNDS = ("clouds", "marble", "bricks", "radial")
FILLS = ("plain", "dots", "grid", "blotches")
MAX_SATURATION = 0.45
MIN_AREA = 24  # pixels: smaller visible remnants are not kept as objects
JPEG_QUALITY = 95


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float RGB in [0, 255] with HSV saturation <= MAX_SATURATION."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.05, MAX_SATURATION), rng.uniform(0.3, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float in [0, 1]: random values on a grid of `cell`-px cells, bilinearly
    interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(0, 1, (gh, gw))
    y, x = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def clouds(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float in [0, 1]: four octaves of `smooth_noise`, normalised."""
    field = sum(smooth_noise(rng, h, w, c) / (i + 1) for i, c in enumerate((64, 32, 16, 8)))
    return (field - field.min()) / max(np.ptp(field), 1e-6)


def _two_tone(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(h, w, 3): colour a where t is 0, b where t is 1."""
    return a * (1 - t[..., None]) + b * t[..., None]


def heldout_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float: one of BACKGROUNDS in two muted colours, with pixel grain."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    a, b = muted_colour(rng), muted_colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "clouds":
        t = clouds(rng, h, w)
    elif kind == "marble":
        angle, period = rng.uniform(0, np.pi), rng.uniform(20, 50)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (phase + 2.0 * clouds(rng, h, w)))
    elif kind == "bricks":
        bh, bw = rng.integers(14, 30), rng.integers(30, 60)
        row = (yy // bh).astype(int)
        shifted = xx + (row % 2) * bw / 2
        mortar = (yy % bh < 2) | (shifted % bw < 2)
        t = 0.25 * smooth_noise(rng, h, w, 12) + np.where(mortar, 0.75, 0.0)
    else:  # radial
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        t = np.clip(np.hypot(yy - cy, xx - cx) / max(h, w), 0, 1)
    img = _two_tone(t, a, b)
    return img + rng.normal(0, 14, img.shape)  # grain stronger than synthetic.py's


def random_heldout_shape(rng: np.random.Generator, h: int, w: int) -> Shape:
    """A shape of random kind and place in an (h, w) image, radius log-uniform over 5-32%
    of the shorter side, muted colours; `texture` holds one of FILLS."""
    r = float(np.exp(rng.uniform(np.log(0.05), np.log(0.32)))) * min(h, w)
    return Shape(
        kind=KINDS[rng.integers(len(KINDS))],
        cx=rng.uniform(0.1, 0.9) * w,
        cy=rng.uniform(0.1, 0.9) * h,
        rx=r,
        ry=r * rng.uniform(0.6, 1.4),
        angle=rng.uniform(0, np.pi),
        color=muted_colour(rng),
        color2=muted_colour(rng),
        texture=FILLS[rng.integers(len(FILLS))],
        period=rng.uniform(5, 12),
    )


def heldout_mask(s: Shape, h: int, w: int) -> np.ndarray:
    """(h, w) bool: pixels whose centres fall inside the shape."""
    return shape_mask(s, max(h, w))[:h, :w]


def _fill(s: Shape, h: int, w: int, seed: list[int]) -> np.ndarray:
    """(h, w, 3) float: the shape's fill, shaded darker away from a light at its upper left.
    `seed` draws the blotches, so an object keeps them from frame to frame."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if s.texture == "dots":
        gy, gx = (yy % s.period) - s.period / 2, (xx % s.period) - s.period / 2
        t = (np.hypot(gy, gx) < s.period / 4).astype(np.float64)
    elif s.texture == "grid":
        t = ((yy % s.period < 1.5) | (xx % s.period < 1.5)).astype(np.float64)
    elif s.texture == "blotches":
        t = (smooth_noise(np.random.default_rng(seed), h, w, 8) > 0.55).astype(np.float64)
    else:
        t = np.zeros((h, w))
    light = np.hypot(xx - (s.cx - 0.5 * s.rx), yy - (s.cy - 0.5 * s.ry)) / (2 * max(s.rx, s.ry))
    shade = np.clip(1.15 - 0.6 * light, 0.45, 1.15)[..., None]
    return _two_tone(t, s.color, s.color2) * shade


def _fill_seeds(seed: int, n: int) -> list[list[int]]:
    """The seeds of n shapes' blotches in the image or video drawn from `seed`."""
    return [[seed, 2, k] for k in range(n)]


def paint(shapes: list[Shape], bg: np.ndarray, seeds: list) -> tuple[np.ndarray, np.ndarray]:
    """`shapes` painted in order over `bg` (H, W, 3) float: the image (H, W, 3) uint8 and
    each shape's visible mask (K, H, W) bool (later shapes occlude earlier ones).
    `seeds[k]` draws shape k's blotches."""
    h, w = bg.shape[:2]
    img = bg.copy()
    masks = np.zeros((len(shapes), h, w), bool)
    for k, s in enumerate(shapes):
        m = heldout_mask(s, h, w)
        img[m] = _fill(s, h, w, seeds[k])[m]
        masks[:k] &= ~m
        masks[k] = m
    return np.clip(img, 0, 255).astype(np.uint8), masks


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")


def image_shape(seed: int) -> tuple[int, int]:
    """(H, W) of the image or video drawn from `seed`: one of IMAGE_SHAPES."""
    return IMAGE_SHAPES[np.random.default_rng([seed, 1]).integers(len(IMAGE_SHAPES))]


def heldout_scene(
    seed: int, num_objects: tuple[int, int] = (2, 6)
) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8, (H, W) = image_shape(seed), and the visible masks
    (K, H, W) bool of its K >= 1 objects, each of at least MIN_AREA pixels (smaller
    remnants of occluded shapes are dropped; shapes are added until one is kept)."""
    lo, hi = num_objects
    if not 1 <= lo <= hi:
        raise ValueError(
            f"num_objects must be (low, high) with 1 <= low <= high; got {num_objects}"
        )
    h, w = image_shape(seed)
    rng = np.random.default_rng(seed)
    bg = heldout_background(rng, h, w)
    shapes = [random_heldout_shape(rng, h, w) for _ in range(rng.integers(lo, hi, endpoint=True))]
    while True:
        img, masks = paint(shapes, bg, _fill_seeds(seed, len(shapes)))
        keep = masks.sum(axis=(1, 2)) >= MIN_AREA
        if keep.any():
            return img, masks[keep]
        shapes.append(random_heldout_shape(rng, h, w))


def heldout_video(
    seed: int, num_frames: int = 12, num_objects: int = 3, max_speed: float = 0.025
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8, (H, W) = image_shape(seed), and visible masks
    (T, K, H, W) bool. Over a fixed background the shapes move with constant velocity (each
    component uniform in +-max_speed of the shorter side per frame), bounce off the borders
    and turn slowly; an object may be hidden in some frames, but each is visible (at least
    MIN_AREA pixels) in frame 0."""
    _check_positive(num_frames=num_frames, num_objects=num_objects)
    h, w = image_shape(seed)
    rng = np.random.default_rng(seed)
    bg = heldout_background(rng, h, w)
    shapes = [random_heldout_shape(rng, h, w) for _ in range(num_objects)]
    shapes = _visible_first(shapes, bg, rng, seed)
    vel = rng.uniform(-1, 1, (num_objects, 2)) * max_speed * min(h, w)
    spin = rng.uniform(-0.05, 0.05, num_objects)
    seeds = _fill_seeds(seed, num_objects)
    frames, masks = [], []
    for _ in range(num_frames):
        img, m = paint(shapes, bg, seeds)
        frames.append(img)
        masks.append(m)
        shapes = [_move(s, vel[k], float(spin[k]), h, w) for k, s in enumerate(shapes)]
    return np.stack(frames), np.stack(masks)


def _visible_first(
    shapes: list[Shape], bg: np.ndarray, rng: np.random.Generator, seed: int
) -> list[Shape]:
    """`shapes` with those hidden in the first frame redrawn until each is visible."""
    h, w = bg.shape[:2]
    for _ in range(100):
        _, masks = paint(shapes, bg, _fill_seeds(seed, len(shapes)))
        hidden = np.flatnonzero(masks.sum(axis=(1, 2)) < MIN_AREA)
        if not hidden.size:
            return shapes
        for k in hidden:
            shapes[k] = random_heldout_shape(rng, h, w)
    raise ValueError(f"seed {seed}: could not place {len(shapes)} visible objects")


def _move(s: Shape, vel: np.ndarray, spin: float, h: int, w: int) -> Shape:
    """The shape one frame later; `vel` (2,) is flipped in place at a border (a bounce)."""
    cx, cy = s.cx + vel[0], s.cy + vel[1]
    if not 0.1 * w <= cx <= 0.9 * w:
        vel[0] *= -1
    if not 0.1 * h <= cy <= 0.9 * h:
        vel[1] *= -1
    cx, cy = float(np.clip(cx, 0.1 * w, 0.9 * w)), float(np.clip(cy, 0.1 * h, 0.9 * h))
    return dataclasses.replace(s, cx=cx, cy=cy, angle=s.angle + spin)


def _write_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Call fill(tmp_dir) then rename tmp_dir onto `out`: a dataset is there whole or not
    at all. An existing `out` is refused."""
    if out.exists():
        raise ValueError(f"{out}: already exists; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the dataset from others
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def coco_annotation(mask: np.ndarray, ann_id: int, image_id: int, category: int) -> dict:
    """A COCO annotation of one (H, W) bool mask, its segmentation a compressed RLE."""
    from pycocotools import mask as mask_utils  # only when a COCO file is written

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    area = float(mask_utils.area(rle))
    ids = {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0}
    return {**ids, "segmentation": rle, "area": area, "bbox": bbox}


def write_coco(out: str | os.PathLike, num_images: int, seed0: int) -> Path:
    """Write scenes seed0 .. seed0 + num_images - 1 (`heldout_scene`) as a COCO dataset:
    out/annotations.json and out/NNNNNN.jpg. One category, "shape". Returns out/."""
    _check_positive(num_images=num_images)

    def fill(tmp: Path) -> None:
        images, anns = [], []
        for i in range(num_images):
            img, masks = heldout_scene(seed0 + i)
            name = f"{i:06d}.jpg"
            Image.fromarray(img).save(tmp / name, quality=JPEG_QUALITY)
            h, w = img.shape[:2]
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            first = len(anns) + 1  # annotation ids are unique over the file
            anns += [coco_annotation(m, first + k, i + 1, 1) for k, m in enumerate(masks)]
        categories = [{"id": 1, "name": "shape"}]
        data = {"images": images, "annotations": anns, "categories": categories}
        (tmp / "annotations.json").write_text(json.dumps(data), encoding="utf-8")

    return _write_dir(Path(out), fill)


def palette_png(ids: np.ndarray, path: Path) -> None:
    """Save (H, W) object ids (0 = background) as a palette PNG, DAVIS's colours."""
    png = Image.fromarray(ids.astype(np.uint8), mode="P")
    colours = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128]
    png.putpalette(colours + [255, 255, 255] * (256 - len(colours) // 3))
    png.save(path)


def write_davis(out: str | os.PathLike, num_videos: int, seed0: int, num_frames: int = 12) -> Path:
    """Write videos seed0 .. seed0 + num_videos - 1 (`heldout_video`) in the DAVIS layout:
    out/JPEGImages/vNNNN/NNNNN.jpg and out/Annotations/vNNNN/NNNNN.png, object k's palette
    index k + 1. Returns out/."""
    _check_positive(num_videos=num_videos, num_frames=num_frames)

    def fill(tmp: Path) -> None:
        for i in range(num_videos):
            frames, masks = heldout_video(seed0 + i, num_frames)
            jpgs, pngs = tmp / "JPEGImages" / f"v{i:04d}", tmp / "Annotations" / f"v{i:04d}"
            jpgs.mkdir(parents=True)
            pngs.mkdir(parents=True)
            for t in range(num_frames):
                Image.fromarray(frames[t]).save(jpgs / f"{t:05d}.jpg", quality=JPEG_QUALITY)
                ids = np.zeros(frames.shape[1:3], np.uint8)
                for k in range(masks.shape[1]):
                    ids[masks[t, k]] = k + 1  # visible masks are disjoint
                palette_png(ids, pngs / f"{t:05d}.png")

    return _write_dir(Path(out), fill)


def write_heldout(
    out: str | os.PathLike,
    *,
    images: int = 200,
    val_images: int = 60,
    videos: int = 24,
    val_videos: int = 36,
    num_frames: int = 12,
) -> dict[str, Path]:
    """Write the four datasets under `out` (module docstring); a count of 0 skips that
    one. Returns {"coco_train", "coco_val", "davis_train", "davis_val"} -> folder, for those
    written. Nothing is written when a count is negative or a folder to write exists."""
    root = Path(out)
    counts = {"coco_train": images, "coco_val": val_images, "davis_train": videos}
    counts["davis_val"] = val_videos
    for name, n in counts.items():
        if n < 0:
            raise ValueError(f"the {name} count must be at least 0; got {n}")
        if n and (root / name).exists():
            raise ValueError(f"{root / name}: already exists; choose a new folder")
    jobs = (
        ("coco_train", lambda p, n: write_coco(p, n, TRAIN_SEED0)),
        ("coco_val", lambda p, n: write_coco(p, n, VAL_SEED0)),
        ("davis_train", lambda p, n: write_davis(p, n, TRAIN_SEED0, num_frames)),
        ("davis_val", lambda p, n: write_davis(p, n, VAL_SEED0, num_frames)),
    )
    written = {}
    for name, write in jobs:
        if counts[name]:
            written[name] = write(root / name, counts[name])
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: write the datasets under OUT and print their folders."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT", help="folder to write the datasets in")
    p.add_argument("--images", type=int, default=200, help="COCO training images (200)")
    p.add_argument("--val-images", type=int, default=60, help="COCO held-out images (60)")
    p.add_argument("--videos", type=int, default=24, help="DAVIS training videos (24)")
    p.add_argument("--val-videos", type=int, default=36, help="DAVIS held-out videos (36)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (12)")
    a = p.parse_args(argv)
    try:
        counts = dict(images=a.images, val_images=a.val_images, videos=a.videos)
        written = write_heldout(a.out, **counts, val_videos=a.val_videos, num_frames=a.frames)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
