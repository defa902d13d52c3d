"""Blocked attention: online softmax over key blocks (flash-attention style, pure JAX).

`blocked_attention` is `attention(..., impl="blocked")` (`sam_jax.models.attention`, which
checks the arguments): q, k, v (B, N, H, D); the bias terms are formed per key block from
their factors, and a custom VJP recomputes each block in the backward pass, so neither pass
holds more than (Nq, block_size) logits per head. The saved state is the output and one
log-sum-exp per query row.

The keys run in whole blocks and, when Nk is not a multiple of the block size, one shorter
last block (never padded). With a `key_mask`, a block with no valid key in the whole batch
is skipped (`lax.cond`) in both passes: its update is the identity, so the values are the
same, and a memory bank with empty slots costs only what is filled.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def blocked_attention(q, k, v, bias, rel_pos, key_mask, scale, block_size):
    """Transposes to (B, H, N, D) and runs the custom-VJP core."""
    nk = k.shape[1]
    bs = min(block_size, nk)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    if bias is not None:
        bias = jnp.asarray(bias)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    rel_h, rel_w = (None, None) if rel_pos is None else rel_pos
    kw = 0 if rel_w is None else rel_w.shape[-1]
    out = _flash((float(scale), bs, kw), q, k, v, bias, rel_h, rel_w, key_mask)
    return out.transpose(0, 2, 1, 3)


def _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk):
    """Logits of all queries against one key block (B, H, Nq, bs), masked keys at -inf."""
    kw = static[2]
    bs = k_blk.shape[2]
    kt = jnp.swapaxes(k_blk, -1, -2)  # (B, H, D, bs): see `attention._softmax_product`
    s = jnp.matmul(q, kt, preferred_element_type=jnp.float32) * static[0]
    idx = j0 + jnp.arange(bs)
    if rel_h is not None:
        s = s + jnp.take(rel_h, idx // kw, axis=-1) + jnp.take(rel_w, idx % kw, axis=-1)
    if bias is not None:
        s = s + _bias_block(bias, j0, bs)
    if mask_blk is not None:
        s = jnp.where(mask_blk[:, None, None, :], s, -jnp.inf)
    return s


def _bias_block(bias, j0, bs):
    if bias.shape[-1] == 1:
        return bias
    return jax.lax.dynamic_slice_in_dim(bias, j0, bs, axis=-1)


def _blocks(x, bs, axis):
    """Split axis `axis` of x into (num_blocks, ..., bs, ...) for lax.scan."""
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape(x.shape[0] // bs, bs, *x.shape[1:])
    return jnp.moveaxis(x, 1, axis + 1)


def _unblocks(x, axis):
    """Inverse of `_blocks`: (num_blocks, ..., bs, ...) -> (..., num_blocks * bs, ...)."""
    x = jnp.moveaxis(x, axis + 1, 1)
    x = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return jnp.moveaxis(x, 0, axis)


def _over_blocks(step, carry, bs, k, v, key_mask, out_axes=()):
    """Runs `step(carry, (j0, k_blk, v_blk, mask_blk)) -> (carry, outs)` over the key blocks:
    a scan over the whole ones, then the shorter last one. With a mask, a block with no
    valid key is skipped: the carry passes unchanged and its outputs are zeros. `outs` is a
    tuple (entries may be None) whose key axes are `out_axes`; returns the carry and the
    outputs joined along those axes."""
    nk = k.shape[2]
    whole = nk // bs * bs

    def guarded(carry, xs):
        if xs[3] is None:
            return step(carry, xs)
        shapes = jax.eval_shape(step, carry, xs)[1]

        def skip(carry, xs):
            return carry, jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

        return jax.lax.cond(jnp.any(xs[3]), step, skip, carry, xs)

    def part(x, lo, hi, axis):
        return None if x is None else jax.lax.slice_in_dim(x, lo, hi, axis=axis)

    parts = []
    # bs <= nk: there is always at least one whole block
    xs = (
        jnp.arange(0, whole, bs),
        _blocks(part(k, 0, whole, 2), bs, 2),
        _blocks(part(v, 0, whole, 2), bs, 2),
        None if key_mask is None else _blocks(part(key_mask, 0, whole, 1), bs, 1),
    )
    carry, outs = jax.lax.scan(guarded, carry, xs)
    parts.append(
        [None if o is None else _unblocks(o, a) for o, a in zip(outs, out_axes, strict=True)]
    )
    if whole < nk:
        xs = (whole, part(k, whole, nk, 2), part(v, whole, nk, 2), part(key_mask, whole, nk, 1))
        carry, outs = guarded(carry, xs)
        parts.append(outs)
    joined = tuple(
        None if o[0] is None else jnp.concatenate(o, axis=a)
        for o, a in zip(zip(*parts, strict=True), out_axes, strict=True)
    )
    return carry, joined


def _flash_forward(static, q, k, v, bias, rel_h, rel_w, key_mask):
    bs = static[1]
    b, heads, nq, _ = q.shape
    dv = v.shape[-1]

    def step(carry, xs):
        m, total, acc = carry
        j0, k_blk, v_blk, mask_blk = xs
        s = _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0)
        p = jnp.exp(s - m_safe)
        corr = jnp.exp(m - m_safe)
        total = total * corr + jnp.sum(p, axis=-1, keepdims=True)
        acc = acc * corr + jnp.einsum(
            "bhqk,bhkc->bhqc", p.astype(v.dtype), v_blk, preferred_element_type=jnp.float32
        )
        return (m_new, total, acc), ()

    f32 = jnp.float32  # softmax statistics and the accumulator in float32 whatever the inputs
    init = (
        jnp.full((b, heads, nq, 1), -jnp.inf, f32),
        jnp.zeros((b, heads, nq, 1), f32),
        jnp.zeros((b, heads, nq, dv), f32),
    )
    (m, total, acc), _ = _over_blocks(step, init, bs, k, v, key_mask)
    seen = total > 0
    out = (acc / jnp.where(seen, total, 1)).astype(q.dtype)
    lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0) + jnp.log(jnp.where(seen, total, 1)), 0)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static, q, k, v, bias, rel_h, rel_w, key_mask):
    return _flash_forward(static, q, k, v, bias, rel_h, rel_w, key_mask)[0]


def _flash_fwd(static, q, k, v, bias, rel_h, rel_w, key_mask):
    out, lse = _flash_forward(static, q, k, v, bias, rel_h, rel_w, key_mask)
    return out, (q, k, v, bias, rel_h, rel_w, key_mask, out, lse)


def _sum_to(x, shape):
    """Sum x over the axes where `shape` has extent 1 (the broadcast axes of a bias)."""
    axes = tuple(
        i for i, (a, t) in enumerate(zip(x.shape, shape, strict=True)) if t == 1 and a != 1
    )
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _flash_bwd(static, residuals, d_out):
    """Recomputes each block's probabilities from the saved log-sum-exp (flash attention's
    backward): memory stays (Nq, block) per head, as in the forward pass."""
    scale, bs, kw = static
    q, k, v, bias, rel_h, rel_w, key_mask, out, lse = residuals
    d_out = d_out.astype(jnp.float32)
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1, keepdims=True)  # (B, H, Nq, 1)
    kh = 0 if rel_h is None else rel_h.shape[-1]
    bias_per_key = bias is not None and bias.shape[-1] != 1

    def step(carry, xs):
        dq, drel_h, drel_w, dbias = carry
        j0, k_blk, v_blk, mask_blk = xs
        s = _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk)
        p = jnp.exp(s - lse)  # masked keys: exp(-inf) = 0
        dv_blk = jnp.einsum("bhqk,bhqc->bhkc", p, d_out)
        ds = p * (jnp.einsum("bhqc,bhkc->bhqk", d_out, v_blk) - delta)
        dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds, k_blk) * scale
        dk_blk = jnp.einsum("bhqk,bhqd->bhkd", ds, q) * scale
        if rel_h is not None:
            idx = j0 + jnp.arange(k_blk.shape[2])
            # Each key adds to one row term and one column term: sums by one-hot products.
            drel_h = drel_h + ds @ jax.nn.one_hot(idx // kw, kh, dtype=ds.dtype)
            drel_w = drel_w + ds @ jax.nn.one_hot(idx % kw, kw, dtype=ds.dtype)
        dbias_blk = None
        if bias is not None:
            dbias_blk = _sum_to(ds, bias.shape)
            if not bias_per_key:
                dbias = dbias + jnp.sum(dbias_blk, axis=-1, keepdims=True)
                dbias_blk = None
        return (dq, drel_h, drel_w, dbias), (dk_blk, dv_blk, dbias_blk)

    def zeros(x):
        return None if x is None else jnp.zeros(x.shape, jnp.float32)

    init = (
        zeros(q),
        zeros(rel_h),
        zeros(rel_w),
        None if bias_per_key else zeros(bias),
    )
    (dq, drel_h, drel_w, dbias), (dk, dv, dbias_keys) = _over_blocks(
        step, init, bs, k, v, key_mask, out_axes=(2, 2, 3)
    )
    if bias_per_key:
        dbias = dbias_keys
    cast = lambda g, x: None if g is None else g.astype(x.dtype)  # noqa: E731
    return (
        cast(dq, q),
        cast(dk, k),
        cast(dv, v),
        cast(dbias, bias),
        cast(drel_h, rel_h),
        cast(drel_w, rel_w),
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)
