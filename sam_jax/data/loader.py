"""Endless, shuffled, prefetched and host-sharded training batches with grain.

    from sam_jax.data import open_dataset, image_loader, Augment
    batches = image_loader(open_dataset("data/"), image_size=1024, batch_size=8,
                           objects_per_image=4, seed=0, augment=Augment(hflip=0.5))
    batch = next(batches)   # images (8, 1024, 1024, 3) uint8, masks (8, 4, 1024, 1024) bool,
                            # valid (8, 4) bool, index (8,) int64

The batch at step n is a pure function of (seed, n, shard_index, shard_count): the example
order, the augmentation and the objects drawn all derive from those, never from what was
read before, so `start_step=n` yields exactly what an uninterrupted loader yields from its
n-th batch on (how a resumed run continues), whatever the prefetch.

Epochs: every epoch is a fresh permutation of the dataset (grain's index shuffle reseeded
per epoch) cut into shard_count equal parts, one per host: hosts read disjoint examples
within an epoch. The N mod shard_count examples left over at an epoch's end are skipped
in that epoch (others next time, as the permutation changes). Batches run across epoch
boundaries, so none is short.

grain is an optional dependency: pip install 'sam-jax[train]'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from sam_jax.data.augment import NO_AUGMENT, Augment, augment_clip, augment_image
from sam_jax.data.dataset import ImageDataset, VideoDataset
from sam_jax.data.letterbox import letterbox_mask
from sam_jax.data.objects import sample_objects
from sam_jax.transforms import letterbox

# How many examples an endless loader can yield before it stops: out of reach in practice,
# while every position it maps to stays an int64.
_ENDLESS = 1 << 44
# Random streams of one example, each from its own seed so that changing one (e.g. turning
# augmentation off) leaves the others' draws as they were.
_AUGMENT, _OBJECTS, _WINDOW = 0, 1, 2
# Windows of a clip tried for one whose first frame has an object, before the example is
# kept with padding slots only (datasets such as YouTube-VOS leave most frames unannotated).
_WINDOW_TRIES = 4


def _grain() -> Any:
    try:
        import grain
    except ImportError as e:
        raise ImportError("sam_jax.data loaders need grain: pip install 'sam-jax[train]'") from e
    return grain


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
    """Checked settings shared by both loaders. items: the dataset indices drawn from."""

    items: np.ndarray
    image_size: int
    batch_size: int
    objects: int
    seed: int
    augment: Augment
    start_step: int
    shard_index: int
    shard_count: int
    prefetch: int

    @property
    def per_shard(self) -> int:
        """Examples one host reads per epoch."""
        return len(self.items) // self.shard_count


def _positive(what: str, name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < least:
        raise ValueError(f"{what}: {name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _shards(what: str, index: int | None, count: int | None) -> tuple[int, int]:
    if (index is None) != (count is None):
        raise ValueError(f"{what}: give both shard_index and shard_count, or neither")
    if index is None:
        import jax

        return jax.process_index(), jax.process_count()
    count = _positive(what, "shard_count", count)
    if not 0 <= index < count:
        raise ValueError(f"{what}: shard_index must be in [0, {count}), got {index}")
    return int(index), count


def _plan(what: str, items: Sequence[int], **kw: Any) -> _Plan:
    seed = kw["seed"]
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed < 2**32:
        raise ValueError(f"{what}: seed must be an integer in [0, 2**32), got {seed!r}")
    augment = NO_AUGMENT if kw["augment"] is None else kw["augment"]
    if not isinstance(augment, Augment):
        raise ValueError(f"{what}: augment must be an Augment or None, got {augment!r}")
    shard_index, shard_count = _shards(what, kw["shard_index"], kw["shard_count"])
    plan = _Plan(
        items=np.asarray(items, np.int64),
        image_size=_positive(what, "image_size", kw["image_size"]),
        batch_size=_positive(what, "batch_size", kw["batch_size"]),
        objects=_positive(what, kw["objects_name"], kw["objects"]),
        seed=int(seed),
        augment=augment,
        start_step=_positive(what, "start_step", kw["start_step"], least=0),
        shard_index=shard_index,
        shard_count=shard_count,
        prefetch=_positive(what, "prefetch", kw["prefetch"], least=0),
    )
    if plan.per_shard == 0:
        raise ValueError(
            f"{what}: {len(plan.items)} usable examples cannot be split across "
            f"{shard_count} hosts (each needs at least one per epoch)"
        )
    return plan


def _rng(plan: _Plan, step: int, slot: int, stream: int) -> np.random.Generator:
    """The generator of one random stream of the example in `slot` of batch `step`."""
    key = [plan.seed, plan.shard_index, plan.shard_count, step, slot, stream]
    return np.random.default_rng(np.random.SeedSequence(key))


def _batches(plan: _Plan, example: Callable[[int, int, int], dict]) -> Iterator[dict]:
    """The endless batches of `example(dataset index, step, slot)`, from plan.start_step."""
    grain = _grain()
    n, m, b = len(plan.items), plan.per_shard, plan.batch_size
    # Position e * n + j of `order` is the j-th item of epoch e's permutation.
    order = grain.MapDataset.range(n).shuffle(seed=plan.seed).repeat()

    def locate(p: int) -> tuple[int, int, int]:
        epoch, offset = divmod(int(p), m)
        item = plan.items[order[epoch * n + plan.shard_index * m + offset]]
        return int(item), int(p) // b, int(p) % b

    first = plan.start_step * b
    ds = grain.MapDataset.range(first, first + _ENDLESS).map(locate)
    ds = ds.map(lambda t: example(*t)).batch(b, drop_remainder=True)
    # One thread per batch in flight: a batch's examples are read by one thread in order.
    options = grain.ReadOptions(num_threads=plan.prefetch, prefetch_buffer_size=plan.prefetch)
    return iter(ds.to_iter_dataset(options))


def _check_dataset(what: str, dataset: Any, kind: type) -> None:
    if not isinstance(dataset, kind):
        raise ValueError(
            f"{what}: dataset must be a sam_jax.data {kind.__name__}, got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{what}: empty dataset ({type(dataset).__name__} has no items)")


def image_loader(
    dataset: ImageDataset,
    *,
    image_size: int,
    batch_size: int,
    objects_per_image: int,
    seed: int,
    augment: Augment | None = None,
    start_step: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of B = batch_size images, S = image_size, K = objects_per_image:

    images  (B, S, S, 3) uint8, the augmented image letterboxed as the predictor does
            (`sam_jax.transforms.letterbox`);
    masks   (B, K, S, S) bool, K objects drawn by `sample_objects` among those with pixels
            after augmentation, letterboxed by `letterbox_mask`;
    valid   (B, K) bool, False for padding slots (an image with fewer than K objects);
            their masks are all False;
    ignore  (B, S, S) bool, the sample's void pixels (COCO crowd regions, a mask folder's
            void value) augmented and letterboxed as the masks (the letterbox's padding is
            known background);
    index   (B,) int64, each image's dataset index.

    shard_index / shard_count default to jax.process_index() / jax.process_count();
    prefetch batches are prepared ahead by as many threads (0: read when asked for).
    """
    what = "image_loader"
    _check_dataset(what, dataset, ImageDataset)
    plan = _plan(
        what,
        range(len(dataset)),
        image_size=image_size,
        batch_size=batch_size,
        objects=objects_per_image,
        objects_name="objects_per_image",
        seed=seed,
        augment=augment,
        start_step=start_step,
        shard_index=shard_index,
        shard_count=shard_count,
        prefetch=prefetch,
    )

    def example(i: int, step: int, slot: int) -> dict[str, np.ndarray]:
        sample = dataset[i]
        rng = _rng(plan, step, slot, _AUGMENT)
        # the void pixels ride along as one more mask: the same geometry as the objects'
        stacked = np.concatenate([sample.masks, sample.ignore[None]])
        image, stacked = augment_image(sample.image, stacked, plan.augment, rng)
        masks, ignore = stacked[:-1], stacked[-1]
        masks, valid = sample_objects(masks, plan.objects, _rng(plan, step, slot, _OBJECTS))
        return {
            "images": letterbox(image, plan.image_size),
            "masks": letterbox_mask(masks, plan.image_size),
            "valid": valid,
            "ignore": letterbox_mask(ignore[None], plan.image_size)[0],
            "index": np.int64(i),
        }

    return _batches(plan, example)


