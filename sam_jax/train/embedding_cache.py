"""Image-encoder outputs cached by dataset index, for fine-tuning behind a frozen encoder.

    cache = EmbeddingCache(model, variables, images_of, batch_size=8, directory="emb/")
    emb = cache(np.array([3, 17]))     # encode_image's pytree for images 3 and 17, (2, ...)

Decoder-only (or prompt-and-decoder) fine-tuning never changes the image encoder, so each
image's embedding is the same at every step: it is computed once, by a jit-compiled
`encode_image`, and then read back, to be passed where a loss takes embeddings in place of
images (`interactive_loss` does). This is only correct WITHOUT augmentation: an index
stands for the image `images_of` returned the first time it was asked, so randomly flipped,
cropped or colour-jittered images would each need their own embedding. It is also only
correct while what `encode_image` computes stays frozen: for SAM 2 that includes the mask
decoder's conv_s0 / conv_s1, which project high_res_features once per image (they get no
gradient through cached features).

What is stored per index: `encode_image`'s outputs that depend on the image, each once.
Outputs that are the same array as another (SAM 2's backbone_fpn[:2] is high_res_features)
and outputs that do not depend on the image (SAM 2's vision_pos_enc, which at 1024 px would
be most of the bytes) are found from the encoder's jaxpr and rebuilt on reading.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from sam_jax.checkpoint import atomic_write

_SHARED = "shared.npz"  # the image-independent outputs, written before any index's file


def _leaf_layout(fn: Callable, variables: Any, image: jax.ShapeDtypeStruct) -> tuple[list, list]:
    """For each output leaf of fn(variables, image): the index of the first leaf that is the
    same array (itself if none), and whether it depends on the image at all. Read from the
    jaxpr; a nested call that takes the image counts as making every output image-dependent,
    so the answer errs toward storing."""
    closed = jax.make_jaxpr(fn)(variables, image)
    jaxpr = closed.jaxpr
    depends = set(jaxpr.invars[len(jax.tree.leaves(variables)) :])
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jax_core.Literal) and v in depends for v in eqn.invars):
            depends.update(eqn.outvars)
    outs = jaxpr.outvars
    owner = [next(j for j, w in enumerate(outs) if w is v) for v in outs]
    varies = [not isinstance(v, jax_core.Literal) and v in depends for v in outs]
    return owner, varies


def _write_npz(path: Path, arrays: list[np.ndarray]) -> None:
    """arrays as arr_0, arr_1, ... of one .npz, atomically (np.savez names a path .npz)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays)

    atomic_write(path, write)


def _check_indices(indices: Any) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
        raise ValueError(
            f"indices must be a 1-D array of non-negative integers; got {idx.dtype} {idx.shape}"
        )
    return idx


