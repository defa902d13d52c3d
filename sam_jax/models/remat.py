"""Rematerialisation that bounds a backward pass's memory to one block's activations.

`nn.remat` alone does not bound it on XLA:CPU: its schedulers may run every block's
recomputation right after the forward pass, or every weight-gradient product at the end,
and both keep all blocks' activations alive at once. `recompute_in_backward` pins the order
with data dependencies.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def recompute_in_backward(block: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
    """`block(x)` keeping only x (and the block's parameters) for the backward pass, which
    recomputes the block's activations where it takes the block's gradient.

    `nn.remat` with the order of the backward pass pinned by data dependencies: the
    recomputation waits for the block's output cotangent, and the input cotangent goes on
    to the previous block only once the parameter gradients exist. Without them XLA may
    schedule every block's recomputation right after the forward pass, or the weight-
    gradient products at the very end, either of which keeps every block's activations
    alive at once (XLA:CPU removes optimization barriers before it schedules, so they
    cannot pin the order). The values of `block(x)`, its gradients up to float rounding;
    reverse mode only (a custom VJP).
    """
    detached = block.clone(parent=None)  # for the backward pass, outside the module scope

    def forward(mdl: nn.Module, x: jnp.ndarray) -> tuple[jnp.ndarray, tuple]:
        return mdl(x), (mdl.variables, x)

    def backward(saved: tuple, g: jnp.ndarray) -> tuple:
        variables, x = saved
        _, vjp = jax.vjp(detached.apply, variables, _after(x, g))
        dvars, dx = vjp(g)
        return dvars, _after(dx, dvars)

    return nn.custom_vjp(lambda mdl, x: mdl(x), forward, backward)(block, x)


def _after(x: jnp.ndarray, deps: Any) -> jnp.ndarray:
    """x plus 0 * (one element of each array in `deps`): the same x, which XLA can no longer
    compute before those arrays (it does not fold 0 * v for floats, v might be NaN; a non-
    finite dependency turns x into NaN, where the gradient was lost anyway)."""
    probe = sum(jnp.ravel(d)[0].astype(jnp.float32) for d in jax.tree.leaves(deps))
    return x + (probe * 0.0).astype(x.dtype)
