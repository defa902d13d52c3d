"""Training past one device with JAX's own sharding: a 1-D device mesh, the batch split
across it (data parallel), and optionally every large array split along one of its axes
(fully sharded parameters and optimizer state, for the big encoders).

    mesh = make_mesh()                                   # all devices on axis "data"
    state = shard_tree(state, mesh, fsdp=True)           # params + optimizer state
    images, targets = shard_batch((images, targets), mesh)
    state, metrics = step(state, images, targets, key)   # same jitted step; XLA partitions it
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all by default)."""
    devices = jax.devices()[: num_devices or len(jax.devices())]
    return Mesh(np.asarray(devices), (AXIS,))


def fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = 2**12) -> P:
    """Shard the largest axis divisible by n; small or indivisible arrays stay replicated."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    axes = sorted(range(len(shape)), key=lambda a: -shape[a])
    for a in axes:
        if shape[a] % n == 0:
            spec = [None] * len(shape)
            spec[a] = AXIS
            return P(*spec)
    return P()


def shard_tree(tree: Any, mesh: Mesh, fsdp: bool = True) -> Any:
    """Place every array of `tree` on `mesh`: FSDP-sharded, or replicated when fsdp=False."""
    n = mesh.devices.size

    def place(x):
        spec = fsdp_spec(np.shape(x), n) if fsdp else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Split the leading (batch) axis of every array across the mesh."""
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(AXIS))), batch)
