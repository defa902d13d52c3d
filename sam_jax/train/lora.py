"""LoRA as a parameter transform: low-rank updates trained in place of the kernels they adapt.

    config = LoraConfig(rank=8)
    tree = lora_init(variables["params"], config, jax.random.key(0))
    tx = make_optimizer(tree, LORA_TRAINABLE, 1e-4)
    state = TrainState.create({**variables, "params": tree}, tx)
    step = make_train_step(model, tx, transform=functools.partial(lora_merge, config=config))
    ...
    params = lora_merge(state.variables["params"], config)   # plain params: save / load

The model never sees the adapters: `lora_merge` folds them into the kernels, inside the
differentiated function during training and once before saving, so the saved file is a
plain checkpoint of the model (no LoRA code needed to load it).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import flax
import jax
import jax.numpy as jnp

# The trainable rule for `make_optimizer` over a LoRA tree: the adapters train, the base
# stays frozen.
LORA_TRAINABLE = (("lora/*",), ())

# Attention and MLP kernels of the image encoders' blocks (SAM ViT blocks_i, Hiera
# trunk/blocks_i, TinyViT layers_s/blocks_j), and the mask decoders' attention projections.
DEFAULT_TARGETS: tuple[str, ...] = (
    "image_encoder/*blocks_*/attn/qkv/kernel",
    "image_encoder/*blocks_*/attn/proj/kernel",
    "image_encoder/*blocks_*/mlp/*/kernel",
    "*mask_decoder/transformer/*_proj/kernel",  # q_proj, k_proj, v_proj, out_proj
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """rank: the adapters' inner dimension (>= 1); alpha: the update W + (alpha / rank) a @ b
    (None: rank, a scale of 1); targets: glob patterns over "/"-joined parameter paths of
    the kernels to adapt (only 2-D ones are: see `lora_init`)."""

    rank: int
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1; got {self.rank!r}")
        if isinstance(self.targets, str):
            raise ValueError(f"targets must be a tuple of glob patterns; got {self.targets!r}")

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank


def adapted_paths(params: Any, config: LoraConfig) -> list[tuple[str, ...]]:
    """Paths of the kernels of `params` that LoRA adapts: the 2-D leaves (in, out) whose
    "/"-joined path matches a glob of config.targets. Leaves of other ranks, such as conv
    kernels (kh, kw, in, out), are not adapted even where a glob names them."""
    flat = flax.traverse_util.flatten_dict(params)
    hit = lambda k: any(fnmatch.fnmatchcase("/".join(k), p) for p in config.targets)
    return sorted(k for k, v in flat.items() if jnp.ndim(v) == 2 and hit(k))


def lora_init(params: Any, config: LoraConfig, key: jax.Array) -> dict:
    """{"base": params, "lora": adapters}: for every adapted kernel W (in, out) (see
    `adapted_paths`), adapters holds at W's path {"a": (in, rank) normal with standard
    deviation 1 / rank, "b": (rank, out) zeros}, in W's dtype. b = 0, so the merged
    parameters start equal to `params`.

    Raises ValueError when no kernel matches config.targets."""
    paths = adapted_paths(params, config)
    if not paths:
        raise ValueError(
            f"no 2-D kernel of the parameters matches the LoRA targets {config.targets}"
        )
    flat = flax.traverse_util.flatten_dict(params)
    adapters = {}
    for k, sub in zip(paths, jax.random.split(key, len(paths)), strict=True):
        w = flat[k]
        a = jax.random.normal(sub, (w.shape[0], config.rank), jnp.float32) / config.rank
        adapters[k] = {
            "a": a.astype(w.dtype),
            "b": jnp.zeros((config.rank, w.shape[1]), w.dtype),
        }
    return {"base": params, "lora": flax.traverse_util.unflatten_dict(adapters)}


def _adapters(tree: Any) -> dict[tuple[str, ...], dict]:
    """{kernel path: {"a", "b"}} of a LoRA tree's "lora" part."""
    flat = flax.traverse_util.flatten_dict(tree["lora"])
    out: dict[tuple[str, ...], dict] = {}
    for k, v in flat.items():
        if k[-1] not in ("a", "b"):
            raise ValueError(f"LoRA leaf {'/'.join(k)} is neither an 'a' nor a 'b' adapter")
        out.setdefault(k[:-1], {})[k[-1]] = v
    return out


def lora_merge(tree: Any, config: LoraConfig) -> Any:
    """The model's parameters from a LoRA tree ({"base", "lora"}, see `lora_init`): the
    base with W + (alpha / rank) * a @ b at every adapted kernel, cast to W's dtype; the
    same structure and dtypes as the base. Pure jnp: differentiable and jit-able.

    Raises ValueError when the tree is not a LoRA tree or an adapter does not fit its
    kernel."""
    if not isinstance(tree, dict) or set(tree) != {"base", "lora"}:
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"a LoRA tree is a dict with keys 'base' and 'lora'; got {keys}")
    flat = dict(flax.traverse_util.flatten_dict(tree["base"]))
    for k, ab in _adapters(tree).items():
        name = "/".join(k)
        w = flat.get(k)
        a, b = ab.get("a"), ab.get("b")
        if w is None or a is None or b is None:
            raise ValueError(f"LoRA adapter {name} needs 'a', 'b' and a base kernel there")
        if (
            jnp.ndim(w) != 2
            or a.shape != (w.shape[0], config.rank)
            or b.shape
            != (
                config.rank,
                w.shape[1],
            )
        ):
            raise ValueError(
                f"LoRA adapter {name}: a {a.shape} and b {b.shape} do not fit kernel "
                f"{jnp.shape(w)} at rank {config.rank}"
            )
        # full float32 products: the saved kernels are the ones trained against
        ab = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32), precision="highest")
        delta = config.scale * ab
        flat[k] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return flax.traverse_util.unflatten_dict(flat)
