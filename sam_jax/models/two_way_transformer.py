"""The two-way transformer of SAM's mask decoder: tokens and image attend to each other.

Decoding is split in two steps, so that prompts on one image share the image-side work:

    cache = transformer.prepare(image, image_pe)        # once per image
    tokens, image = transformer.decode(cache, tokens)   # per batch of prompts
    transformer(image, image_pe, tokens) is decode(prepare(image, image_pe), tokens)

`prepare` does the first layer's image projections, which do not depend on the prompt: the
token->image keys and values and the image->token queries. A cache of batch 1 serves
prompts of any batch B (one image, B prompts); otherwise the batches are equal.

A prompt has few tokens (Nt = output tokens + points + box corners), so where
Nt * heads < the projection width, attention between them and the image tokens x is
reassociated, with the same weights and the same result up to float rounding:

- token->image: (q W_k^T) x^T replaces q (x W_k)^T (q . b_k is constant along a softmax
  row, which ignores it) and (A x) W_v + b_v replaces A (x W_v + b_v) (rows of A sum to 1);
- image->token: x (W_q k^T) + b_q k^T replaces (x W_q + b_q) k^T, and A (v W_o) replaces
  (A v) W_o.

Each then costs about Nt x heads x D per image token instead of D x D / downsample_rate.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.attention import attention
from sam_jax.models.layers import MLP, MLPBlock, layer_norm


class ImageCache(NamedTuple):
    """The prompt-independent part of decoding (`TwoWayTransformer.prepare`), a pytree.

    image (Bi, h, w, D): the image embeddings with the dense prompt embedding added;
    pe (1 or Bi, h, w, D): their positional encoding; t2i_keys, t2i_values, i2t_queries
    (Bi, h*w, heads, D / (heads * downsample_rate)): the first layer's projections of the
    image tokens (None for a transformer without layers).
    """

    image: jnp.ndarray
    pe: jnp.ndarray
    t2i_keys: jnp.ndarray | None
    t2i_values: jnp.ndarray | None
    i2t_queries: jnp.ndarray | None


class Linear(nn.Module):
    """`nn.Dense` (same variables: kernel (in, out), bias (out,)) whose weights the
    reassociated attention also reads directly."""

    in_features: int
    features: int

    def setup(self) -> None:
        shape = (self.in_features, self.features)
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return x @ self.kernel + self.bias


def _shared_einsum(spec: str, image: jnp.ndarray, per_prompt: jnp.ndarray) -> jnp.ndarray:
    """jnp.einsum(spec, image, per_prompt) where image's leading batch axis (1 or B) is
    broadcast over per_prompt's (B)."""
    if image.shape[0] == 1 and per_prompt.shape[0] != 1:
        return jnp.einsum(spec[1:], image[0], per_prompt)
    return jnp.einsum(spec, image, per_prompt)


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`.

    q (B, Nq, D), k and v (B, Nk, D) -> (B, Nq, D), D = dim.
    """

    dim: int
    num_heads: int
    downsample_rate: int = 1

    def setup(self) -> None:
        inner = self.dim // self.downsample_rate
        self.q_proj = Linear(self.dim, inner)
        self.k_proj = Linear(self.dim, inner)
        self.v_proj = Linear(self.dim, inner)
        self.out_proj = Linear(inner, self.dim)

    def heads(self, proj: Linear, x: jnp.ndarray) -> jnp.ndarray:
        """proj(x) split into heads: (..., D) -> (..., heads, head_dim)."""
        y = proj(x)
        return y.reshape(*y.shape[:-1], self.num_heads, -1)

    def _weights(self, proj: Linear) -> tuple[jnp.ndarray, jnp.ndarray]:
        """A projection's kernel (in, heads, head_dim) and bias (heads, head_dim)."""
        kernel, bias = proj.kernel, proj.bias
        return kernel.reshape(kernel.shape[0], self.num_heads, -1), bias.reshape(self.num_heads, -1)

    def _reassociate(self, num_tokens: int) -> bool:
        """Whether attention with `num_tokens` prompt tokens is cheaper reassociated."""
        return num_tokens * self.num_heads < self.dim // self.downsample_rate

    def __call__(self, q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
        b = q.shape[0]
        out = attention(
            self.heads(self.q_proj, q), self.heads(self.k_proj, k), self.heads(self.v_proj, v)
        )
        return self.out_proj(out.reshape(b, q.shape[1], -1))

    def tokens_to_image(
        self,
        q: jnp.ndarray,
        k: jnp.ndarray,
        v: jnp.ndarray,
        cached: tuple[jnp.ndarray, jnp.ndarray] | None = None,
    ) -> jnp.ndarray:
        """Prompt tokens q (B, Nt, D) attend to image tokens: keys from k, values from v
        (Bi, HW, D), Bi in (1, B) -> (B, Nt, D). `cached`: the key and value heads
        (Bi, HW, heads, head_dim), computed beforehand (then k and v are not read)."""
        b, nt, _ = q.shape
        qh = self.heads(self.q_proj, q)  # (B, Nt, heads, hd)
        hd = qh.shape[-1]
        if cached is not None or not self._reassociate(nt):
            kh, vh = (
                cached
                if cached is not None
                else (self.heads(self.k_proj, k), self.heads(self.v_proj, v))
            )
            # Prompts that share an image are one batch of queries over its keys.
            out = attention(qh.reshape(kh.shape[0], -1, *qh.shape[2:]), kh, vh)
            return self.out_proj(out.reshape(b, nt, -1))
        wk, _ = self._weights(self.k_proj)
        wv, bv = self._weights(self.v_proj)
        # One D-wide single-head query per (token, head): q W_k^T against the raw keys.
        qk = jnp.einsum("bqhd,chd->bqhc", qh, wk).reshape(k.shape[0], -1, 1, self.dim)
        ax = attention(qk, k[:, :, None], v[:, :, None], scale=hd**-0.5)
        ax = ax.reshape(b, nt, self.num_heads, self.dim)
        out = jnp.einsum("bqhc,chd->bqhd", ax, wv) + bv
        return self.out_proj(out.reshape(b, nt, -1))

    def image_to_tokens(
        self,
        q: jnp.ndarray,
        k: jnp.ndarray,
        v: jnp.ndarray,
        cached_q: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """Image tokens attend to prompt tokens: queries from q (Bi, HW, D), Bi in (1, B),
        keys from k and values from v (B, Nt, D) -> (B, HW, D). `cached_q`: the query heads
        (Bi, HW, heads, head_dim), computed beforehand (then q is not read).

        A softmax over the few prompt tokens, written out rather than through `attention`
        so that the query and output projections can move to the token side; its logits
        are (B, heads, HW, Nt)."""
        b, nt, _ = k.shape
        kh = self.heads(self.k_proj, k)  # (B, Nt, heads, hd)
        vh = self.heads(self.v_proj, v)
        hd = kh.shape[-1]
        fold = self._reassociate(nt)
        if cached_q is not None or not fold:
            qh = cached_q if cached_q is not None else self.heads(self.q_proj, q)
            logits = _shared_einsum("bkhd,bqhd->bhkq", qh, kh)
        else:
            wq, bq = self._weights(self.q_proj)
            wqk = jnp.einsum("chd,bqhd->bhcq", wq, kh)  # W_q k^T per head: (B, heads, D, Nt)
            logits = _shared_einsum("bkc,bhcq->bhkq", q, wqk)
            logits = logits + jnp.einsum("hd,bqhd->bhq", bq, kh)[:, :, None, :]
        a = jax.nn.softmax(logits * hd**-0.5, axis=-1)  # (B, heads, HW, Nt)
        if fold:
            wo = self.out_proj.kernel.reshape(self.num_heads, hd, self.dim)
            vo = jnp.einsum("bqhd,hdo->bhqo", vh, wo)  # values through out_proj, per head
            return jnp.einsum("bhkq,bhqo->bko", a, vo) + self.out_proj.bias
        out = jnp.einsum("bhkq,bqhd->bkhd", a, vh)
        return self.out_proj(out.reshape(b, out.shape[1], -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token; post-norm."""

    dim: int
    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    # SAM 2 names the (identical) token MLP's layers layers_0/layers_1 instead of lin1/lin2.
    sam2_mlp_names: bool = False

    def setup(self) -> None:
        d, heads, rate = self.dim, self.num_heads, self.downsample_rate
        self.self_attn = Attention(d, heads)
        self.norm1 = layer_norm()
        self.cross_attn_token_to_image = Attention(d, heads, rate)
        self.norm2 = layer_norm()
        if self.sam2_mlp_names:
            self.mlp = MLP(self.mlp_dim, d, 2)
        else:
            self.mlp = MLPBlock(self.mlp_dim, "relu")
        self.norm3 = layer_norm()
        self.cross_attn_image_to_token = Attention(d, heads, rate)
        self.norm4 = layer_norm()

    def prepare(
        self, keys: jnp.ndarray, key_pe: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """The image-side projections of image tokens keys (Bi, HW, D) that do not depend on
        the prompt yet: token->image keys and values, image->token queries."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return (
            t2i.heads(t2i.k_proj, keys + key_pe),
            t2i.heads(t2i.v_proj, keys),
            i2t.heads(i2t.q_proj, keys + key_pe),
        )

    def __call__(
        self,
        queries: jnp.ndarray,
        keys: jnp.ndarray,
        query_pe: jnp.ndarray,
        key_pe: jnp.ndarray,
        cached: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray] | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """queries (B, Nt, D), keys (Bi, HW, D) (Bi = 1: shared by the B prompts) and their
        encodings -> updated (queries (B, Nt, D), keys (B, HW, D)). `cached`:
        `prepare(keys, key_pe)`."""
        if self.skip_first_layer_pe:  # the first layer's tokens *are* the prompt encodings
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        kv = None if cached is None else cached[:2]
        t2i = self.cross_attn_token_to_image.tokens_to_image(
            queries + query_pe, keys + key_pe, keys, kv
        )
        queries = self.norm2(queries + t2i)
        queries = self.norm3(queries + self.mlp(queries))

        i2t = self.cross_attn_image_to_token.image_to_tokens(
            keys + key_pe, queries + query_pe, queries, None if cached is None else cached[2]
        )
        return queries, self.norm4(keys + i2t)


class TwoWayTransformer(nn.Module):
    """image (B, H, W, D), image_pe (H, W, D) or (B, H, W, D), tokens (B, Nt, D)
    -> (tokens (B, Nt, D), image tokens (B, HW, D)). See the module docstring for the
    two steps `prepare` and `decode`."""

    dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    sam2_mlp_names: bool = False  # see TwoWayAttentionBlock

    def setup(self) -> None:
        self.layers = [
            TwoWayAttentionBlock(
                self.dim,
                self.num_heads,
                self.mlp_dim,
                self.downsample_rate,
                skip_first_layer_pe=i == 0,
                sam2_mlp_names=self.sam2_mlp_names,
            )
            for i in range(self.depth)
        ]
        self.final_attn_token_to_image = Attention(self.dim, self.num_heads, self.downsample_rate)
        self.norm_final_attn = layer_norm()

    def prepare(self, image: jnp.ndarray, image_pe: jnp.ndarray) -> ImageCache:
        """image (Bi, h, w, D) (dense prompt embedding included), image_pe (h, w, D) or
        (Bi, h, w, D) -> the prompt-independent part of decoding."""
        b, h, w, d = image.shape
        pe = image_pe.reshape(-1, h, w, d)
        first = (None, None, None)
        if self.layers:
            first = self.layers[0].prepare(image.reshape(b, h * w, d), pe.reshape(-1, h * w, d))
        return ImageCache(image, pe, *first)

    def decode(self, cache: ImageCache, tokens: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The prompt step: tokens (B, Nt, D) -> (tokens (B, Nt, D), image tokens (B, HW, D))."""
        bi, h, w, d = cache.image.shape
        keys = cache.image.reshape(bi, h * w, d)
        key_pe = cache.pe.reshape(-1, h * w, d)
        queries = tokens
        for i, layer in enumerate(self.layers):
            cached = (cache.t2i_keys, cache.t2i_values, cache.i2t_queries) if i == 0 else None
            queries, keys = layer(queries, keys, tokens, key_pe, cached)
        final = self.final_attn_token_to_image.tokens_to_image(
            queries + tokens, keys + key_pe, keys
        )
        keys = jnp.broadcast_to(keys, (tokens.shape[0], *keys.shape[1:]))
        return self.norm_final_attn(queries + final), keys

    def __call__(
        self, image: jnp.ndarray, image_pe: jnp.ndarray, tokens: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.decode(self.prepare(image, image_pe), tokens)
