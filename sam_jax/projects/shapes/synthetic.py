"""Synthetic segmentation data: textured shapes on cluttered backgrounds, with exact masks.

Images are drawn in numpy from a seed, so a data set is a seed range, nothing is stored.
`scene` gives one image and the visible mask of every object (later objects occlude
earlier ones); `video` moves the shapes with constant velocities, bouncing off the borders,
so objects pass in front of each other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KINDS = ("ellipse", "rectangle", "triangle", "star", "ring")
TEXTURES = ("solid", "stripes", "checker", "gradient", "noise")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One object: kind, centre (x, y), size (rx, ry), rotation, colours and texture."""

    kind: str
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    color: np.ndarray
    color2: np.ndarray
    texture: str
    period: float


def random_shape(rng: np.random.Generator, size: int) -> Shape:
    """A shape of random kind, place, size, colours and texture in a size x size image."""
    r = rng.uniform(0.07, 0.2) * size
    return Shape(
        kind=KINDS[rng.integers(len(KINDS))],
        cx=rng.uniform(0.15, 0.85) * size,
        cy=rng.uniform(0.15, 0.85) * size,
        rx=r,
        ry=r * rng.uniform(0.6, 1.4),
        angle=rng.uniform(0, np.pi),
        color=rng.uniform(0, 255, 3),
        color2=rng.uniform(0, 255, 3),
        texture=TEXTURES[rng.integers(len(TEXTURES))],
        period=rng.uniform(4, 14),
    )


def shape_mask(s: Shape, size: int) -> np.ndarray:
    """(size, size) bool: pixels whose centres fall inside the shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c, si = np.cos(s.angle), np.sin(s.angle)
    u = ((xx - s.cx) * c + (yy - s.cy) * si) / s.rx  # shape-local coordinates, unit size
    v = (-(xx - s.cx) * si + (yy - s.cy) * c) / s.ry
    if s.kind == "ellipse":
        return u * u + v * v <= 1.0
    if s.kind == "rectangle":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if s.kind == "triangle":
        return (v <= 0.8) & (v >= 1.6 * np.abs(u) - 1.0)
    if s.kind == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.3)
    # star: radius modulated by angle
    theta = np.arctan2(v, u)
    return np.hypot(u, v) <= 0.6 + 0.4 * np.cos(5 * theta)


def _texture(s: Shape, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float colour field of the shape's texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if s.texture == "solid":
        t = np.zeros((size, size), np.float32)
    elif s.texture == "stripes":
        t = (np.sin((xx * np.cos(s.angle) + yy * np.sin(s.angle)) * 2 * np.pi / s.period) > 0) * 1.0
    elif s.texture == "checker":
        t = ((xx // s.period + yy // s.period) % 2).astype(np.float32)
    elif s.texture == "gradient":
        t = np.clip(((xx - s.cx) / (2 * s.rx) + 0.5), 0, 1)
    else:
        t = rng.uniform(0, 1, (size, size)).astype(np.float32) * 0.5
    t = t[..., None]
    return s.color * (1 - t) + s.color2 * t


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float: a smooth gradient with noise and clutter (small blobs and lines
    that are not objects)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    w = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
    img = c0 + (c1 - c0) * (w - w.min()) / max(np.ptp(w), 1e-6)
    for _ in range(rng.integers(5, 15)):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1, 0.04 * size)
        blob = (xx * size - cx) ** 2 + (yy * size - cy) ** 2 <= r * r
        img[blob] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(2, 6)):
        a, off, width = rng.uniform(0, np.pi), rng.uniform(0, size), rng.uniform(0.5, 2)
        dist = np.abs((xx * size) * np.cos(a) + (yy * size) * np.sin(a) - off)
        img[dist < width] = rng.uniform(0, 255, 3)
    return img + rng.normal(0, 6, img.shape)


def render(
    shapes: list[Shape], bg: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`shapes` painted in order over `bg` (S, S, 3): the image (S, S, 3) uint8 and each
    shape's visible mask (K, S, S) bool (later shapes occlude earlier ones)."""
    size = bg.shape[0]
    img = bg.copy()
    masks = np.zeros((len(shapes), size, size), bool)
    for i, s in enumerate(shapes):  # painter's order: later shapes occlude earlier ones
        m = shape_mask(s, size)
        img[m] = _texture(s, size, rng)[m]
        masks[:i] &= ~m
        masks[i] = m
    return np.clip(img, 0, 255).astype(np.uint8), masks


def scene(
    seed: int, size: int = 256, num_objects: tuple[int, int] = (2, 5)
) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and visible masks (K, size, size) bool, K >= 1."""
    rng = np.random.default_rng(seed)
    shapes = [random_shape(rng, size) for _ in range(rng.integers(*num_objects, endpoint=True))]
    return render(shapes, background(rng, size), rng)


def video(
    seed: int, num_frames: int = 16, size: int = 256, num_objects: int = 3, max_speed: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, size, size, 3) uint8 and visible masks (T, K, size, size) bool.

    Shapes move with constant velocity, each component uniform in +-max_speed image sizes
    per frame, and bounce off the borders; the background is fixed.
    Texture noise is drawn once per object, so an object looks the same in every frame.
    """
    rng = np.random.default_rng(seed)
    shapes = [random_shape(rng, size) for _ in range(num_objects)]
    vel = rng.uniform(-1.0, 1.0, (num_objects, 2)) * max_speed * size
    bg = background(rng, size)
    frames, masks = [], []
    for _ in range(num_frames):
        img, m = render(shapes, bg, np.random.default_rng(seed + 1))
        frames.append(img)
        masks.append(m)
        moved = []
        for i, s in enumerate(shapes):
            cx, cy = s.cx + vel[i, 0], s.cy + vel[i, 1]
            lo, hi = 0.1 * size, 0.9 * size
            if not lo <= cx <= hi:
                vel[i, 0] *= -1
            if not lo <= cy <= hi:
                vel[i, 1] *= -1
            moved.append(
                dataclasses.replace(s, cx=float(np.clip(cx, lo, hi)), cy=float(np.clip(cy, lo, hi)))
            )
        shapes = moved
    return np.stack(frames), np.stack(masks)
