"""Training augmentation of an image (or every frame of a clip) together with its masks.

    aug = Augment(hflip=0.5, scale=(0.75, 1.25), brightness=0.2, contrast=0.2)
    image, masks = augment_image(sample.image, sample.masks, aug, rng)
    frames, masks = augment_clip(clip.frames, clip.masks, aug, rng)   # one draw, all frames

Applied to the original image, before the letterbox; the output keeps the input's (H, W),
so the letterbox that follows sees the same geometry as at inference. In order:

1. colour jitter (torchvision's ColorJitter meaning of the strengths, hue left out):
   brightness, contrast and saturation factors drawn uniformly in [max(0, 1 - s), 1 + s]
   and applied in a random order;
2. scale jitter: the image resized by a factor f drawn uniformly in `scale` (bilinear, as
   the letterbox resizes; masks by nearest neighbour), then brought back to (H, W): for
   f > 1 a random (H, W) window of the enlarged image (a zoom in), for f < 1 the shrunk
   image placed at a random offset on a canvas of the letterbox's pad value 114 with
   masks False there (a zoom out). An object cropped out has an all-False mask;
3. horizontal flip with probability `hflip`.

Every call draws the same random numbers whatever the settings, so switching one part on
or off leaves the draws of the others unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sam_jax.data.letterbox import nearest_taps
from sam_jax.transforms import PAD_VALUE, resize_bilinear_u8

# ITU-R 601 luma, the weights torchvision's grayscale uses.
_LUMA = np.array([0.2989, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Augment:
    """What to randomise; the defaults flip only.

    hflip       probability of a horizontal flip, in [0, 1].
    scale       (lo, hi), 0 < lo <= hi: range of the scale-jitter factor; (1, 1) is off.
    brightness  colour-jitter strengths >= 0 (torchvision ColorJitter meaning), 0 is off.
    contrast
    saturation
    """

    hflip: float = 0.5
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hflip) and 0.0 <= self.hflip <= 1.0):
            raise ValueError(f"Augment: hflip is a probability in [0, 1], got {self.hflip}")
        scale = tuple(float(s) for s in self.scale)
        if len(scale) != 2 or not all(math.isfinite(s) for s in scale):
            raise ValueError(f"Augment: scale must be a (lo, hi) pair, got {self.scale}")
        lo, hi = scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"Augment: scale needs 0 < lo <= hi, got ({lo}, {hi})")
        object.__setattr__(self, "scale", scale)
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"Augment: {name} strength must be >= 0, got {v}")


NO_AUGMENT = Augment(hflip=0.0)


@dataclasses.dataclass(frozen=True)
class _Draw:
    """One draw of the random parameters: applied alike to every frame of a clip."""

    flip: bool
    factor: float  # scale-jitter factor
    offset: tuple[float, float]  # (y, x) position of the crop / placement, in [0, 1)
    colour: tuple[tuple[str, float], ...]  # (operation, factor), in application order


def _draw(aug: Augment, rng: np.random.Generator) -> _Draw:
    flip_u, scale_u, oy, ox, b, c, s = rng.random(7)
    order = rng.permutation(3)
    lo, hi = aug.scale
    factors = []
    for name, u in (("brightness", b), ("contrast", c), ("saturation", s)):
        strength = getattr(aug, name)
        low = max(0.0, 1.0 - strength)
        factors.append((name, low + (1.0 + strength - low) * float(u)))
    colour = tuple(factors[i] for i in order if factors[i][1] != 1.0)
    return _Draw(
        flip=bool(flip_u < aug.hflip),
        factor=lo + (hi - lo) * float(scale_u),
        offset=(float(oy), float(ox)),
        colour=colour,
    )


def _grey(x: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) float32 -> (..., H, W, 1) luma."""
    return (x @ _LUMA)[..., None]


