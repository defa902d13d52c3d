"""Exported programs for serving: a folder of serialized `jax.export` programs + manifest.

    manifest = export_programs(model, params, "served/", platforms=("cpu", "cuda"))
    programs = load_programs("served/")            # only jax, json and numpy
    feats = programs["encoder"](image=letterboxed_u8[None])
    out = programs["decoder"](**feats, point_coords=..., ...)   # {"low_res_logits", "iou"}

`export_programs` writes one `<name>.jax_export` file per program of
`sam_jax.serving_programs` (encoder, decoder, decoder_single, and SAM 2's track_step):
StableHLO serialized by `jax.export`, for every platform asked for, so that they run
without sam-jax's model code: `jax.export.deserialize(bytes).call(*arrays)`. Then
manifest.json lists each program's file, inputs and outputs (name, shape with symbolic
dimensions as strings, dtype) in calling order, the image preprocessing, the platforms
and the versions. The manifest is written last and removed first, so a folder holding a
manifest holds the files it names.

Parameters are baked into each program as constants by default (one self-contained file
per program, each holding only the weights it uses). A `jax.export` file is a flatbuffer,
which cannot exceed 2 GiB, so models above `MAX_BAKED_BYTES` of parameters (SAM ViT-H)
need `params_as_input=True`: the variables are then written once to params.npz (keys are
the '/'-joined paths, in `jax.tree_util` flattening order, listed in the manifest) and
every program takes all of them, in that order, before its inputs.

Attention is exported as the materialised reference product (`sam_jax.models.attention`),
which lowers on every platform and for symbolic shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax.checkpoint import atomic_write, build_from_config
from sam_jax.models.attention import default_impl
from sam_jax.serving_programs import Program, is_sam2, programs_for
from sam_jax.tracking.track_step import COND, STORED, TRACK

MANIFEST = "manifest.json"
PARAMS_FILE = "params.npz"
SUFFIX = ".jax_export"
FORMAT = "sam_jax.serving"
FORMAT_VERSION = 1
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
# A little under flatbuffers' 2 GiB, leaving room for the program itself.
MAX_BAKED_BYTES = 1_900_000_000
_EXTRA = "pip install 'sam-jax[export]' (or pip install flatbuffers)"


def require_flatbuffers() -> None:
    """ValueError naming the `export` extra when jax's serializer cannot be imported."""
    try:
        import flatbuffers  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"serializing jax.export programs needs the flatbuffers package: {_EXTRA}"
        ) from e


def check_platforms(platforms: str | Sequence[str]) -> tuple[str, ...]:
    """'cpu,cuda' or a sequence of names -> a tuple of distinct names from PLATFORMS."""
    names = platforms.split(",") if isinstance(platforms, str) else list(platforms)
    names = [str(p).strip().lower() for p in names]
    if not names or not all(names):
        raise ValueError(f"platforms must be a comma-separated list of {', '.join(PLATFORMS)}")
    unknown = [p for p in names if p not in PLATFORMS]
    if unknown:
        hint = " (for GPUs say cuda or rocm)" if "gpu" in unknown else ""
        raise ValueError(
            f"unknown platform {unknown[0]!r}; choose from {', '.join(PLATFORMS)}{hint}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"platforms are repeated: {','.join(names)}")
    return tuple(names)


# ----------------------------------------------------------------------------- export


def _shape(aval: Any) -> list[int | str]:
    """Symbolic dimensions as their names, others as ints."""
    return [d if isinstance(d, int) else str(d) for d in aval.shape]


def _entries(names: Sequence[str], avals: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"name": n, "shape": _shape(a), "dtype": str(np.dtype(a.dtype))}
        for n, a in zip(names, avals, strict=True)
    ]


