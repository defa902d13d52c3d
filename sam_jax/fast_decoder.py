"""SAM's mask decoder for the predictor, with the image-only work done once per image.

The decoder (`sam_jax.models.mask_decoder`) computes, for every prompt, projections of the
64 x 64 image tokens through 256 x 128 matrices. When many prompts meet one image, much of
that can be shared or reordered, with the same weights and the same result up to float
rounding:

- before the first image update, the image tokens do not depend on the prompt (no mask
  prompt: the dense embedding is the constant `no_mask_embed`), so the first layer's
  token->image keys and values and image->token queries are computed once per image;
- a prompt has few tokens (Nt = 5 output tokens + points + box corners), so attention over
  the image is cheaper with the products reassociated: q (x W_k)^T = (q W_k^T) x^T,
  A (x W_v + b) = (A x) W_v + b (softmax rows sum to 1), and (A V) W_o = A (V W_o), which
  costs Nt x 256 per image token and head instead of 256 x 128 per image token.

That halves the decoder's arithmetic for a click. It reads the same variables as
`Sam.predict_masks` and is used by `Predictor` for SAM / MobileSAM prompts without a mask
input; everything else goes through the model itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Above this many tokens the plain order of operations is cheaper (see module docstring).
_REASSOCIATE_MAX_TOKENS = 16


def _layer_norm(x, p, eps=1e-5):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _heads(x, n):
    return x.reshape(*x.shape[:-1], n, x.shape[-1] // n)


def _softmax(logits):
    return jax.nn.softmax(logits, axis=-1)


def _token_self_attention(q, k, v, p, n_heads):
    """Plain attention among the few prompt tokens (K, Nt, D)."""
    qh, kh, vh = (
        _heads(_dense(a, p[n]), n_heads) for a, n in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj"))
    )
    scale = 1.0 / jnp.sqrt(jnp.float32(qh.shape[-1]))
    a = _softmax(jnp.einsum("bqhd,bkhd->bhqk", qh, kh) * scale)
    out = jnp.einsum("bhqk,bkhd->bqhd", a, vh)
    return _dense(out.reshape(*out.shape[:2], -1), p["out_proj"])


def _tokens_to_image(q, x, x_pe, p, n_heads, cached=None):
    """Attention of prompt tokens q (K, Nt, D) over image tokens: keys from x + x_pe, values
    from x, x (K or 1, HW, D). `cached` = (keys (HW, H, d), values (HW, H, d)) projections."""
    qh = _heads(_dense(q, p["q_proj"]), n_heads)  # (K, Nt, H, d)
    scale = 1.0 / jnp.sqrt(jnp.float32(qh.shape[-1]))
    if cached is not None:
        kh, vh = cached
        a = _softmax(jnp.einsum("bqhd,khd->bhqk", qh, kh) * scale)
        out = jnp.einsum("bhqk,khd->bqhd", a, vh)
    else:
        wk = _heads(p["k_proj"]["kernel"], n_heads)  # (D, H, d)
        bk = _heads(p["k_proj"]["bias"], n_heads)  # (H, d)
        qk = jnp.einsum("bqhd,chd->bhqc", qh, wk)  # q W_k^T per head: (K, H, Nt, D)
        logits = jnp.einsum("bhqc,bkc->bhqk", qk, x + x_pe)
        logits = logits + jnp.einsum("bqhd,hd->bhq", qh, bk)[..., None]
        a = _softmax(logits * scale)
        ax = jnp.einsum("bhqk,bkc->bhqc", a, x)  # (K, H, Nt, D)
        wv = _heads(p["v_proj"]["kernel"], n_heads)
        out = jnp.einsum("bhqc,chd->bqhd", ax, wv) + _heads(p["v_proj"]["bias"], n_heads)
    return _dense(out.reshape(*out.shape[:2], -1), p["out_proj"])


def _image_to_tokens(x, x_pe, t, t_pe, p, n_heads, cached_q=None):
    """Attention of image tokens (queries from x + x_pe) over prompt tokens t (K, Nt, D)
    (keys from t + t_pe, values from t) -> (K, HW, D). `cached_q` (HW, H, d)."""
    kh = _heads(_dense(t + t_pe, p["k_proj"]), n_heads)  # (K, Nt, H, d)
    vh = _heads(_dense(t, p["v_proj"]), n_heads)
    scale = 1.0 / jnp.sqrt(jnp.float32(kh.shape[-1]))
    if cached_q is not None:
        logits = jnp.einsum("khd,bqhd->bhkq", cached_q, kh)
    else:
        wq = _heads(p["q_proj"]["kernel"], n_heads)  # (D, H, d)
        wk_t = jnp.einsum("chd,bqhd->bhcq", wq, kh)  # (K, H, D, Nt)
        logits = jnp.einsum("bkc,bhcq->bhkq", x + x_pe, wk_t)
        logits = (
            logits
            + jnp.einsum("hd,bqhd->bhq", _heads(p["q_proj"]["bias"], n_heads), kh)[:, :, None, :]
        )
    a = _softmax(logits * scale)  # (K, H, HW, Nt)
    wo = _heads(p["out_proj"]["kernel"].T, n_heads)  # (D_out, H, d)
    if t.shape[1] <= _REASSOCIATE_MAX_TOKENS:
        vo = jnp.einsum("bqhd,ohd->bhqo", vh, wo)  # values through out_proj: (K, H, Nt, D)
        out = jnp.einsum("bhkq,bhqo->bko", a, vo)
    else:
        av = jnp.einsum("bhkq,bqhd->bkhd", a, vh)
        out = jnp.einsum("bkhd,ohd->bko", av, wo)
    return out + p["out_proj"]["bias"]


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _subpixel_conv_t2x2(x, p):
    """Kernel-2 stride-2 transposed convolution left in sub-pixel layout:
    (..., C) -> (..., 2, 2, D), where [..., i, j, :] is output pixel (2 y + i, 2 x + j)."""
    kernel = p["kernel"]  # (2, 2, C, D)
    c, d = kernel.shape[2:]
    w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, 4 * d)
    return (x @ w).reshape(*x.shape[:-1], 2, 2, d) + p["bias"]


def _upscaled_masks(img, hyper, p):
    """The decoder's upscaling (two 2x transposed convolutions with LayerNorm and GELU) and
    hypernetwork product, with the pixel shuffle done last on the few mask channels instead
    of on the 64 / 32 feature channels. img (K, h, w, D), hyper (K, M, D/8) -> (K, M, 4h, 4w)."""
    y = _subpixel_conv_t2x2(img, p["output_upscaling_0"])  # (K, h, w, 2, 2, D/4)
    y = _gelu(_layer_norm(y, p["output_upscaling_1"], eps=1e-6))
    y = _gelu(_subpixel_conv_t2x2(y, p["output_upscaling_3"]))  # (K, h, w, 2, 2, 2, 2, D/8)
    masks = jnp.einsum("bmd,bhwijkld->bmhikwjl", hyper, y)
    b, m, h, _, _, w = masks.shape[:6]
    return masks.reshape(b, m, 4 * h, 4 * w)


def _mlp(x, p):
    n = len(p)
    for i in range(n):
        x = _dense(x, p[f"layers_{i}"])
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def supported(model: Any) -> bool:
    """Whether `model` is a SAM / MobileSAM whose decoder this module reproduces."""
    from sam_jax.models.sam import Sam

    return isinstance(model, Sam) and model.config.decoder_depth >= 1


def image_cache(model: Any, params: Any, embeddings: jnp.ndarray) -> dict:
    """The prompt-independent part of decoding for image embeddings (1, h, w, D)."""
    pe = model.apply(params, method=lambda m: m.prompt_encoder.dense_pe())
    p = params["params"]
    n_heads = model.config.decoder_num_heads
    d = embeddings.shape[-1]
    x = embeddings.reshape(-1, d) + p["prompt_encoder"]["no_mask_embed"]["weight"][0]
    x_pe = pe.reshape(-1, d)
    layer = p["mask_decoder"]["transformer"]["layers_0"]
    t2i, i2t = layer["cross_attn_token_to_image"], layer["cross_attn_image_to_token"]
    return {
        "x": x,
        "pe": x_pe,
        "t2i_k": _heads(_dense(x + x_pe, t2i["k_proj"]), n_heads),
        "t2i_v": _heads(_dense(x, t2i["v_proj"]), n_heads),
        "i2t_q": _heads(_dense(x + x_pe, i2t["q_proj"]), n_heads),
    }


def decode(model: Any, params: Any, cache: dict, coords, labels, boxes, multimask_output: bool):
    """Mask logits (K, M, 4h, 4w) and IoU (K, M) for K prompts, as Sam.predict_masks."""
    k = next(a.shape[0] for a in (coords, boxes) if a is not None)
    sparse = model.apply(
        params,
        k,
        coords,
        labels,
        boxes,
        method=lambda m, *a: m.prompt_encoder(*a)[0],
    )
    cfg = model.config
    n_heads = cfg.decoder_num_heads
    p = params["params"]["mask_decoder"]
    tp = p["transformer"]
    out_tokens = jnp.concatenate([p["iou_token"]["weight"], p["mask_tokens"]["weight"]])
    tokens = jnp.concatenate([jnp.broadcast_to(out_tokens, (k, *out_tokens.shape)), sparse], axis=1)

    x, x_pe = cache["x"][None], cache["pe"][None]
    queries = tokens
    for i in range(cfg.decoder_depth):
        lp = tp[f"layers_{i}"]
        if i == 0:
            queries = _token_self_attention(queries, queries, queries, lp["self_attn"], n_heads)
        else:
            q = queries + tokens
            queries = queries + _token_self_attention(q, q, queries, lp["self_attn"], n_heads)
        queries = _layer_norm(queries, lp["norm1"])
        cached = (cache["t2i_k"], cache["t2i_v"]) if i == 0 else None
        queries = queries + _tokens_to_image(
            queries + tokens, x, x_pe, lp["cross_attn_token_to_image"], n_heads, cached
        )
        queries = _layer_norm(queries, lp["norm2"])
        h = jax.nn.relu(_dense(queries, lp["mlp"]["lin1"]))
        queries = _layer_norm(queries + _dense(h, lp["mlp"]["lin2"]), lp["norm3"])
        cached_q = cache["i2t_q"] if i == 0 else None
        x = x + _image_to_tokens(
            x, x_pe, queries, tokens, lp["cross_attn_image_to_token"], n_heads, cached_q
        )
        x = _layer_norm(x, lp["norm4"])
    queries = queries + _tokens_to_image(
        queries + tokens, x, x_pe, tp["final_attn_token_to_image"], n_heads
    )
    queries = _layer_norm(queries, tp["norm_final_attn"])

    n_masks = cfg.num_multimask_outputs + 1
    hyper = jnp.stack(
        [_mlp(queries[:, 1 + j], p[f"output_hypernetworks_mlps_{j}"]) for j in range(n_masks)],
        axis=1,
    )
    masks = _upscaled_masks(x.reshape(k, cfg.embed_size, cfg.embed_size, -1), hyper, p)
    iou = _mlp(queries[:, 0], p["iou_prediction_head"])
    keep = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, keep], iou[:, keep]