def _jitter_colour(frames: np.ndarray, ops: tuple[tuple[str, float], ...]) -> np.ndarray:
    """(T, H, W, 3) uint8 -> same, each op blending toward black, the frame's mean grey, or
    the frame's own grey; clipped after every op, as torchvision clips."""
    if not ops:
        return frames
    x = frames.astype(np.float32)
    for name, f in ops:
        if name == "brightness":
            other = np.float32(0.0)
        elif name == "contrast":
            other = _grey(x).mean(axis=(1, 2, 3), keepdims=True)
        else:
            other = _grey(x)
        x = np.clip(f * x + (1.0 - f) * other, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def _window(size: int, scaled: int, u: float) -> tuple[int, int]:
    """(start in the scaled axis, start in the output axis) of the part both share."""
    start = min(int(u * (abs(scaled - size) + 1)), abs(scaled - size))
    return (start, 0) if scaled >= size else (0, start)


def _rescale(frames: np.ndarray, masks: np.ndarray, d: _Draw) -> tuple[np.ndarray, np.ndarray]:
    """Scale jitter of (T, H, W, 3) frames and (T, K, H, W) masks, output size kept."""
    t, h, w, _ = frames.shape
    sh, sw = max(round(h * d.factor), 1), max(round(w * d.factor), 1)
    if (sh, sw) == (h, w):
        return frames, masks
    (ay, by), (ax, bx) = _window(h, sh, d.offset[0]), _window(w, sw, d.offset[1])
    ch, cw = min(h, sh), min(w, sw)  # the shared part's size
    # The frames resize as channels of one image: the same arithmetic as one frame alone.
    stacked = frames.transpose(1, 2, 0, 3).reshape(h, w, t * 3)
    scaled = resize_bilinear_u8(stacked, sh, sw).reshape(sh, sw, t, 3).transpose(2, 0, 1, 3)
    out = np.full_like(frames, PAD_VALUE)
    out[:, by : by + ch, bx : bx + cw] = scaled[:, ay : ay + ch, ax : ax + cw]
    # Only the kept window of the nearest-neighbour resize is gathered.
    rows = nearest_taps(h, sh)[ay : ay + ch]
    cols = nearest_taps(w, sw)[ax : ax + cw]
    out_masks = np.zeros_like(masks)
    out_masks[..., by : by + ch, bx : bx + cw] = masks[..., rows[:, None], cols[None, :]]
    return out, out_masks


def _apply(frames: np.ndarray, masks: np.ndarray, d: _Draw) -> tuple[np.ndarray, np.ndarray]:
    frames = _jitter_colour(frames, d.colour)
    frames, masks = _rescale(frames, masks, d)
    if d.flip:
        frames, masks = frames[:, :, ::-1], masks[..., ::-1]
    return np.ascontiguousarray(frames), np.ascontiguousarray(masks)


def _check(frames: np.ndarray, masks: np.ndarray, aug: Augment, what: str) -> None:
    if not isinstance(aug, Augment):
        raise ValueError(f"{what}: aug must be an Augment, got {type(aug).__name__}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(
            f"{what}: expected uint8 RGB pixels, got {frames.shape[1:]} {frames.dtype}"
        )
    t, h, w = frames.shape[:3]
    if (
        masks.dtype != np.bool_
        or masks.ndim != 4
        or masks.shape[0] != t
        or masks.shape[2:] != (h, w)
    ):
        raise ValueError(
            f"{what}: masks must be bool (K, {h}, {w}) for each image, got {masks.shape[1:]} {masks.dtype}"
        )


def augment_image(
    image: np.ndarray, masks: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, masks (K, H, W) bool) -> the same shapes and dtypes, augmented.

    Deterministic given rng's state; the inputs are not modified. With NO_AUGMENT the
    output equals the input.
    """
    frames, stacked = np.asarray(image)[None], np.asarray(masks)[None]
    _check(frames, stacked, aug, "augment_image")
    out, out_masks = _apply(frames, stacked, _draw(aug, rng))
    return out[0], out_masks[0]


def augment_clip(
    frames: np.ndarray, masks: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, masks (T, K, H, W) bool) -> the same shapes, augmented
    with ONE draw for the whole clip: frame t comes out as `augment_image` of frame t with
    a generator in the same state (contrast blends toward each frame's own mean grey)."""
    frames, masks = np.asarray(frames), np.asarray(masks)
    if frames.ndim != 4 or masks.ndim != 4:
        raise ValueError(
            f"augment_clip: expected frames (T, H, W, 3) and masks (T, K, H, W), "
            f"got {frames.shape} and {masks.shape}"
        )
    _check(frames, masks, aug, "augment_clip")
    return _apply(frames, masks, _draw(aug, rng))
