"""Build models, initialise, load (torch or safetensors) and save parameters."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from sam_jax.config import Sam2Config, Sam3SemanticConfig, SamConfig, variant_config
from sam_jax.config_json import config_from_json, config_to_json
from sam_jax.convert.detect import detect_variant
from sam_jax.convert.hf_reader import hf_model_config, hf_to_variables, is_hf_checkpoint, read_hf
from sam_jax.convert.keymap import state_dict_to_variables
from sam_jax.convert.sam3_keys import (
    detector_state_dict,
    is_sam3_checkpoint,
    tracker_state_dict,
)
from sam_jax.convert.torch_reader import read_state_dict, read_torch_file
from sam_jax.models.sam import Sam
from sam_jax.models.sam2 import Sam2
from sam_jax.models.sam3_semantic import Sam3Semantic

# Top-level module for each model config type.
MODELS: dict[type, type[nn.Module]] = {
    SamConfig: Sam,
    Sam2Config: Sam2,
    Sam3SemanticConfig: Sam3Semantic,
}

FORMAT = "sam_jax"
TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
BUNDLED_DIR = Path(__file__).parent / "weights"


def build_from_config(config: Any, **kwargs: Any) -> nn.Module:
    return MODELS[type(config)](config, **kwargs)


def build(variant: str, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """A Flax Linen module for a named variant (no weights). `image_size` must be a multiple
    of the encoder stride (16 for SAM); kwargs go to the module (e.g. remat=True, or
    dtype=jnp.bfloat16: the image encoder, and SAM 2's memory attention and memory encoder,
    compute in that dtype while parameters, LayerNorm and softmax statistics, and every
    output stay float32)."""
    return build_from_config(variant_config(variant, image_size), **kwargs)


def _dummy_images(model: nn.Module) -> jnp.ndarray:
    s = model.config.image_size
    return jnp.zeros((1, s, s, 3), jnp.float32)


def init_params(model: nn.Module, key: jax.Array) -> dict:
    """Fresh random variables ({'params': ...} plus any batch statistics) for `model`."""
    init = jax.jit(lambda k: model.init(k, _dummy_images(model), method="init_everything"))
    # Compiling the hundreds of random draws is nearly all of init's cost and the program
    # runs once, so XLA's backend optimisations are skipped (a tiny SAM 2: 36 s -> 20 s).
    compiled = init.lower(key).compile(compiler_options={"xla_backend_optimization_level": 0})
    return jax.device_get(compiled(key))


def variable_shapes(model: nn.Module) -> dict:
    """The variables tree of `model` as ShapeDtypeStructs, without computing anything."""
    # Tracing a model's init takes seconds (3 s for a tiny SAM 2), and every load checks
    # its file against this tree: the trees of the last few models are kept (a model is
    # hashable, equal models trace the same init). Each call gets its own containers of
    # the shared, immutable leaves, so a caller may edit its tree.
    try:
        shapes = _cached_shapes(model)
    except TypeError:  # a module with an unhashable field
        shapes = _traced_shapes(model)
    return jax.tree.map(lambda s: s, shapes)


def _traced_shapes(model: nn.Module) -> dict:
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), _dummy_images(model), method="init_everything")
    )


_cached_shapes = functools.lru_cache(maxsize=16)(_traced_shapes)


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call write(tmp_path) then rename onto `path`: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(path: str | os.PathLike, model: nn.Module, params: Mapping, half: bool = False) -> None:
    """Write variables to a .safetensors file with the variant and config in its metadata.
    half=True stores float32 arrays as float16 (half the size; `load` returns float32)."""
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(dict(params)).items()}
    if half:
        flat = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in flat.items()}
    meta = {"format": FORMAT, "variant": model.config.name, "config": config_to_json(model.config)}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def _check_tree(variables: Mapping, expected: Mapping, source: str) -> None:
    got = {k: np.shape(v) for k, v in flatten_dict(dict(variables)).items()}
    want = {k: tuple(v.shape) for k, v in flatten_dict(dict(expected)).items()}
    problems = [f"missing {'/'.join(k)} {s}" for k, s in want.items() if k not in got]
    problems += [f"unexpected {'/'.join(k)} {s}" for k, s in got.items() if k not in want]
    problems += [
        f"shape mismatch for {'/'.join(k)}: file {got[k]}, model {s}"
        for k, s in want.items()
        if k in got and got[k] != s
    ]
    if problems:
        raise ValueError(f"{source} does not fit the model:\n  " + "\n  ".join(problems[:20]))


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[tuple[str, ...], np.ndarray]]:
    """(metadata, {key path: array}); ValueError naming the file if it is not safetensors."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            flat = {tuple(k.split("/")): f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a safetensors file: {e}") from e
    return meta, flat


