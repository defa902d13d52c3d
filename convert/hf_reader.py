"""Read Hugging Face transformers SAM / SAM 2 checkpoints into sam_jax variables, without torch.

A checkpoint is a folder as `save_pretrained` writes it (config.json plus model.safetensors,
or sharded model-0000i-of-0000n.safetensors with model.safetensors.index.json, or
pytorch_model.bin), or a .safetensors file of HF names alone. The model config comes from
config.json (hf_config.py), from the variant detected from the shapes when there is none, or
from the caller. Every variable is filled from its HF key (hf_keymap.py, hf_sam2_keymap.py)
and every HF key consumed, or ValueError names the keys. An HF `Sam2Model` file (the image
model alone) fills the memory modules with NaN and says so in a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open

from sam_jax.config import ModelConfig, Sam2Config, variant_config
from sam_jax.convert import hf_keymap, hf_sam2_keymap
from sam_jax.convert.detect import detect_variant
from sam_jax.convert.hf_config import MODEL_TYPES, config_from_hf
from sam_jax.convert.hf_rules import HFName
from sam_jax.convert.keymap import flax_to_torch, misfit_message, torch_key, torch_to_flax
from sam_jax.convert.torch_reader import read_state_dict

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
# The top-level modules of every HF SAM / SAM 2 model: how a .safetensors file is told apart.
HF_PREFIXES = ("vision_encoder.", "prompt_encoder.", "mask_decoder.")
# Buffers some transformers versions save that are recomputed from the config, never learned.
_DERIVED = re.compile(r"(.*\.)?(rotary_emb\.\w+|position_ids)")


@dataclass(frozen=True)
class HFCheckpoint:
    """What an HF checkpoint holds: its parsed config.json (None when there is none) and
    its tensors by HF name, in the files' dtypes."""

    source: Path
    config: dict | None
    tensors: dict[str, np.ndarray]


def _safetensors_head(path: Path) -> tuple[dict, list[str]] | None:
    """(metadata, keys) of a safetensors file, or None if it is not one."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError):
        return None


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is an HF folder (it holds config.json or the weight files) or a
    .safetensors file of HF names (not one sam_jax's `save` wrote)."""
    p = Path(path)
    if p.is_dir():
        names = (CONFIG_FILE, SAFETENSORS_FILE, INDEX_FILE, TORCH_FILE)
        return any((p / name).is_file() for name in names)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return False
    head = _safetensors_head(p)
    if head is None or head[0].get("format") == "sam_jax":
        return False
    return any(key.startswith(HF_PREFIXES) for key in head[1])


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy (bfloat16 / float8 as ml_dtypes arrays)."""
    tensors: dict[str, np.ndarray] = {}
    exotic = []  # dtypes numpy lacks, which the numpy reader refuses
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                try:
                    tensors[key] = f.get_tensor(key)
                except TypeError:
                    exotic.append(key)
        if exotic:  # the flax reader has them; read on the host, whatever the default device
            with jax.default_device(jax.devices("cpu")[0]):
                with safe_open(str(path), framework="flax") as f:
                    tensors.update({key: np.asarray(f.get_tensor(key)) for key in exotic})
    except (SafetensorError, OSError, TypeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    return tensors


def _read_shards(folder: Path) -> dict[str, np.ndarray]:
    """Tensors of a sharded checkpoint: its index maps each key to a shard file."""
    try:
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder / INDEX_FILE} is not a safetensors index: {e!r}") from e
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_read_safetensors(folder / shard))
    return tensors


def _read_config(folder: Path) -> dict | None:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no config object")
    return config


def read_hf(path: str | os.PathLike) -> HFCheckpoint:
    """Read an HF folder, or a .safetensors file (with the config.json beside it when that
    one describes an HF SAM / SAM 2 model). ValueError naming the file when unreadable."""
    p = Path(path)
    if p.is_file():
        config = _read_config(p.parent)
        if config is not None and config.get("model_type") not in MODEL_TYPES:
            config = None  # a config.json of something else that happens to sit beside it
        return HFCheckpoint(p, config, _read_safetensors(p))
    if (p / SAFETENSORS_FILE).is_file():
        tensors = _read_safetensors(p / SAFETENSORS_FILE)
    elif (p / INDEX_FILE).is_file():
        tensors = _read_shards(p)
    elif (p / TORCH_FILE).is_file():
        tensors = read_state_dict(p / TORCH_FILE)
    else:
        raise ValueError(
            f"{p} holds no weights: expected {SAFETENSORS_FILE}, {INDEX_FILE} or {TORCH_FILE}"
        )
    return HFCheckpoint(p, _read_config(p), tensors)


def hf_model_config(
    ckpt: HFCheckpoint, variant: str | None = None, image_size: int | None = None
) -> ModelConfig:
    """The model config: `variant` if given, else config.json's, else the variant the
    tensor shapes fit; at `image_size` if given."""
    if variant is not None:
        config = variant_config(variant)
    elif ckpt.config is not None:
        config = config_from_hf(ckpt.config)
    else:
        config = variant_config(detect_variant(ckpt.tensors))
    return config if image_size is None else dataclasses.replace(config, image_size=image_size)


def _names(config: ModelConfig, meta_keys: list[str]) -> tuple[dict[str, HFName], dict]:
    """The key map and HF's aliases for the model family of `config`."""
    if isinstance(config, Sam2Config):
        return hf_sam2_keymap.sam2_hf_names(meta_keys), hf_sam2_keymap.ALIASES
    return hf_keymap.sam_hf_names(meta_keys), hf_keymap.ALIASES