def _param_leaves(params: Any) -> tuple[list[str], list[np.ndarray], Any]:
    """('/'-joined paths, arrays, treedef) in jax's flattening order."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
    return names, [np.asarray(x) for _, x in flat], treedef


def _export(program: Program, params: Any, platforms: tuple[str, ...], as_input: bool) -> Any:
    """The jax.export.Exported of one program: params (jax arrays unless as_input) baked in,
    or its leading inputs."""
    specs = [s for _, s in program.inputs]
    if as_input:
        _, leaves, treedef = _param_leaves(params)
        n = len(leaves)

        def fn(*args: Any) -> Any:
            return program.fn(jax.tree_util.tree_unflatten(treedef, args[:n]), *args[n:])

        specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves] + specs
    else:

        def fn(*args: Any) -> Any:
            # Behind the barrier XLA treats the weights as it treats arguments: it does not
            # fold them into the arithmetic, which would round differently from the jitted
            # model and spend compile time on large constants.
            return program.fn(jax.lax.optimization_barrier(params), *args)

    with default_impl("reference"):
        return jax.export.export(jax.jit(fn), platforms=platforms)(*specs)


def _preprocessing(model: Any) -> dict[str, Any]:
    cfg = model.config
    s, m = cfg.image_size, cfg.mask_input_size
    return {
        "image_size": s,
        "letterbox": "scale by r = min(S/H, S/W) to (round(H r), round(W r)) with bilinear "
        "resampling (OpenCV INTER_LINEAR on uint8), place at the top-left of an S x S "
        "canvas filled with pad_value",
        "pad_value": 114,
        "pixel_mean": list(cfg.pixel_mean),
        "pixel_std": list(cfg.pixel_std),
        "normalised_by": "the encoder program (give it the letterboxed uint8 image)",
        "prompts": "(x, y) pixels of the original image times r",
        "mask_size": m,
        "postprocessing": f"low-res logits (m x m, m = {m}) cover the S x S letterboxed "
        f"frame: crop to (round(H r) m / S, round(W r) m / S), resize to (H, W), threshold 0",
    }


def _model_entry(model: Any) -> dict[str, Any]:
    cfg = model.config
    entry = {
        "name": cfg.name,
        "family": "sam2" if is_sam2(model) else "sam",
        "image_size": cfg.image_size,
        "embed_size": cfg.embed_size,
        "mask_size": cfg.mask_input_size,
    }
    if is_sam2(model):
        entry["track_step"] = {
            "kind": {"TRACK": TRACK, "COND": COND, "STORED": STORED},
            "recent_slots": cfg.num_maskmem - 1,
            "pointer_slots": cfg.max_obj_ptrs_in_encoder - 1,
            "non_overlap_for_memory": False,
            "empty_memory": "zeros / False in every memory input; memory.num_frames the "
            "video length, memory.reverse the tracking direction",
            "flattening": "inputs: MemoryBank fields then FrameInput fields, outputs: "
            "MemoryBank fields then TrackOutput fields, each in dataclass field order",
        }
    return entry


DIMS = {
    "B": "images per encoder call",
    "K": "prompts on one image",
    "N": "points per prompt",
    "O": "tracked objects",
    "C": "conditioning-frame slots per object",
}


def _header(model: Any, platforms: tuple[str, ...]) -> dict[str, Any]:
    """The manifest without its programs."""
    from sam_jax import __version__  # here: the package may import this module

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sam_jax_version": __version__,
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "model": _model_entry(model),
        "preprocessing": _preprocessing(model),
        "dims": DIMS,
        "params": "baked",
        "programs": {},
    }


def _resized(config: Any, image_size: int) -> Any:
    stride = config.encoder.stride
    if int(image_size) != image_size or image_size <= 0 or image_size % stride:
        raise ValueError(
            f"image_size must be a positive multiple of {stride} for {config.name}; "
            f"got {image_size}"
        )
    return dataclasses.replace(config, image_size=int(image_size))


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; the output must be a folder")


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_params(path: Path, names: list[str], leaves: list[np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **dict(zip(names, leaves, strict=True)))

    atomic_write(path, write)


def export_programs(
    model: Any,
    params: Mapping,
    out_dir: str | os.PathLike,
    *,
    image_size: int | None = None,
    platforms: str | Sequence[str] = ("cpu",),
    params_as_input: bool = False,
) -> dict[str, Any]:
    """Write the model's programs (see the module docstring) and manifest.json to out_dir;
    returns the manifest.

    image_size: export the model at S x S instead of its own (a multiple of the encoder's
    stride, as for `sam_jax.load(..., image_size=S)`). platforms: any of PLATFORMS
    ('cpu,cuda' or a sequence); lowering for an accelerator needs no accelerator.

    Raises ValueError, before writing anything, for an unknown platform, a bad image size,
    an output path that is a file, a missing flatbuffers package, or parameters too large
    to bake in.
    """
    platforms = check_platforms(platforms)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    require_flatbuffers()
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(params))
    if not params_as_input and nbytes > MAX_BAKED_BYTES:
        raise ValueError(
            f"{model.config.name}'s {nbytes / 2**30:.1f} GiB of parameters cannot be baked into "
            "a jax.export file (at most 2 GiB); use params_as_input=True (--params-as-input)"
        )
    if image_size is not None and image_size != model.config.image_size:
        model = build_from_config(_resized(model.config, image_size), dtype=model.dtype)
    programs = programs_for(model, params)  # traces the encoder: bad sizes fail here

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    manifest = _header(model, platforms)
    n_params = 0
    # Baked weights as jax arrays: numpy leaves cannot be indexed by tracers.
    source = params if params_as_input else jax.device_put(params)
    if params_as_input:
        names, leaves, _ = _param_leaves(params)
        _write_params(out_dir / PARAMS_FILE, names, leaves)
        manifest["params"] = {"file": PARAMS_FILE, "names": names}
        n_params = len(names)
    for program in programs:
        exported = _export(program, source, platforms, params_as_input)
        file = program.name + SUFFIX
        _write_bytes(out_dir / file, exported.serialize())
        manifest["programs"][program.name] = {
            "file": file,
            "description": program.description,
            # the avals give the shapes with the symbolic dimensions by name
            "inputs": _entries([n for n, _ in program.inputs], exported.in_avals[n_params:]),
            "outputs": _entries(program.outputs, exported.out_avals),
        }
    text = json.dumps(manifest, indent=2)
    _write_bytes(out_dir / MANIFEST, text.encode())
    return manifest


# ------------------------------------------------------------------------------- load


@dataclasses.dataclass(frozen=True)
class LoadedProgram:
    """A deserialized program: call it with its inputs positionally (manifest order) or
    by name; returns {output name: array} in manifest order."""

    name: str
    exported: Any  # jax.export.Exported
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    params: tuple[Any, ...] = ()

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        names = [i["name"] for i in self.inputs]
        if len(args) > len(names):
            raise ValueError(f"{self.name} takes {len(names)} inputs; got {len(args)}")
        given = dict(zip(names[: len(args)], args, strict=True))
        twice = sorted(set(given) & set(kwargs))
        unknown = sorted(set(kwargs) - set(names))
        given.update(kwargs)
        missing = [n for n in names if n not in given]
        if twice or unknown or missing:
            raise ValueError(
                f"{self.name}: inputs given twice {twice}, unknown {unknown}, missing "
                f"{missing}; it takes {names}"
            )
        out = self.exported.call(*self.params, *(given[n] for n in names))
        return {o["name"]: x for o, x in zip(self.outputs, out, strict=True)}


def load_programs(out_dir: str | os.PathLike) -> dict[str, LoadedProgram]:
    """The programs `export_programs` wrote to out_dir, by name, ready to call on this
    platform (parameters from params.npz bound when the programs take them). Uses only
    jax, json and numpy: no model code runs."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {out_dir}: not an export folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest")
    require_flatbuffers()
    params: tuple[Any, ...] = ()
    if isinstance(manifest["params"], dict):
        with np.load(out_dir / manifest["params"]["file"]) as z:
            params = tuple(jax.device_put(z[n]) for n in manifest["params"]["names"])
    programs = {}
    for name, entry in manifest["programs"].items():
        exported = jax.export.deserialize(bytearray((out_dir / entry["file"]).read_bytes()))
        programs[name] = LoadedProgram(
            name, exported, tuple(entry["inputs"]), tuple(entry["outputs"]), params
        )
    return programs
