"""Blocked attention: online softmax over key blocks (flash-attention style, pure JAX).

`blocked_attention` is `attention(..., impl="blocked")` (`sam_jax.models.attention`, which
checks the arguments): q, k, v (B, N, H, D); the bias terms are formed per key block from
their factors, and a custom VJP recomputes each block in the backward pass, so neither pass
holds more than (Nq, block_size) logits per head. The saved state is the output and one
log-sum-exp per query row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def blocked_attention(q, k, v, bias, rel_pos, key_mask, scale, block_size):
    """Transposes to (B, H, N, D), pads the keys to whole blocks, runs the custom-VJP core."""
    nk = k.shape[1]
    bs = min(block_size, nk)
    pad = -nk % bs
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    if pad:
        k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
        if key_mask is not None:
            key_mask = jnp.pad(key_mask, ((0, 0), (0, pad)))
    if bias is not None:
        bias = jnp.asarray(bias)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
        if bias.shape[-1] != 1 and pad:
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, pad)))
    rel_h, rel_w = (None, None) if rel_pos is None else rel_pos
    kw = 0 if rel_w is None else rel_w.shape[-1]
    out = _flash((float(scale), bs, nk, kw), q, k, v, bias, rel_h, rel_w, key_mask)
    return out.transpose(0, 2, 1, 3)


def _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk):
    """Logits of all queries against one key block (B, H, Nq, bs), invalid keys at -inf,
    and the validity (B or 1, 1, 1, bs)."""
    scale, bs, nk, kw = static
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k_blk, preferred_element_type=jnp.float32) * scale
    idx = j0 + jnp.arange(bs)
    if rel_h is not None:
        row = jnp.minimum(idx // kw, rel_h.shape[-1] - 1)  # padded keys: any valid row
        s = s + jnp.take(rel_h, row, axis=-1) + jnp.take(rel_w, idx % kw, axis=-1)
    if bias is not None:
        s = s + _bias_block(bias, j0, bs)
    valid = (idx < nk)[None, None, None, :]
    if mask_blk is not None:
        valid = valid & mask_blk[:, None, None, :]
    return jnp.where(valid, s, -jnp.inf), valid


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


def _flash_forward(static, q, k, v, bias, rel_h, rel_w, key_mask):
    scale, bs, nk, kw = static
    b, heads, nq, _ = q.shape
    dv = v.shape[-1]
    masks = None if key_mask is None else _blocks(key_mask, bs, 1)

    def step(carry, xs):
        m, total, acc = carry
        j0, k_blk, v_blk, mask_blk = xs
        s, _ = _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0)
        p = jnp.exp(s - m_safe)
        corr = jnp.exp(m - m_safe)
        total = total * corr + jnp.sum(p, axis=-1, keepdims=True)
        acc = acc * corr + jnp.einsum(
            "bhqk,bhkc->bhqc", p.astype(v.dtype), v_blk, preferred_element_type=jnp.float32
        )
        return (m_new, total, acc), None

    f32 = jnp.float32  # softmax statistics and the accumulator in float32 whatever the inputs
    init = (
        jnp.full((b, heads, nq, 1), -jnp.inf, f32),
        jnp.zeros((b, heads, nq, 1), f32),
        jnp.zeros((b, heads, nq, dv), f32),
    )
    starts = jnp.arange(0, k.shape[2], bs)
    (m, total, acc), _ = jax.lax.scan(
        step, init, (starts, _blocks(k, bs, 2), _blocks(v, bs, 2), masks)
    )
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
    scale, bs, nk, kw = static
    q, k, v, bias, rel_h, rel_w, key_mask, out, lse = residuals
    d_out = d_out.astype(jnp.float32)
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1, keepdims=True)  # (B, H, Nq, 1)
    masks = None if key_mask is None else _blocks(key_mask, bs, 1)
    kh = 0 if rel_h is None else rel_h.shape[-1]
    bias_per_key = bias is not None and bias.shape[-1] != 1

    def step(carry, xs):
        dq, drel_h, drel_w, dbias = carry
        j0, k_blk, v_blk, mask_blk = xs
        s, valid = _block_logits(static, q, k_blk, j0, bias, rel_h, rel_w, mask_blk)
        p = jnp.where(valid, jnp.exp(s - lse), 0)
        dv_blk = jnp.einsum("bhqk,bhqc->bhkc", p, d_out)
        ds = p * (jnp.einsum("bhqc,bhkc->bhqk", d_out, v_blk) - delta)
        dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds, k_blk) * scale
        dk_blk = jnp.einsum("bhqk,bhqd->bhkd", ds, q) * scale
        if rel_h is not None:
            idx = j0 + jnp.arange(bs)
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
    starts = jnp.arange(0, k.shape[2], bs)
    xs = (starts, _blocks(k, bs, 2), _blocks(v, bs, 2), masks)
    (dq, drel_h, drel_w, dbias), (dk, dv, dbias_blocks) = jax.lax.scan(step, init, xs)
    dk, dv = _unblocks(dk, 2), _unblocks(dv, 2)
    if bias_per_key:
        dbias = _unblocks(dbias_blocks, 3)
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