def _merge_aliases(tensors: dict[str, np.ndarray], aliases: Mapping[str, str]) -> dict:
    """Fold each alias into its primary key; ValueError when both are there and differ."""
    out = dict(tensors)
    for alias, primary in aliases.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if primary in out and not np.array_equal(out[primary], value):
            raise ValueError(f"{alias} and {primary} hold different values; they must be equal")
        out.setdefault(primary, value)
    return out


def _expected_shapes(names: Mapping[str, HFName], flat: Mapping, paths: Mapping) -> dict:
    """HF key -> the shape the model expects it to have (stacked keys: rows x row shape)."""
    torch_shapes = {  # a zero-strided view: permuted without allocating the weights
        k: flax_to_torch(p[1:], np.broadcast_to(np.uint8(0), flat[p].shape)).shape
        for k, p in paths.items()
    }
    rows: dict[str, list[str]] = {}
    for meta, name in names.items():
        rows.setdefault(name.key, []).append(meta)
    return {
        key: torch_shapes[metas[0]]
        if names[metas[0]].row is None
        else (len(metas), *torch_shapes[metas[0]][1:])
        for key, metas in rows.items()
    }


def hf_to_variables(ckpt: HFCheckpoint, config: ModelConfig, target: Mapping) -> dict:
    """Fill the variables tree shaped like `target` (arrays or ShapeDtypeStructs of a model
    built from `config`) from the HF tensors, strictly: ValueError naming every missing or
    unused HF key with its shape, or the first shape mismatch with both shapes."""
    flat = flatten_dict(dict(target))
    paths = {torch_key(p[1:]): p for p in flat}  # p[0] is the collection name
    names, aliases = _names(config, list(paths))
    tensors = _merge_aliases(ckpt.tensors, aliases)
    expected = _expected_shapes(names, flat, paths)
    nan_keys = _image_only_keys(config, names, tensors)
    out, missing, used = {}, [], set()
    for meta, path in paths.items():
        spec, key = flat[path], names[meta].key
        if meta in nan_keys:
            out[path] = np.full(spec.shape, np.nan, spec.dtype)
            continue
        if key not in tensors:
            missing.append(f"{key} {expected[key]}")
            continue
        src = np.asarray(tensors[key])
        if src.shape != expected[key]:
            raise ValueError(
                f"shape mismatch for {key!r}: the checkpoint has {src.shape}, "
                f"the model expects {expected[key]}"
            )
        row = names[meta].row
        src = src if row is None else src[row : row + 1]
        out[path] = np.ascontiguousarray(torch_to_flax(path[1:], src), dtype=spec.dtype)
        used.add(key)
    unused = [
        f"{k} {tuple(np.shape(v))}"
        for k, v in tensors.items()
        if k not in used and not _DERIVED.fullmatch(k)
    ]
    if missing or unused:
        raise ValueError(misfit_message(missing, unused))
    if nan_keys:
        warnings.warn(
            f"{ckpt.source}: an image-only SAM 2 checkpoint (transformers' Sam2Model): the "
            f"{len(nan_keys)} memory-path variables it lacks are NaN; use it for images, not "
            "video tracking",
            stacklevel=2,
        )
    return unflatten_dict(out)


def _image_only_keys(
    config: ModelConfig, names: Mapping[str, HFName], tensors: Mapping[str, np.ndarray]
) -> frozenset[str]:
    """The memory-path Meta keys to fill with NaN: all of them when the file holds none of
    them (an HF Sam2Model file), else none (so that a partial memory path is an error)."""
    if not isinstance(config, Sam2Config):
        return frozenset()
    memory = [k for k in names if hf_sam2_keymap.is_memory_key(k)]
    if any(names[k].key in tensors for k in memory):
        return frozenset()
    return frozenset(memory)


def is_image_only(variables: Mapping) -> bool:
    """Whether SAM 2 variables came from an image-only file (their memory path is NaN)."""
    tpos = dict(variables).get("params", {}).get("maskmem_tpos_enc")
    return tpos is not None and bool(np.isnan(np.asarray(tpos)).all())