class EmbeddingCache:
    """`encode_image`'s outputs by dataset index, each image encoded once (see the module
    docstring; only correct without augmentation).

    images_of(indices (N,)) -> (N, S, S, 3) float32: the normalised model inputs of those
    dataset indices. batch_size: images per encoder call (the last call of a fill is padded
    to it, so one shape compiles). directory: None keeps the embeddings in memory; else one
    `<index>.npz` per index there, each written atomically, read back by later instances
    (the directory belongs to one model, weights and preprocessing).
    `num_encoded` counts the images encoded so far by this instance.
    """

    def __init__(
        self,
        model: Any,
        variables: Any,
        images_of: Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int = 1,
        directory: str | os.PathLike | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        size = model.config.image_size
        # on the device once, not copied from the host at every encoder call
        self._variables, self._images_of = jax.device_put(variables), images_of
        self._batch = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32)
        encode = lambda v, x: model.apply(v, x, method="encode_image")
        self._encode = jax.jit(encode)
        out = jax.eval_shape(encode, variables, self._batch)
        leaves, self._treedef = jax.tree.flatten(out)
        self._specs = [(tuple(x.shape[1:]), np.dtype(x.dtype)) for x in leaves]
        self._owner, varies = _leaf_layout(encode, variables, self._batch)
        # stored per index: leaves that vary with the image and are no other leaf's copy
        self._stored = [i for i, o in enumerate(self._owner) if o == i and varies[i]]
        self._constant = [i for i, o in enumerate(self._owner) if o == i and not varies[i]]
        self._shared: list[np.ndarray] | None = None if self._constant else []
        self._directory = None if directory is None else Path(directory)
        self._memory: dict[int, list[np.ndarray]] = {}
        self.num_encoded = 0

    # ------------------------------------------------------------------------ storage

    def _path(self, index: int) -> Path:
        return self._directory / f"{index}.npz"

    def _has(self, index: int) -> bool:
        if self._directory is None:
            return index in self._memory
        return self._path(index).exists()

    def _read(self, path: Path, leaves: list[int]) -> list[np.ndarray]:
        """The arrays of one .npz, checked against the shapes of `leaves`."""
        try:
            with np.load(path) as f:
                arrays = [f[f"arr_{k}"] for k in range(len(leaves))]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not an embedding file of this cache ({e})") from e
        for a, i in zip(arrays, leaves, strict=True):
            if (a.shape, a.dtype) != self._specs[i]:
                raise ValueError(
                    f"{path}: holds {a.dtype} {a.shape} where this model's encoder gives "
                    f"{self._specs[i][1]} {self._specs[i][0]}; was it written for another "
                    "model or image size?"
                )
        return arrays

    def _load(self, index: int) -> list[np.ndarray]:
        if self._directory is None:
            return self._memory[index]
        return self._read(self._path(index), self._stored)

    def _shared_leaves(self) -> list[np.ndarray] | None:
        """The image-independent outputs (no batch axis), from memory or the directory."""
        if self._shared is None and self._directory is not None:
            path = self._directory / _SHARED
            if path.exists():
                self._shared = self._read(path, self._constant)
        return self._shared

    # ------------------------------------------------------------------------ encoding

    def _fill(self, indices: list[int]) -> None:
        """Encode `indices` (distinct) batch_size at a time and store what they give."""
        b = self._batch.shape[0]
        for start in range(0, len(indices), b):
            chunk = indices[start : start + b]
            images = np.asarray(self._images_of(np.asarray(chunk)), np.float32)
            want = (len(chunk), *self._batch.shape[1:])
            if images.shape != want:
                raise ValueError(
                    f"images_of gave {images.shape} for {len(chunk)} indices; want {want}"
                )
            pad = np.repeat(images[-1:], b - len(chunk), axis=0)
            out = jax.tree.leaves(self._encode(self._variables, np.concatenate([images, pad])))
            out = [np.asarray(x) for x in out]
            self.num_encoded += len(chunk)
            if self._shared_leaves() is None:
                self._shared = [out[i][0] for i in self._constant]
                if self._directory is not None:
                    _write_npz(self._directory / _SHARED, self._shared)
            for row, index in enumerate(chunk):
                arrays = [out[i][row] for i in self._stored]
                if self._directory is None:
                    self._memory[index] = arrays
                else:
                    _write_npz(self._path(index), arrays)

    def __call__(self, indices: np.ndarray) -> Any:
        """encode_image's pytree for images `indices` (N,): every leaf (N, ...) numpy (leaves
        that are one array there are one array here; image-independent ones are read-only
        broadcasts), encoding (once) those not stored yet."""
        idx = [int(i) for i in _check_indices(indices)]
        missing = list(dict.fromkeys(i for i in idx if not self._has(i)))
        if not missing and idx and self._shared_leaves() is None:
            missing = idx[:1]  # the image-independent outputs are lost: encode one again
        self._fill(missing)
        per_index = [self._load(i) for i in idx]
        shared = self._shared_leaves() or []
        leaves: list[Any] = [None] * len(self._owner)
        for k, i in enumerate(self._stored):
            shape, dtype = self._specs[i]
            rows = [arrays[k] for arrays in per_index]
            leaves[i] = np.stack(rows) if rows else np.zeros((0, *shape), dtype)
        for k, i in enumerate(self._constant):
            shape, dtype = self._specs[i]
            one = shared[k] if idx else np.zeros(shape, dtype)
            leaves[i] = np.broadcast_to(one, (len(idx), *shape))
        return jax.tree.unflatten(self._treedef, [leaves[o] for o in self._owner])
