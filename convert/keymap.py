"""Torch state_dict keys <-> Flax variable paths, and the weight layout fixes between them.

Flax modules are named after the torch modules they mirror, with list indices joined by an
underscore (torch `blocks.3.attn` is Flax `blocks_3/attn`), so the key of every variable is
derived from its path; only leaf names and kernel layouts need rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

# Flax leaf name -> torch leaf name (others keep their name).
LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
}

# Modules that are torch ConvTranspose2d, whose weight is (in, out, kh, kw), not (out, in, kh, kw):
# SAM's mask upscaling and the upsampling levels of SAM 3's vision necks.
CONV_TRANSPOSE_MODULES = frozenset(
    {"output_upscaling_0", "output_upscaling_3", "dconv_2x2", "dconv_2x2_0", "dconv_2x2_1"}
)

_INDEXED = re.compile(r"(.*\D)_(\d+)")
# Torch attribute names that end in _<digit> but are not list entries (CLIP's block norms).
LITERAL_NAMES = frozenset({"ln_1", "ln_2"})


def torch_key(path: tuple[str, ...]) -> str:
    """('image_encoder', 'blocks_3', 'attn', 'qkv', 'kernel') -> 'image_encoder.blocks.3.attn.qkv.weight'."""
    parts: list[str] = []
    for name in path[:-1]:
        m = None if name in LITERAL_NAMES else _INDEXED.fullmatch(name)
        parts.extend((m[1], m[2]) if m else (name,))
    parts.append(LEAF_TO_TORCH.get(path[-1], path[-1]))
    return ".".join(parts)


def _kernel_perm(path: tuple[str, ...], ndim: int) -> tuple[int, ...] | None:
    """Axis permutation taking a torch weight to the Flax kernel at `path` (None: as is)."""
    if path[-1] != "kernel":
        return None
    if ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return (1, 0)
    if ndim == 4:  # Conv (out, in, kh, kw) / ConvTranspose (in, out, kh, kw) -> (kh, kw, in, out)
        return (2, 3, 0, 1) if path[-2] in CONV_TRANSPOSE_MODULES else (2, 3, 1, 0)
    if ndim == 3:  # Conv1d (out, in, k) -> (k, in, out)
        return (2, 1, 0)
    return None


def torch_to_flax(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    perm = _kernel_perm(path, array.ndim)
    return array if perm is None else np.transpose(array, perm)


def flax_to_torch(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
    perm = _kernel_perm(path, array.ndim)
    return array if perm is None else np.transpose(array, np.argsort(perm))


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return flax_to_torch(path, np.empty(shape, np.uint8)).shape


def state_dict_to_variables(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping,
    ignored: frozenset[str] = frozenset(),
) -> dict:
    """Fill the variables tree shaped like `target` (a pytree of arrays or ShapeDtypeStruct)
    from a torch state_dict, strictly.

    Every variable must be found with a fitting shape and every source key used (BatchNorm's
    `num_batches_tracked` counters and the keys in `ignored` excepted); otherwise ValueError
    names the key(s) and shapes.
    """
    flat = flatten_dict(dict(target))
    out, used, missing = {}, set(), []
    for full_path, spec in flat.items():
        path = full_path[1:]  # drop the collection name ('params', 'batch_stats')
        key = torch_key(path)
        if key not in state_dict:
            missing.append(f"{key} {_torch_shape(path, tuple(spec.shape))}")
            continue
        src = np.asarray(state_dict[key])
        arr = torch_to_flax(path, src)
        if arr.shape != tuple(spec.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: the checkpoint has {tuple(src.shape)}, "
                f"the model expects {_torch_shape(path, tuple(spec.shape))}"
            )
        out[full_path] = np.ascontiguousarray(arr, dtype=spec.dtype)
        used.add(key)
    unused = [
        f"{k} {tuple(np.shape(v))}"
        for k, v in state_dict.items()
        if k not in used and k not in ignored and not k.endswith(".num_batches_tracked")
    ]
    if missing or unused:
        raise ValueError(misfit_message(missing, unused))
    return unflatten_dict(out)


def misfit_message(missing: list[str], unused: list[str]) -> str:
    """The error text of a checkpoint that does not fit the model: the variables it lacks
    and the keys the model has no place for (the first 20 of each)."""
    lines = []
    if missing:
        lines.append(f"{len(missing)} model variable(s) missing from the checkpoint:")
        lines += [f"  {m}" for m in missing[:20]] + (["  ..."] if len(missing) > 20 else [])
    if unused:
        lines.append(f"{len(unused)} checkpoint key(s) the model has no place for:")
        lines += [f"  {u}" for u in unused[:20]] + (["  ..."] if len(unused) > 20 else [])
    return "checkpoint does not fit the model\n" + "\n".join(lines)


def variables_to_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
    """Inverse of `state_dict_to_variables` (BatchNorm counters are written as 0)."""
    sd: dict[str, np.ndarray] = {}
    for full_path, value in flatten_dict(dict(variables)).items():
        path = full_path[1:]
        sd[torch_key(path)] = np.ascontiguousarray(flax_to_torch(path, np.asarray(value)))
        if full_path[0] == "batch_stats" and path[-1] == "mean":
            sd[torch_key(path[:-1] + ("num_batches_tracked",))] = np.zeros((), np.int64)
    return sd
