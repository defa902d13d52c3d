"""Which prompts a SAM 2 training clip gets: the protocol of SAM 2's training, simulated.

Per object of a clip (each object draws its own, where the reference draws once per batch):

* the object is prompted either with its ground-truth mask on every initial conditioning
  frame (probability `prob_mask`), or with points: on each initial conditioning frame a
  noisy box (probability `prob_box`) or one click inside the object;
* the initial conditioning frames are frame 0 and `num_cond_frames - 1` random later
  frames (frames where the object is visible first: a click or box needs an object,
  which the reference leaves to its data), prompted before any tracking and
  each without memory; with `rand_cond_frames` their number is uniform in
  1 .. num_cond_frames;
* with points, `num_correct_frames` frames get corrective clicks (`num_corrections` each,
  the clip loss's argument): the initial conditioning frames, then random tracked frames
  (with `rand_correct_frames` the total is uniform in #conditioning .. num_correct_frames).
  A corrected tracked frame becomes a conditioning frame (`correct_as_cond`);
  mask prompts get no corrections.

`SAM2_TRAINING` holds the values of SAM 2.1's released fine-tuning recipe; the defaults
are one click on frame 0 (the corrections on frame 0 only), the clip loss as it was before
these options. Everything here is jit-able with static shapes: the draws are jax.random,
the choices arrays, never Python branches on traced values.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from sam_jax.train.clicks import cell_centre, corrective_click, noisy_box, sample_pixel

# Pixels a box corner moves at most, at image resolution (SAM's box noise bound).
BOX_NOISE_PX = 20.0
# Score given to frames where the object is invisible: ranked after every visible frame.
_INVISIBLE = -1e4


@dataclasses.dataclass(frozen=True, kw_only=True)
class VideoPrompting:
    """How a training clip is prompted (see the module docstring).

    prob_mask: probability that an object's conditioning frames get its ground-truth mask
    (the reference's 1 - prob_to_use_pt_input_for_train);
    prob_box: of point prompts, the probability of a noisy box per conditioning frame, else
    one click (prob_to_use_box_input_for_train);
    num_cond_frames, rand_cond_frames: initial conditioning frames (num_init_cond_frames,
    rand_init_cond_frames);
    num_correct_frames, rand_correct_frames: frames receiving corrective clicks, the
    conditioning frames included, so >= num_cond_frames; None: the conditioning frames
    (num_frames_to_correct, rand_frames_to_correct);
    correct_as_cond: a corrected tracked frame's memory goes to the conditioning slots
    (add_all_frames_to_correct_as_cond), else to the recent-frame ring as a tracked one's;
    prob_click_from_target: per corrective click, the probability that it is drawn inside
    the object rather than in the error region (prob_to_sample_from_gt_for_train).
    """

    prob_mask: float = 0.0
    prob_box: float = 0.0
    num_cond_frames: int = 1
    rand_cond_frames: bool = False
    num_correct_frames: int | None = None
    rand_correct_frames: bool = False
    correct_as_cond: bool = True
    prob_click_from_target: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prob_mask", "prob_box", "prob_click_from_target"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"VideoPrompting.{name} must be in [0, 1]; got {p}")
        if self.num_cond_frames < 1:
            raise ValueError(f"num_cond_frames must be >= 1; got {self.num_cond_frames}")
        if self.num_correct_frames is not None and self.num_correct_frames < self.num_cond_frames:
            raise ValueError(
                "num_correct_frames (the conditioning frames included) must be >= "
                f"num_cond_frames; got {self.num_correct_frames} < {self.num_cond_frames}"
            )

    @property
    def correct_frames(self) -> int:
        """num_correct_frames, None resolved to num_cond_frames."""
        if self.num_correct_frames is None:
            return self.num_cond_frames
        return self.num_correct_frames

    def check_clip(self, num_frames: int) -> None:
        """ValueError unless a clip of `num_frames` frames has room for the frames asked."""
        most = max(self.num_cond_frames, self.correct_frames)
        if most > num_frames:
            raise ValueError(
                f"VideoPrompting asks for {most} conditioning or corrected frames; the clips "
                f"have {num_frames}"
            )

    def corrects_tracked_frames(self, num_corrections: int) -> bool:
        """Whether any tracked frame can get corrective clicks (a static choice: the tracked
        frames then all run the correction rounds, kept where a frame was drawn)."""
        fewest_cond = 1 if self.rand_cond_frames else self.num_cond_frames
        return num_corrections > 0 and self.prob_mask < 1.0 and self.correct_frames > fewest_cond

    def num_cond_slots(self, num_corrections: int) -> int:
        """The memory bank's conditioning slots C: one per conditioning frame there can be."""
        if self.correct_as_cond and self.corrects_tracked_frames(num_corrections):
            return self.correct_frames
        return self.num_cond_frames


# SAM 2.1's released fine-tuning recipe (sam2.1_hiera_b+_MOSE_finetune), with 7 corrective
# clicks per corrected frame there (`clip_loss(..., num_corrections=7)`).
SAM2_TRAINING = VideoPrompting(
    prob_mask=0.5,
    prob_box=0.5,
    num_cond_frames=2,
    rand_cond_frames=True,
    num_correct_frames=2,
    rand_correct_frames=True,
    correct_as_cond=True,
    prob_click_from_target=0.1,
)


@flax.struct.dataclass
class ClipPrompts:
    """One object's drawn prompting of a clip of T frames, N = num_cond_frames.

    use_mask () bool: the conditioning frames get the ground-truth mask (no corrections);
    use_box (N,) bool: else conditioning slot n gets a noisy box, or one click;
    cond_frames (N,) int32: slot n's frame (slot 0: frame 0), cond_active (N,) bool;
    is_cond (T,) bool: the frame is an active initial conditioning frame;
    correct (T,) bool: a tracked frame that gets corrective clicks;
    slot (T,) int32: the conditioning slot a corrected tracked frame's memory goes to.
    """

    use_mask: jnp.ndarray
    use_box: jnp.ndarray
    cond_frames: jnp.ndarray
    cond_active: jnp.ndarray
    is_cond: jnp.ndarray
    correct: jnp.ndarray
    slot: jnp.ndarray


def _count(key: jax.Array, low, high: int, rand: bool) -> jnp.ndarray:
    """Uniform integer in low .. high (inclusive) when rand, else high."""
    if not rand:
        return jnp.asarray(high, jnp.int32)
    return jax.random.randint(key, (), low, high + 1).astype(jnp.int32)


def draw_prompts(
    key: jax.Array, visible: jnp.ndarray, prompting: VideoPrompting, num_corrections: int
) -> ClipPrompts:
    """Draw one object's prompting of a clip; visible (T,) bool: where the object shows."""
    t = visible.shape[0]
    n = prompting.num_cond_frames
    k_mask, k_box, k_ncond, k_cond, k_ncorr, k_corr = jax.random.split(key, 6)
    use_mask = jax.random.bernoulli(k_mask, prompting.prob_mask)
    use_box = jax.random.bernoulli(k_box, prompting.prob_box, (n,))
    n_cond = _count(k_ncond, 1, n, prompting.rand_cond_frames)
    frames = jnp.arange(t)

    # Later conditioning frames: a random order of frames 1 .. T-1, visible ones first,
    # so that a click or box has an object to land on where the clip allows.
    score = jax.random.gumbel(k_cond, (t,)) + jnp.where(visible, 0.0, _INVISIBLE)
    order = jnp.argsort(-score.at[0].set(-jnp.inf))
    cond_frames = jnp.concatenate([jnp.zeros((1,), order.dtype), order[: n - 1]])
    cond_frames = cond_frames.astype(jnp.int32)
    cond_active = jnp.arange(n) < n_cond
    is_cond = jnp.any((frames[:, None] == cond_frames[None]) & cond_active[None], axis=1)

    # Corrected tracked frames: the first n_correct - n_cond of a random order of the others.
    n_correct = _count(k_ncorr, n_cond, prompting.correct_frames, prompting.rand_correct_frames)
    score = jnp.where(is_cond, -jnp.inf, jax.random.gumbel(k_corr, (t,)))
    rank = jnp.argsort(jnp.argsort(-score))
    correct = ~use_mask & ~is_cond & (rank < n_correct - n_cond)
    if not prompting.corrects_tracked_frames(num_corrections):
        correct = jnp.zeros((t,), bool)
    # Slots 0 .. n_cond-1 hold the initial conditioning frames; the corrected frames follow.
    last = prompting.num_cond_slots(num_corrections) - 1
    slot = jnp.clip(n_cond + rank, 0, last).astype(jnp.int32)
    return ClipPrompts(use_mask, use_box, cond_frames, cond_active, is_cond, correct, slot)


def click_prompt(
    key: jax.Array, target: jnp.ndarray, scale: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One click inside each (N, h, w) bool target at logit resolution -> coords (N, 1, 2)
    in input pixels (the click's cell centre, `scale` pixels per cell) and labels (N, 1):
    1, or -1 (padding) for an empty target."""
    point, ok = sample_pixel(key, target)
    labels = jnp.where(ok, 1, -1).astype(jnp.int32)[:, None]
    return cell_centre(point[:, None], scale), labels


def box_prompt(
    key: jax.Array, target: jnp.ndarray, scale: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each (N, h, w) target's box, corners jittered (`noisy_box`, at most BOX_NOISE_PX input
    pixels), as two corner points -> coords (N, 2, 2) input pixels, labels (N, 2) of 2 and
    3, or -1 (padding) for an empty target."""
    box = noisy_box(key, target, max_px=BOX_NOISE_PX / scale) * scale
    ok = target.reshape(target.shape[0], -1).any(axis=1)
    labels = jnp.where(ok[:, None], jnp.array([2, 3]), -1).astype(jnp.int32)
    return box.reshape(-1, 2, 2), labels


def correction_click(
    key: jax.Array,
    logits: jnp.ndarray,
    target: jnp.ndarray,
    prob_from_target: float,
    void: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`corrective_click` on logits (N, h, w) vs target (N, h, w) bool outside the void
    (N, h, w) cells, each click drawn inside the target instead with probability
    prob_from_target (the error region of an all-background prediction). Returns logit-cell
    (x, y) (N, 1, 2) and labels (N, 1)."""
    if prob_from_target > 0:
        key, k_from = jax.random.split(key)
        from_target = jax.random.bernoulli(k_from, prob_from_target, (target.shape[0],))
        logits = jnp.where(from_target[:, None, None], -1.0, logits)
    return corrective_click(key, logits, target, void)