def _saved_config(path: Path, meta: Mapping[str, str]) -> Any:
    """The model config `save` wrote into the file's metadata."""
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(
            f"{path} has no sam_jax metadata; pass variant= (sam-jax: --variant) to load it"
        )
    try:
        return config_from_json(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} has sam_jax metadata that names no model config: {e}") from e


def _load_safetensors(path: Path, variant: str | None, image_size: int | None, dtype: Any):
    meta, flat = _read_safetensors(path)
    flat = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in flat.items()}
    config = variant_config(variant) if variant is not None else _saved_config(path, meta)
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    model = build_from_config(config, dtype=dtype)
    variables = unflatten_dict(flat)
    _check_tree(variables, variable_shapes(model), str(path))
    return model, variables


def bundled_models() -> dict[str, Path]:
    """Names of the small models shipped inside the package -> their files."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.safetensors"))}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A file path, or the name of a bundled model (e.g. "sam_tiny_shapes")."""
    p = Path(path)
    if p.is_file():
        return p
    bundled = bundled_models()
    if str(path) in bundled:
        return bundled[str(path)]
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not a checkpoint file")
    names = ", ".join(bundled) or "none"
    raise FileNotFoundError(f"no such checkpoint file: {p} (bundled models: {names})")


def _load_hf(
    path: Path, variant: str | None, image_size: int | None, dtype: Any
) -> tuple[nn.Module, dict]:
    """A Hugging Face transformers folder or file (see sam_jax.convert.hf_reader)."""
    ckpt = read_hf(path)
    try:
        config = hf_model_config(ckpt, variant, image_size)
        model = build_from_config(config, dtype=dtype)
        variables = hf_to_variables(ckpt, config, variable_shapes(model))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return model, variables


def _torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A torch file's weights. Of a training checkpoint ({"model": ..., "optimizer": ...,
    "epoch": ...}, as Meta's SAM 2 trainer writes) only "model" is read; a warning names
    the entries left out."""
    obj = read_torch_file(path)  # CheckpointError (a ValueError) names the file
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        ignored = sorted(map(str, obj.keys() - {"model"}))
        if ignored:
            warnings.warn(
                f"{path}: read the weights under 'model'; ignored {', '.join(ignored)}",
                stacklevel=3,
            )
        obj = obj["model"]
    if isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    ):
        return dict(obj)
    return read_state_dict(path)  # raises the reader's error naming the entry at fault


def load(
    path: str | os.PathLike,
    variant: str | None = None,
    image_size: int | None = None,
    *,
    dtype: Any = jnp.float32,
) -> tuple[nn.Module, dict]:
    """Load a Meta / ultralytics torch checkpoint (.pt/.pth, read without torch; of a
    training checkpoint only its "model" entry; of SAM 3's combined file the interactive
    tracker `sam3` by default, its concept model with variant="sam3_semantic"), a sam_jax .safetensors file, a Hugging Face
    transformers folder or .safetensors file (SamModel, Sam2Model, Sam2VideoModel), or a
    bundled model by name (`bundled_models()`). Returns (model, variables) ready for
    `model.apply`. The variables are float32 whatever `dtype`, the model's computation dtype
    (see `build`).

    Raises FileNotFoundError when there is no such file or bundled model, and ValueError
    naming the file when it has another suffix than CHECKPOINT_SUFFIXES, cannot be read as
    its suffix says, or holds no weights that fit a model."""
    if is_hf_checkpoint(path):
        return _load_hf(Path(path), variant, image_size, dtype)
    path = resolve_checkpoint(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path, variant, image_size, dtype)
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"{path}: unknown checkpoint suffix {path.suffix!r}; expected one of "
            + ", ".join(CHECKPOINT_SUFFIXES)
        )
    state_dict = _torch_state_dict(path)
    try:
        if is_sam3_checkpoint(state_dict):
            variant = variant or "sam3"
            semantic = isinstance(variant_config(variant), Sam3SemanticConfig)
            state_dict = (detector_state_dict if semantic else tracker_state_dict)(state_dict)
        model = build(variant or detect_variant(state_dict), image_size, dtype=dtype)
        variables = state_dict_to_variables(state_dict, variable_shapes(model))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return model, variables
