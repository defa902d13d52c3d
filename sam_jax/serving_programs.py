"""The programs `sam_jax.serving` exports, as flat functions of (variables, *arrays).

A `Program` is a pure function `fn(variables, *inputs) -> tuple of arrays` with named
inputs (ShapeDtypeStructs, some dimensions symbolic) and named outputs. Nothing is a
pytree at its boundary, so a serialized program is called with plain arrays in the order
its manifest lists them.

Symbolic dimensions (each >= 1; `jax.export` checks them against each other at call time):
B images per encoder call, K prompts on one image, N points per prompt, O tracked objects,
C conditioning-frame slots per object.

* encoder: image (B, S, S, 3) uint8, already letterboxed -> SAM: image_embeddings
  (B, g, g, D); SAM 2: vision_features (B, g, g, D), high_res_0 (B, 4g, 4g, D/8),
  high_res_1 (B, 2g, 2g, D/4). The program normalises with the config's pixel mean / std.
* decoder (M = 3, multimask output) and decoder_single (M = 1): the encoder outputs of one
  image (batch 1, shared by the K prompts), point_coords (K, N, 2), point_labels (K, N),
  boxes (K, 4), mask_inputs (K, m, m, 1) and three () bool switches has_points, has_box,
  has_mask saying which prompts exist -> low_res_logits (K, M, m, m), iou (K, M) and, for
  SAM 2, object_score_logits (K, 1). Each of the 8 combinations of switches runs the
  model's `predict_masks` with the absent prompts as None (the inputs of an absent prompt
  are ignored), so every output equals `predict_masks` of the same prompts.
* track_step (SAM 2): `sam_jax.tracking.track_step` over the `MemoryBank` fields then the
  `FrameInput` fields, in their dataclass order (`memory.<field>`, `frame.<field>`) ->
  the new bank's fields then the `TrackOutput` fields; non_overlap_for_memory False.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.config import Sam2Config
from sam_jax.tracking.memory_bank import MemoryBank, empty_bank
from sam_jax.tracking.track_step import FrameInput, TrackOutput, empty_frame_input, track_step

Spec = tuple[str, jax.ShapeDtypeStruct]

SAM2_FEATURES = ("vision_features", "high_res_0", "high_res_1")
SAM_FEATURES = ("image_embeddings",)
PROMPT_SWITCHES = ("has_points", "has_box", "has_mask")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """One exportable function: fn(variables, *inputs) -> outputs, all flat arrays."""

    name: str
    fn: Callable[..., tuple[jax.Array, ...]]
    inputs: tuple[Spec, ...]
    outputs: tuple[str, ...]
    description: str


def is_sam2(model: Any) -> bool:
    return isinstance(model.config, Sam2Config)


def _sds(shape: tuple, dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def encoder_program(model: Any) -> Program:
    """(B, S, S, 3) uint8 letterboxed images -> the image features (see module docstring)."""
    cfg = model.config
    s = cfg.image_size
    mean = np.asarray(cfg.pixel_mean, np.float32)
    std = np.asarray(cfg.pixel_std, np.float32)
    sam2 = is_sam2(model)
    (b,) = jax.export.symbolic_shape("B")

    def fn(variables: Any, image: jax.Array) -> tuple[jax.Array, ...]:
        x = (image.astype(jnp.float32) - mean) / std
        out = model.apply(variables, x, method="encode_image")
        if sam2:  # only what the decoder and the tracker read
            return (out["vision_features"], *out["high_res_features"])
        return (out,)

    return Program(
        name="encoder",
        fn=fn,
        inputs=(("image", _sds((b, s, s, 3), jnp.uint8)),),
        outputs=SAM2_FEATURES if sam2 else SAM_FEATURES,
        description="letterboxed uint8 images -> image features (normalised inside)",
    )


def feature_specs(model: Any, variables: Any) -> tuple[Spec, ...]:
    """The encoder's outputs for one image, as (name, ShapeDtypeStruct) of batch 1."""
    enc = encoder_program(model)
    s = model.config.image_size
    outs = jax.eval_shape(enc.fn, variables, _sds((1, s, s, 3), jnp.uint8))
    return tuple((n, _sds(o.shape, o.dtype)) for n, o in zip(enc.outputs, outs, strict=True))


def _features_of(model: Any, arrays: tuple[jax.Array, ...], k: Any) -> Any:
    """The encoder outputs of one image, repeated for K prompts, as `predict_masks` takes
    them (an array for SAM, a dict for SAM 2)."""
    feats = [jnp.broadcast_to(f, (k, *f.shape[1:])) for f in arrays]
    if is_sam2(model):
        return {"vision_features": feats[0], "high_res_features": feats[1:]}
    return feats[0]


