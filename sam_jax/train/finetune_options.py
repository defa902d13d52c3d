"""`FinetuneOptions`: every setting of a fine-tuning run, with its command-line help (the
`sam-jax finetune` parser is generated from the fields), and which of them define a run."""

from __future__ import annotations

import dataclasses
from typing import Any

from sam_jax.data.augment import Augment
from sam_jax.train.lora import DEFAULT_TARGETS
from sam_jax.train.optimizer import TRAINABLE
from sam_jax.train.video_prompts import SAM2_TRAINING, VideoPrompting

# --video-prompts presets: one click on frame 0 (VideoPrompting's defaults) or SAM 2.1's
# released fine-tuning recipe.
VIDEO_PROMPTS: dict[str, VideoPrompting] = {"click": VideoPrompting(), "sam2": SAM2_TRAINING}

# Options that may differ when a run is resumed: they change what is logged, saved or
# evaluated, not the parameters the run reaches.
RUN_ONLY = frozenset(
    {"resume", "val", "val_images", "eval_every", "save_every", "keep_checkpoints", "log_every"}
    | {"quiet"}
)


def option(help: str, default: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A dataclass field with its command-line help; `cli` may hold `flag` (when not
    --field-name), `metavar`, `choices`."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """What `finetune` does. Defaults are the command line's."""

    checkpoint: str = option("the checkpoint to start from (anything sam_jax.load reads)")
    train: str = option("the training dataset (layout detected)", metavar="DATA")
    out: str = option("the run folder", metavar="DIR")
    steps: int = option("training steps (optimizer updates)", metavar="N")
    val: str | None = option("a held-out dataset to evaluate on", None, metavar="DATA")
    images: str | None = option("--train's COCO images folder", None, metavar="DIR")
    val_images: str | None = option("--val's COCO images folder", None, metavar="DIR")
    batch_size: int = option("images (videos: clips) per step", 4, metavar="B")
    objects_per_image: int = option("objects per image (videos: per clip)", 4, metavar="K")
    clip_len: int = option("videos: frames per training clip", 8, metavar="T")
    trainable: tuple[str, ...] | None = option(
        f"what trains: {', '.join(TRAINABLE)} and glob patterns of parameter paths "
        "('mask_decoder/*'), less '!'-prefixed patterns ('!memory_encoder/*'); default "
        "decoder (images), all_but_encoder (videos); with "
        "--lora, what trains besides the adapters (default nothing)",
        None,
        metavar="WHAT",
    )
    learning_rate: float = option("peak learning rate", 1e-4, flag="--lr", metavar="LR")
    encoder_learning_rate: float | None = option(
        "the image encoder's peak learning rate (--lr)", None, flag="--encoder-lr", metavar="LR"
    )
    layer_decay: float | None = option("image encoder: layer-wise rate decay", None, metavar="D")
    weight_decay: float = option(
        "AdamW weight decay (none on biases, norms, embeddings)", 0.1, metavar="WD"
    )
    clip_norm: float = option("gradient clipping: largest global norm", 1.0, metavar="NORM")
    warmup: int | None = option(
        "warm-up steps (a 20th), then cosine decay to 5%", None, metavar="N"
    )
    lora: int | None = option("train LoRA adapters of this rank", None, metavar="RANK")
    lora_alpha: float | None = option("LoRA scale alpha / rank (alpha = rank)", None, metavar="A")
    lora_targets: tuple[str, ...] = option(
        "glob patterns of the kernels LoRA adapts (default: the image encoder's attention "
        "and MLP kernels, the mask decoder's attention projections)",
        DEFAULT_TARGETS,
        metavar="GLOB",
    )
    accumulate: int = option(
        "each step averages the gradients of N batches, run one after another", 1, metavar="N"
    )
    bf16: bool = option("compute in bfloat16 (parameters stay float32)", False)
    remat: bool = option("recompute encoder blocks in the backward pass", False)
    corrections: int | None = option(
        "corrective clicks per prompt (default 2 images, 1 videos)", None, metavar="N"
    )
    video_prompts: str = option(
        "videos: how a clip's objects are prompted: click (one click on frame 0, then "
        "--corrections clicks), sam2 (SAM 2.1's recipe: the mask or a click or box, on 1 or 2 "
        "frames, corrected frames becoming conditioning frames)",
        "click",
        choices=tuple(VIDEO_PROMPTS),
    )
    prob_mask: float | None = option(
        "videos: chance an object is prompted with its ground-truth mask (--video-prompts's "
        "value when not given)",
        None,
        metavar="P",
    )
    prob_box: float | None = option(
        "videos: chance a point prompt is a noisy box, else one click", None, metavar="P"
    )
    cond_frames: int | None = option(
        "videos: initial conditioning frames (1 or 2; frame 0 and a random later frame)",
        None,
        metavar="N",
    )
    correct_frames: int | None = option(
        "videos: frames getting corrective clicks, the conditioning frames included",
        None,
        metavar="N",
    )
    hflip: float = option("augmentation: horizontal flip probability", 0.0, metavar="P")
    scale: tuple[float, float] = option(
        "augmentation: scale jitter range (1,1: off)", (1.0, 1.0), metavar="LO,HI"
    )
    brightness: float = option("augmentation: brightness jitter strength", 0.0, metavar="S")
    contrast: float = option("augmentation: contrast jitter strength", 0.0, metavar="S")
    saturation: float = option("augmentation: saturation jitter strength", 0.0, metavar="S")
    seed: int = option("seed of the data order, objects, prompts, LoRA", 0, metavar="N")
    eval_every: int = option(
        "evaluate on --val every N steps; also before and after training", 500, metavar="N"
    )
    save_every: int = option("checkpoint every N steps (and at the end)", 500, metavar="N")
    keep_checkpoints: int = option("checkpoints kept (the newest)", 3, metavar="N")
    log_every: int = option("steps averaged into each metrics.jsonl record", 10, metavar="N")
    resume: bool = option("continue the run in --out from its newest checkpoint", False)
    quiet: bool = option("no progress bar", False)

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "objects_per_image": 1, "clip_len": 2}
        at_least |= {"accumulate": 1, "save_every": 1, "keep_checkpoints": 1, "log_every": 1}
        at_least |= {"eval_every": 0, "warmup": 0, "lora": 1, "corrections": 0}
        for name, least in at_least.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{flag(name)} must be at least {least}; got {value}")
        for name in ("learning_rate", "encoder_learning_rate", "lora_alpha"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{flag(name)} must be positive; got {getattr(self, name)}")
        if self.trainable is not None and not self.trainable:
            raise ValueError("--trainable needs a preset name or glob patterns")
        self.augment()  # Augment checks its own settings
        self.prompting()  # and VideoPrompting its own

    def augment(self) -> Augment:
        """The training augmentation these options ask for."""
        return Augment(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Augment)})

    def prompting(self) -> VideoPrompting:
        """How video clips are prompted: the --video-prompts preset with the flags given."""
        given = {
            "prob_mask": self.prob_mask,
            "prob_box": self.prob_box,
            "num_cond_frames": self.cond_frames,
            "num_correct_frames": self.correct_frames,
        }
        preset = VIDEO_PROMPTS[self.video_prompts]
        return dataclasses.replace(preset, **{k: v for k, v in given.items() if v is not None})


def flag(name: str) -> str:
    """The command-line flag of option `name`."""
    field = {f.name: f for f in dataclasses.fields(FinetuneOptions)}[name]
    return field.metadata.get("flag", "--" + name.replace("_", "-"))


def options_record(options: FinetuneOptions) -> dict:
    """The options that define a run (all but RUN_ONLY), as JSON values."""
    record = dataclasses.asdict(options)
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in record.items() if k not in RUN_ONLY
    }
