"""Scaled dot-product attention behind one interface, with the bias kept in factored form.

    attention(q, k, v, *, bias=None, rel_pos=None, key_mask=None, scale=None, impl=None)

Layout (batch, tokens, heads, channels), as `jax.nn.dot_product_attention` takes it:
q (B, Nq, H, D), k (B, Nk, H, D), v (B, Nk, H or 1, Dv) -> (B, Nq, H, Dv). A v with one
head is shared by every head. The logits are (q . k) * scale (default D ** -0.5) plus:

- `rel_pos=(rel_h, rel_w)`: SAM ViT's decomposed relative position, the keys being the
  row-major tokens of a (kh, kw) grid (Nk = kh * kw); rel_h (B, H, Nq, kh) and
  rel_w (B, H, Nq, kw) add rel_h[.., key row] + rel_w[.., key column] to each logit;
- `bias`: an additive term broadcastable to (B, H, Nq, Nk) (TinyViT's per-window table),
  finite (exclude keys with `key_mask`, not with -inf);
- `key_mask` (B, Nk) bool: False keys get exactly zero weight; a query row with no valid
  key gives zeros (not NaN). Masked keys must still hold finite values (0 * NaN is NaN).

Implementations (`impl`), equal to float32 rounding in outputs and gradients:

- "reference": the (Nq, Nk) logits materialised, softmax normalised after the product
  with v (one division per output, not per logit); on CPU, large ones a few heads or
  windows, or a tile of one head's queries, at a time (`TILE_LOGITS_CPU`), so each
  piece's logits stay in cache;
- "blocked": online softmax over key blocks of `block_size` (default: the module's
  `BLOCK_SIZE`, read at trace time) (flash-attention style, pure
  JAX, any platform) with a custom VJP that recomputes each block in the backward pass.
  The bias is formed per block from its factors, so neither the forward nor the backward
  pass holds more than (Nq, block_size) logits per head; the saved state is the output
  and one log-sum-exp per query row;
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only, where the
  inputs allow it (no rel_pos; same shapes for k and v; float16 / bfloat16);
- "auto": cudnn where allowed on GPU, else "blocked" when B * H * Nq * Nk exceeds
  `BLOCKED_ABOVE` logits (`BLOCKED_ABOVE_CPU` on CPU, where the blocked scan is slower
  for small attentions and memory is plentiful), else "reference". It never picks cudnn on CPU.
  With `key_mask` and `key_blocks=n` (the keys come in runs of n that are often wholly
  masked: a fixed-shape memory bank's empty slots) it takes "blocked" with key blocks
  that tile those runs, since only the blocked path skips a block with no valid key.

`impl=None` uses the process-wide default: the environment variable SAM_JAX_ATTENTION
at import (one of the names above), else "auto"; change it with `set_default_impl(name)`
or, for a scope, `with default_impl(name): ...`. The default is
read when a function is traced: a jit-compiled function keeps the choice it was traced with.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from sam_jax.models.attention_blocked import blocked_attention as _blocked

IMPLS = ("auto", "reference", "blocked", "cudnn")
# Above this many logits per call "auto" goes blocked: one (H, 4096, 4096) global-attention
# matrix of SAM's ViT is 0.8 GB in float32, a 7-frame memory bank's 3.8 GB. On CPU the
# materialised product was measured faster for windows and host memory is large, so there
# it waits for logits of 4 GiB in float32.
BLOCKED_ABOVE = 1 << 25
BLOCKED_ABOVE_CPU = 1 << 30
BLOCK_SIZE = 512
# On CPU the materialised path forms at most about this many logits at once (a few heads or
# windows, or a tile of one head's queries): past it the softmax's passes over logits that
# no longer fit in cache, not the products, set the time. Read at trace time.
TILE_LOGITS_CPU = 1 << 22
# Below this many logits per (batch, head) pair the keys are transposed ahead of the product.
SMALL_PRODUCT = 1 << 20


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")


_default = os.environ.get("SAM_JAX_ATTENTION", "auto")
_check_impl(_default)


def set_default_impl(impl: str) -> None:
    """Set the implementation that `attention(..., impl=None)` uses from now on."""
    global _default
    _check_impl(impl)
    _default = impl


@contextlib.contextmanager
def default_impl(impl: str) -> Iterator[None]:
    """Within the block, `attention(..., impl=None)` uses `impl` (read at trace time)."""
    global _default
    _check_impl(impl)
    previous, _default = _default, impl
    try:
        yield
    finally:
        _default = previous


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    bias: jnp.ndarray | None = None,
    rel_pos: tuple[jnp.ndarray, jnp.ndarray] | None = None,
    key_mask: jnp.ndarray | None = None,
    scale: float | None = None,
    impl: str | None = None,
    block_size: int | None = None,
    key_blocks: int | None = None,
) -> jnp.ndarray:
    """softmax(q k^T * scale + bias terms) v; shapes and options in the module docstring."""
    b, nq, heads, d = q.shape
    nk = k.shape[1]
    if k.shape != (b, nk, heads, d) or v.shape[:2] != (b, nk) or v.shape[2] not in (1, heads):
        raise ValueError(f"attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}")
    if rel_pos is not None:
        kh, kw = rel_pos[0].shape[-1], rel_pos[1].shape[-1]
        if kh * kw != nk:
            raise ValueError(f"rel_pos grid {kh}x{kw} does not cover {nk} keys")
    if key_mask is not None and key_mask.shape != (b, nk):
        raise ValueError(f"key_mask must be {(b, nk)}, got {key_mask.shape}")
    scale = d**-0.5 if scale is None else scale
    v = jnp.broadcast_to(v, (b, nk, heads, v.shape[-1]))
    impl = _default if impl is None else impl
    _check_impl(impl)
    if impl == "auto":
        impl = _choose(q, k, v, bias, rel_pos)
        if impl == "reference" and key_mask is not None and key_blocks:
            impl, block_size = "blocked", block_size or _run_block(key_blocks)
    if impl == "reference":
        return _reference(q, k, v, bias, rel_pos, key_mask, scale)
    if impl == "blocked":
        return _blocked(q, k, v, bias, rel_pos, key_mask, scale, block_size or BLOCK_SIZE)
    return _cudnn(q, k, v, bias, rel_pos, key_mask, scale)


def _cudnn_allowed(q, k, v, rel_pos) -> bool:
    return (
        jax.default_backend() == "gpu"
        and rel_pos is None
        and k.shape == v.shape
        and q.dtype in (jnp.float16, jnp.bfloat16)
        and q.shape[-1] <= 128
    )


def _run_block(n: int) -> int:
    """Key block for runs of n keys: the largest divisor of n up to BLOCK_SIZE (so blocks
    never straddle two runs), or BLOCK_SIZE when that divisor is too small to be fast."""
    best = max(d for d in range(1, min(n, BLOCK_SIZE) + 1) if n % d == 0)
    return best if best * 4 >= min(n, BLOCK_SIZE) else BLOCK_SIZE


def _choose(q, k, v, bias, rel_pos) -> str:
    if _cudnn_allowed(q, k, v, rel_pos):
        return "cudnn"
    b, nq, heads, _ = q.shape
    limit = BLOCKED_ABOVE_CPU if jax.default_backend() == "cpu" else BLOCKED_ABOVE
    return "blocked" if b * heads * nq * k.shape[1] > limit else "reference"


def _reference(q, k, v, bias, rel_pos, key_mask, scale):
    """Materialised logits; the row statistics are the blocked path's, in one block.

    Logits, softmax statistics and the normalisation are float32 whatever the inputs; for
    bfloat16 inputs the probabilities meet v in bfloat16 (float32 accumulation), as the
    blocked path does, and the output is cast back to q's dtype.

    Both products run head-major, (B, H, N, D), on the small operands' transposes: left to
    itself XLA:CPU transposes the (H, Nq, Nk) probabilities instead. The scale goes on q
    (as the reference ViT applies it), so the logits are never rescaled in a pass of their
    own. On CPU, past `TILE_LOGITS_CPU` logits, they are formed a few (batch, head) pairs or
    one pair and a tile of queries at a time (rows are independent: the values are the
    same).
    """
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    q = heads_first((q.astype(jnp.float32) * scale).astype(q.dtype))
    k, v = heads_first(k), heads_first(v)
    rel_h, rel_w = (None, None) if rel_pos is None else rel_pos
    if bias is not None:
        bias = jnp.asarray(bias)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    dims = (*q.shape[:3], k.shape[2])
    static = all(isinstance(d, int) for d in dims)  # not so under shape-polymorphic export
    if static and math.prod(dims) > TILE_LOGITS_CPU and jax.default_backend() == "cpu":
        out = _in_pieces(q, k, v, bias, rel_h, rel_w, key_mask)
    else:
        out = _softmax_product(q, k, v, bias, rel_h, rel_w, key_mask)
    return heads_first(out).astype(q.dtype)


def _softmax_product(q, k, v, bias, rel_h, rel_w, key_mask):
    """softmax(q k^T + terms) v on head-major (B, H, N, D) arrays, q already scaled;
    (B, H, Nq, Dv) float32. With rel_pos the softmax runs over the keys as a (kh, kw) grid:
    the row and column terms then broadcast along plain axes, where a flat key axis would
    cost every logit an index division."""
    f32 = jnp.float32
    b, heads, nq, _ = q.shape
    nk = k.shape[2]
    # (symbolic shapes, under shape-polymorphic export, take the general form)
    small = isinstance(nq * nk, int) and nq * nk < SMALL_PRODUCT
    if small:
        # Many small products (windows): XLA:CPU's batched product with the keys' channels
        # on the last axis transposes each pair's keys on the fly, several times slower
        # than one transpose of k ahead of it. Large ones (global tiles) run faster as is.
        logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=f32)
    else:
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=f32)
    grid = (nk,) if rel_h is None else (rel_h.shape[-1], rel_w.shape[-1])
    keys = tuple(range(-len(grid), 0))

    def on_grid(x):  # (..., Nk or 1) -> (..., *grid) or (..., 1, ..., 1)
        return x.reshape(*x.shape[:-1], *(grid if x.shape[-1] == nk else (1,) * len(grid)))

    logits = on_grid(logits)
    if rel_h is not None:
        logits = logits + rel_h[..., :, None] + rel_w[..., None, :]
    if bias is not None:
        logits = logits + on_grid(bias)
    if key_mask is not None:
        logits = jnp.where(on_grid(key_mask[:, None, None, :]), logits, -jnp.inf)
    top = jnp.max(logits, axis=keys, keepdims=True)
    # Guards for rows with every key masked (max -inf, total 0: zeros, not NaN) where a mask
    # can cause them; for small products each costs XLA:CPU a pass over the logits. Large
    # ones keep the first: without it XLA:CPU fuses the row max into the product, slower.
    guard = key_mask is not None
    if guard or not small:
        top = jnp.where(jnp.isfinite(top), top, 0)
    e = jnp.exp(logits - jax.lax.stop_gradient(top))
    total = jnp.sum(e, axis=keys).reshape(b, heads, nq, 1)
    e = e.reshape(b, heads, nq, nk).astype(v.dtype)
    out = jnp.matmul(e, v, preferred_element_type=f32)
    return out / (jnp.where(total > 0, total, 1) if guard else total)


def _pieces(pairs: int, nq: int, nk: int) -> tuple[int, int]:
    """(group, tiles): about `TILE_LOGITS_CPU` logits per step, as `group` (batch, head)
    pairs (a divisor of `pairs`) at once when one pair's logits are fewer, else one pair
    and a tile of queries out of `tiles`."""
    per_pair = nq * nk
    if per_pair >= TILE_LOGITS_CPU:
        return 1, -(-per_pair // TILE_LOGITS_CPU)
    most = TILE_LOGITS_CPU // per_pair
    return max(g for g in range(1, min(most, pairs) + 1) if pairs % g == 0), 1


def _in_pieces(q, k, v, bias, rel_h, rel_w, key_mask):
    """`_softmax_product` a few (batch, head) pairs or one pair and a tile of queries at a
    time (a `lax.map` over groups of pairs, one over query tiles; `_pieces`), so a step's
    logits stay in cache through the softmax's passes over them. Queries are zero-padded
    to whole tiles."""
    b, heads, nq, _ = q.shape
    nk = k.shape[2]
    group, tiles = _pieces(b * heads, nq, nk)
    if group == b * heads and tiles == 1:
        return _softmax_product(q, k, v, bias, rel_h, rel_w, key_mask)
    groups = b * heads // group
    size = -(-nq // tiles)
    size += -size % 8 if tiles > 1 else 0
    tiles = -(-nq // size)
    pad = size * tiles - nq

    def pairs(x):  # (B|1, H|1, ...) -> (groups, group, 1, ...): a group is a batch of pairs
        x = jnp.broadcast_to(x, (b, heads, *x.shape[2:]))
        return x.reshape(groups, group, 1, *x.shape[2:])

    def query_tiles(x):  # (B|1, H|1, Nq, ...) -> (groups, tiles, group, 1, size, ...)
        x = pairs(x)
        x = jnp.pad(x, ((0, 0),) * 3 + ((0, pad),) + ((0, 0),) * (x.ndim - 4))
        x = x.reshape(groups, group, 1, tiles, size, *x.shape[4:])
        return jnp.moveaxis(x, 3, 1)

    per_query = {"q": query_tiles(q)}
    per_pair = {"k": pairs(k), "v": pairs(v)}
    if rel_h is not None:
        per_query["rel_h"], per_query["rel_w"] = query_tiles(rel_h), query_tiles(rel_w)
    if bias is not None:
        if bias.shape[2] == 1:
            per_pair["bias"] = pairs(bias)
        else:
            per_query["bias"] = query_tiles(bias)
    if key_mask is not None:
        mask = jnp.broadcast_to(key_mask[:, None], (b, heads, nk))
        per_pair["key_mask"] = mask.reshape(groups, group, nk)

    def step(xs):
        tiled, fixed = xs

        def tile(t):
            a = {**fixed, **t}
            return _softmax_product(
                a["q"],
                a["k"],
                a["v"],
                a.get("bias"),
                a.get("rel_h"),
                a.get("rel_w"),
                a.get("key_mask"),
            )

        return jax.lax.map(tile, tiled)

    out = jax.lax.map(step, (per_query, per_pair))  # (groups, tiles, group, 1, size, Dv)
    out = jnp.moveaxis(out, 1, 3).reshape(b, heads, tiles * size, -1)
    return out[:, :, :nq]


def _cudnn(q, k, v, bias, rel_pos, key_mask, scale):
    if not _cudnn_allowed(q, k, v, rel_pos):
        raise ValueError(
            "impl='cudnn' needs a GPU, no rel_pos, k and v of one shape, float16/bfloat16 "
            "inputs and a head width of at most 128"
        )
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, implementation="cudnn"
    )
    if key_mask is not None:  # a row with no valid key attends to nothing
        out = jnp.where(jnp.any(key_mask, axis=-1)[:, None, None, None], out, 0)
    return out