def decoder_program(model: Any, features: tuple[Spec, ...], multimask_output: bool) -> Program:
    """Prompts on one image's features -> low-res logits, IoU (and SAM 2's object scores)."""
    m = model.config.mask_input_size
    k, n = jax.export.symbolic_shape("K, N")
    nf = len(features)
    prompts = (
        ("point_coords", _sds((k, n, 2), jnp.float32)),
        ("point_labels", _sds((k, n), jnp.int32)),
        ("boxes", _sds((k, 4), jnp.float32)),
        ("mask_inputs", _sds((k, m, m, 1), jnp.float32)),
    ) + tuple((name, _sds((), bool)) for name in PROMPT_SWITCHES)

    def fn(variables: Any, *args: jax.Array) -> tuple[jax.Array, ...]:
        coords, labels, boxes, masks, has_points, has_box, has_mask = args[nf:]
        feats = _features_of(model, args[:nf], coords.shape[0])

        def branch(use_points: bool, use_box: bool, use_mask: bool) -> Callable:
            def run(_: None) -> tuple[jax.Array, ...]:
                out = model.apply(
                    variables,
                    feats,
                    point_coords=coords if use_points else None,
                    point_labels=labels if use_points else None,
                    boxes=boxes if use_box else None,
                    mask_inputs=masks if use_mask else None,
                    multimask_output=multimask_output,
                    method="predict_masks",
                )
                return tuple(out)

            return run

        # Only the taken branch runs; the order matches the index below.
        branches = [branch(*used) for used in itertools.product((False, True), repeat=3)]
        index = sum(
            jnp.asarray(flag, jnp.int32) * w
            for flag, w in zip((has_points, has_box, has_mask), (4, 2, 1), strict=True)
        )
        return jax.lax.switch(index, branches, None)

    outputs = ("low_res_logits", "iou")
    if is_sam2(model):
        outputs += ("object_score_logits",)
    count = 3 if multimask_output else 1
    return Program(
        name="decoder" if multimask_output else "decoder_single",
        fn=fn,
        inputs=features + prompts,
        outputs=outputs,
        description=f"prompts on one image -> {count} mask(s) per prompt",
    )


def _named_leaves(prefix: str, tree: Any) -> list[tuple[str, Any]]:
    """(prefix.field, leaf) in the tree's flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(prefix + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _symbolic_bank_specs(model: Any) -> tuple[list[Spec], list[Spec]]:
    """Specs of the MemoryBank and FrameInput leaves with O objects and C cond slots."""
    cfg = model.config
    o, c = jax.export.symbolic_shape("O, C")
    g = cfg.embed_size
    rings = (cfg.num_maskmem - 1, cfg.max_obj_ptrs_in_encoder - 1)
    bank = empty_bank(1, 1, g, cfg.mem_dim, cfg.d_model, *rings)
    frame = empty_frame_input(1, g, cfg.d_model, cfg.mem_dim)

    def sym(name: str, x: Any, per_object: bool) -> Spec:
        shape = list(np.shape(x))
        if per_object and shape:
            shape[0] = o
        if name.startswith("memory.cond_"):
            shape[1] = c
        return name, _sds(shape, np.asarray(x).dtype)

    per_object_frame = {"frame.kind", "frame.stored_feats", "frame.stored_ptrs"}
    bank_specs = [sym(n, x, True) for n, x in _named_leaves("memory", bank)]
    frame_specs = [sym(n, x, n in per_object_frame) for n, x in _named_leaves("frame", frame)]
    return bank_specs, frame_specs


def track_step_program(model: Any) -> Program:
    """SAM 2's `track_step` with its memory and frame flattened (module docstring)."""
    bank_specs, frame_specs = _symbolic_bank_specs(model)
    nb = len(bank_specs)
    bank_def = jax.tree_util.tree_structure(MemoryBank(*([0] * nb)))
    frame_def = jax.tree_util.tree_structure(FrameInput(*([0] * len(frame_specs))))
    out_names = [n for n, _ in bank_specs]
    out_names += [f"outputs.{f.name}" for f in dataclasses.fields(TrackOutput)]

    def fn(variables: Any, *args: jax.Array) -> tuple[jax.Array, ...]:
        bank = jax.tree_util.tree_unflatten(bank_def, args[:nb])
        frame = jax.tree_util.tree_unflatten(frame_def, args[nb:])
        new_bank, out = track_step(model, variables, bank, frame)
        return tuple(jax.tree_util.tree_leaves((new_bank, out)))

    return Program(
        name="track_step",
        fn=fn,
        inputs=tuple(bank_specs + frame_specs),
        outputs=tuple(out_names),
        description="(memory, frame) -> (memory, outputs): one tracked frame of O objects",
    )


def programs_for(model: Any, variables: Any) -> list[Program]:
    """encoder, decoder, decoder_single, and for SAM 2 track_step."""
    feats = feature_specs(model, variables)
    programs = [
        encoder_program(model),
        decoder_program(model, feats, multimask_output=True),
        decoder_program(model, feats, multimask_output=False),
    ]
    if is_sam2(model):
        programs.append(track_step_program(model))
    return programs
