"""The two-way transformer of the SAM / SAM 2 mask decoders: tokens and image attend to each
other.

A prompt has few tokens (Nt: the output tokens, the clicks, the box corners) and the image
many (HW = 4096 at 1024 px), so each attention between the two computes in the order that
costs least, with the same weights and the same result up to float rounding:

- tokens -> image (few queries, many keys): q (x W_k + b_k)^T = (q W_k^T) x^T + q b_k^T and
  A (x W_v + b_v) = (A x) W_v + b_v (softmax rows sum to 1): no projection of the image;
- image -> tokens (many queries, few keys): (x W_q) k^T = x (W_q k^T), and the values go
  through the output projection before the weighting, (A V) W_o = A (V W_o).

Logits against the image keep the HW image tokens as their leading axis, (B, HW, H, Nt):
only the few-token side is ever transposed, never the (HW, D) image (on CPU such transposes
cost more than the products).

The first layer's image-side projections do not depend on the prompt when there is no
mask prompt; `image_cache` computes them once per image (with the flattened positional
encoding) and `__call__(..., cache=...)` takes them, which is what a predictor with many
prompts per image wants.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.attention import attention
from sam_jax.models.layers import MLPBlock, layer_norm

# Up to this many tokens on one side an attention takes the reassociated order.
FEW_TOKENS = 16


class Projection(nn.Module):
    """A Dense layer's parameters, returned rather than applied: kernel (d_in, features) (torch
    Linear's weight transposed) and bias (features,), so attention can reassociate products."""

    features: int

    @nn.compact
    def __call__(self, d_in: int) -> tuple[jnp.ndarray, jnp.ndarray]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (d_in, self.features), jnp.float32
        )
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


def _few(n) -> bool:
    """Whether n tokens count as few. A symbolic size (a program exported for any number of
    points) is not: the plain order serves every size."""
    try:
        return bool(n <= FEW_TOKENS)
    except Exception:  # jax.export's InconclusiveDimensionOperation
        return False