def _letterbox_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, size, size, 3): the frames letterboxed as channels of one image,
    the same per-channel arithmetic as letterboxing each frame alone."""
    t, h, w, _ = frames.shape
    out = letterbox(frames.transpose(1, 2, 0, 3).reshape(h, w, t * 3), size)
    return out.reshape(size, size, t, 3).transpose(2, 0, 1, 3)


def _window(dataset: VideoDataset, i: int, clip_len: int, rng: np.random.Generator) -> Any:
    """A random window of clip_len frames of video i, preferring one whose first frame has
    an object: after a window without, up to _WINDOW_TRIES - 1 other starts are probed by
    decoding their first frame only. The first window is kept if none has."""
    last = dataset.num_frames(i) - clip_len
    clip = dataset.clip(i, range(t0 := int(rng.integers(last + 1)), t0 + clip_len))
    if clip.present[0].any():
        return clip
    for _ in range(_WINDOW_TRIES - 1):
        t = int(rng.integers(last + 1))
        if t != t0 and dataset.clip(i, [t]).masks.any():
            return dataset.clip(i, range(t, t + clip_len))
    return clip


def clip_loader(
    dataset: VideoDataset,
    *,
    image_size: int,
    batch_size: int,
    clip_len: int,
    objects_per_clip: int,
    seed: int,
    augment: Augment | None = None,
    start_step: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of B = batch_size clips of T = clip_len consecutive frames, S =
    image_size, K = objects_per_clip:

    clips   (B, T, S, S, 3) uint8, a random window of a video (videos shorter than T are
            never drawn), every frame augmented alike (`augment_clip`) and letterboxed as
            the predictor does;
    masks   (B, T, K, S, S) bool, K objects drawn by `sample_objects` among those with
            pixels in the window's first frame (where they are prompted), all False where
            an object is absent;
    valid   (B, K) bool, False for padding slots; their masks are all False in every frame;
    ignore  (B, T, S, S) bool, void pixels (unannotated frames: all), as the masks;
    index   (B,) int64, each clip's video index in the dataset.

    Sharding, prefetch and resuming as `image_loader`.
    """
    what = "clip_loader"
    _check_dataset(what, dataset, VideoDataset)
    clip_len = _positive(what, "clip_len", clip_len)
    lengths = np.array([dataset.num_frames(i) for i in range(len(dataset))])
    if lengths.max() < clip_len:
        raise ValueError(
            f"{what}: clip_len {clip_len} is longer than every video "
            f"(the longest has {lengths.max()} frames)"
        )
    plan = _plan(
        what,
        np.flatnonzero(lengths >= clip_len),
        image_size=image_size,
        batch_size=batch_size,
        objects=objects_per_clip,
        objects_name="objects_per_clip",
        seed=seed,
        augment=augment,
        start_step=start_step,
        shard_index=shard_index,
        shard_count=shard_count,
        prefetch=prefetch,
    )

    def example(i: int, step: int, slot: int) -> dict[str, np.ndarray]:
        clip = _window(dataset, i, clip_len, _rng(plan, step, slot, _WINDOW))
        rng = _rng(plan, step, slot, _AUGMENT)
        stacked = np.concatenate([clip.masks, clip.ignore[:, None]], axis=1)
        frames, stacked = augment_clip(clip.frames, stacked, plan.augment, rng)
        masks, ignore = stacked[:, :-1], stacked[:, -1]
        masks, valid = sample_objects(masks, plan.objects, _rng(plan, step, slot, _OBJECTS))
        return {
            "clips": _letterbox_frames(frames, plan.image_size),
            "masks": letterbox_mask(masks, plan.image_size),
            "valid": valid,
            "ignore": letterbox_mask(ignore, plan.image_size),
            "index": np.int64(i),
        }

    return _batches(plan, example)


def images_at(dataset: ImageDataset, indices: Sequence[int], image_size: int) -> np.ndarray:
    """(N, S, S, 3) uint8: images `indices` of dataset letterboxed to S = image_size as the
    predictor does, without augmentation (e.g. to fill an embedding cache)."""
    size = _positive("images_at", "image_size", image_size)
    out = np.empty((len(indices), size, size, 3), np.uint8)
    for n, i in enumerate(indices):
        out[n] = letterbox(dataset[i].image, size)
    return out