def _bdot(spec: str, *operands: jnp.ndarray) -> jnp.ndarray:
    """einsum whose operands may hold a batch of one where others hold B (the label 'b',
    always first): such an operand is used unbatched instead of broadcast."""
    ins, out = spec.split("->")
    ins = ins.split(",")
    big = max(op.shape[0] for op, s in zip(operands, ins, strict=True) if s.startswith("b"))
    ops, specs = [], []
    for op, s in zip(operands, ins, strict=True):
        if s.startswith("b") and op.shape[0] == 1 and big > 1:
            op, s = op[0], s[1:]
        ops.append(op)
        specs.append(s)
    return jnp.einsum(",".join(specs) + "->" + out, *ops)


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`.

    q (B, Nq, dim), k and v (B or 1, Nk, D_kv) -> (B, Nq, dim). The order of the products is
    chosen by the shapes (module docstring); the result is the same up to rounding. Logits
    over the image keep the image tokens as their leading axis, so the (HW, D) image is never
    transposed: only the few-token side is.
    """

    dim: int
    num_heads: int
    downsample_rate: int = 1

    def setup(self) -> None:
        self.inner = self.dim // self.downsample_rate
        self.q_proj = Projection(self.inner)
        self.k_proj = Projection(self.inner)
        self.v_proj = Projection(self.inner)
        self.out_proj = Projection(self.dim)

    def _heads(self, x: jnp.ndarray) -> jnp.ndarray:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def _project(self, proj: Projection, x: jnp.ndarray) -> jnp.ndarray:
        kernel, bias = proj(x.shape[-1])
        return self._heads(x @ kernel + bias)

    def _out(self, x: jnp.ndarray) -> jnp.ndarray:
        wo, bo = self.out_proj(self.inner)
        return x.reshape(*x.shape[:2], -1) @ wo + bo

    def keys_values(self, k: jnp.ndarray, v: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Projected keys (B, H, d, Nk) and values (B, H, Nk, d): a cache for
        `__call__(kv=...)` with few queries."""
        kh = self._project(self.k_proj, k).transpose(0, 2, 3, 1)
        return kh, self._project(self.v_proj, v).transpose(0, 2, 1, 3)

    def queries(self, q: jnp.ndarray) -> jnp.ndarray:
        """Projected queries (B, H, Nq, d): a cache for `__call__(q_heads=...)` with few keys."""
        return self._project(self.q_proj, q).transpose(0, 2, 1, 3)

    def __call__(
        self,
        q: jnp.ndarray,
        k: jnp.ndarray,
        v: jnp.ndarray,
        kv: tuple[jnp.ndarray, jnp.ndarray] | None = None,
        q_heads: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """`kv` = keys_values(k, v) and `q_heads` = queries(q), when cached."""
        few_q, few_k = _few(q.shape[1]), _few(k.shape[1])
        if few_q and not few_k:
            return self._out(self._few_queries(q, k, v, kv))
        if few_k and not few_q:
            return self._few_keys(q, k, v, q_heads)
        qh = self._project(self.q_proj, q)
        kh, vh = self._project(self.k_proj, k), self._project(self.v_proj, v)
        b = max(qh.shape[0], kh.shape[0])
        qh, kh, vh = (jnp.broadcast_to(a, (b, *a.shape[1:])) for a in (qh, kh, vh))
        return self._out(attention(qh, kh, vh))

    def _few_queries(self, q, k, v, kv) -> jnp.ndarray:
        """(B, Nq, H, d): few queries over many keys, without projecting the keys and values
        unless `kv` holds them."""
        qh = self._project(self.q_proj, q)
        scale = qh.shape[-1] ** -0.5
        if kv is not None:
            a = jax.nn.softmax(_bdot("bqhd,bhdk->bhqk", qh * scale, kv[0]), axis=-1)
            return _bdot("bhqk,bhkd->bqhd", a, kv[1])
        wk, bk = self.k_proj(k.shape[-1])
        wv, bv = self.v_proj(v.shape[-1])
        qk = jnp.einsum("bqhd,chd->bchq", qh, self._heads(wk))  # q W_k^T per head
        logits = _bdot("bkc,bchq->bkhq", k, qk)  # (B, Nk, H, Nq)
        logits = logits + jnp.einsum("bqhd,hd->bhq", qh, self._heads(bk))[:, None]
        a = jax.nn.softmax(logits * scale, axis=1)
        av = _bdot("bkhq,bkc->bhqc", a, v)
        return jnp.einsum("bhqc,chd->bqhd", av, self._heads(wv)) + self._heads(bv)

    def _few_keys(self, q, k, v, q_heads) -> jnp.ndarray:
        """(B, Nq, dim): many queries over few keys, reduced against the keys' projections
        (`q_heads`: the queries' projections, when cached)."""
        kh, vh = self._project(self.k_proj, k), self._project(self.v_proj, v)  # (B, Nk, H, d)
        scale = kh.shape[-1] ** -0.5
        if q_heads is not None:
            logits = _bdot("bhnd,bkhd->bnhk", q_heads, kh)
        else:
            wq, bq = self.q_proj(q.shape[-1])
            wqk = jnp.einsum("chd,bkhd->bchk", self._heads(wq), kh)  # W_q k^T per head
            logits = _bdot("bnc,bchk->bnhk", q, wqk)
            logits = logits + jnp.einsum("hd,bkhd->bhk", self._heads(bq), kh)[:, None]
        a = jax.nn.softmax(logits * scale, axis=-1)  # (B, Nq, H, Nk)
        wo, bo = self.out_proj(self.inner)
        vo = jnp.einsum("bkhd,hdo->bhko", vh, self._heads(wo.T).transpose(1, 2, 0))
        return _bdot("bnhk,bhko->bno", a, vo) + bo


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
        d, h, r = self.dim, self.num_heads, self.downsample_rate
        self.self_attn = Attention(d, h)
        self.norm1 = layer_norm()
        self.cross_attn_token_to_image = Attention(d, h, r)
        self.norm2 = layer_norm()
        names = ("layers_0", "layers_1") if self.sam2_mlp_names else ("lin1", "lin2")
        self.mlp = MLPBlock(self.mlp_dim, "relu", names)
        self.norm3 = layer_norm()
        self.cross_attn_image_to_token = Attention(d, h, r)
        self.norm4 = layer_norm()

    def image_cache(self, keys: jnp.ndarray, key_pe: jnp.ndarray) -> dict:
        """The block's prompt-independent projections of the image tokens (B, HW, D)."""
        return {
            "t2i_kv": self.cross_attn_token_to_image.keys_values(keys + key_pe, keys),
            "i2t_q": self.cross_attn_image_to_token.queries(keys + key_pe),
        }

    def __call__(self, queries, keys, query_pe, key_pe, cache: dict | None = None):
        """queries (B, Nt, D), keys (B or 1, HW, D) and their encodings -> updated (queries,
        keys). `cache`: `image_cache(keys, key_pe)`, valid for these keys."""
        cache = cache or {}
        if self.skip_first_layer_pe:  # the first layer's tokens *are* the prompt encodings
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        t2i = self.cross_attn_token_to_image
        queries = queries + t2i(queries + query_pe, keys + key_pe, keys, kv=cache.get("t2i_kv"))
        queries = self.norm2(queries)
        queries = self.norm3(queries + self.mlp(queries))
        i2t = self.cross_attn_image_to_token
        update = i2t(keys + key_pe, queries + query_pe, queries, q_heads=cache.get("i2t_q"))
        keys = self.norm4(keys + update)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image (B or 1, H, W, D), image_pe (H, W, D) or (B, H, W, D), tokens (B, Nt, D)
    -> (tokens (B, Nt, D), image tokens (B, HW, D))."""

    dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    sam2_mlp_names: bool = False  # see TwoWayAttentionBlock

    def setup(self) -> None:
        d, h, r = self.dim, self.num_heads, self.downsample_rate
        self.layers = [
            TwoWayAttentionBlock(
                d,
                h,
                self.mlp_dim,
                r,
                skip_first_layer_pe=i == 0,
                sam2_mlp_names=self.sam2_mlp_names,
            )
            for i in range(self.depth)
        ]
        self.final_attn_token_to_image = Attention(d, h, r)
        self.norm_final_attn = layer_norm()

    @staticmethod
    def _flat(image, image_pe):
        b, h, w, d = image.shape
        pe = jnp.broadcast_to(image_pe, (*image_pe.shape[:-3], h, w, d))
        return image.reshape(b, h * w, d), pe.reshape(-1, h * w, d)

    def image_cache(self, image: jnp.ndarray, image_pe: jnp.ndarray) -> dict:
        """The first layer's projections of the image (B, H, W, D) (module docstring) and the
        flattened positional encoding."""
        keys, key_pe = self._flat(image, image_pe)
        return {**self.layers[0].image_cache(keys, key_pe), "key_pe": key_pe}

    def __call__(self, image, image_pe, tokens, cache: dict | None = None):
        keys, key_pe = self._flat(image, image_pe)
        if cache is not None:
            key_pe = cache["key_pe"]
        queries = tokens
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, tokens, key_pe, cache if i == 0 else None)
        final = self.final_attn_token_to_image
        queries = queries + final(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys
