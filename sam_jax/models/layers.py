"""Small building blocks shared by the SAM models."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _low_precision(*xs: jnp.ndarray) -> bool:
    return jnp.result_type(*xs) in (jnp.bfloat16, jnp.float16)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` that accumulates bfloat16 / float16 products in float32 and rounds
    the result to the inputs' dtype. XLA:CPU runs a bfloat16 product with a float32 result
    on its fast (AMX) kernels and one with a bfloat16 result several times slower; the
    values are the same. float32 products are plain `lax.dot_general`."""
    if not _low_precision(lhs, rhs):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32
    )
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated` with `dot_general`'s float32 accumulation. A 1x1,
    stride-1 convolution over channels-last inputs (flax's layout) is computed as the
    product over channels it is: XLA:CPU's convolution runs it several times slower."""
    n = lhs.ndim
    pointwise = (
        all(d == 1 for d in rhs.shape[:-2])
        and all(st == 1 for st in window_strides)
        and (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding))
        and all(d == 1 for d in (lhs_dilation or ()))
        and feature_group_count == 1
        and dimension_numbers is not None
        and tuple(dimension_numbers.lhs_spec) == (0, n - 1, *range(1, n - 1))
        and tuple(dimension_numbers.rhs_spec) == (n - 1, n - 2, *range(n - 2))
        and tuple(dimension_numbers.out_spec) == tuple(dimension_numbers.lhs_spec)
    )
    if pointwise:
        kernel = rhs.reshape(rhs.shape[-2:])
        dims = (((n - 1,), (0,)), ((), ()))
        return dot_general(lhs, kernel, dims, precision, preferred_element_type)
    conv = functools.partial(
        jax.lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )
    if not _low_precision(lhs, rhs):
        return conv(preferred_element_type=preferred_element_type)
    out = conv(preferred_element_type=jnp.float32)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


# The models' Dense and Conv layers: flax's, with the products above.
Dense = functools.partial(nn.Dense, dot_general=dot_general)
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def layer_norm(eps: float = 1e-5, name: str | None = None, dtype: Any = None) -> nn.LayerNorm:
    """LayerNorm over the last axis with torch's two-pass variance (exact parity).

    In NHWC this is also the reference's LayerNorm2d (eps 1e-6), which normalises channels.
    The statistics and the normalisation are always computed in (at least) float32; `dtype`
    is the output's (None: the input's promoted with the float32 parameters, i.e. float32).
    """
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """torch.nn.GELU's default, the exact erf form x (1 + erf(x / sqrt 2)) / 2, written as
    torch computes it: `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU
    evaluates more slowly (mobile_sam's encoder took about 10% longer)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5)))


class MLP(nn.Module):
    """`num_layers` Dense layers with ReLU between them (named layers_0 .. layers_{n-1})."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    sigmoid_output: bool = False
    dtype: Any = None  # computation dtype; None: inputs promoted with the float32 parameters

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            width = self.output_dim if last else self.hidden_dim
            x = Dense(width, dtype=self.dtype, name=f"layers_{i}")(x)
            if not last:
                x = jax.nn.relu(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


# A feed-forward over many tokens runs in chunks of rows on CPU, each chunk's hidden layer
# (rows x hidden, at most this many elements) staying in cache between the two products:
# written out whole, the wide hidden layer of a narrow block (Hiera's 96-wide first stage:
# 65536 x 384) makes the first product memory-bound. A GPU takes the whole product.
FF_CHUNK_ELEMENTS = 1 << 21


def dense_params(module: nn.Module, name: str, in_dim: int, out_dim: int) -> dict:
    """Declares `nn.Dense`'s parameters under `name` ({"kernel": (in_dim, out_dim), "bias":
    (out_dim,)}, float32, flax's initialisers) without a submodule, for pure code."""

    def init(key: jax.Array) -> dict:
        kernel = nn.initializers.lecun_normal()(key, (in_dim, out_dim), jnp.float32)
        return {"kernel": kernel, "bias": jnp.zeros((out_dim,), jnp.float32)}

    return module.param(name, init)


def dense(x: jnp.ndarray, p: dict, dtype: Any = None) -> jnp.ndarray:
    """`nn.Dense` over parameters `p` from `dense_params`: (..., in) -> (..., out)."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, p["kernel"], p["bias"], dtype=dtype)
    return dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias


def feed_forward(
    x: jnp.ndarray, p1: dict, p2: dict, activation: Any, dtype: Any = None
) -> jnp.ndarray:
    """dense(activation(dense(x, p1)), p2), token by token: (..., C) -> (..., C_out).

    On CPU, inputs with more than `FF_CHUNK_ELEMENTS` hidden values go through in chunks of
    rows (`lax.map`); every row's values are those of the whole product up to the
    products' float rounding.
    """

    def ff(rows: jnp.ndarray) -> jnp.ndarray:
        return dense(activation(dense(rows, p1, dtype)), p2, dtype)

    lead, c = x.shape[:-1], x.shape[-1]
    if not all(isinstance(d, int) for d in lead) or jax.default_backend() != "cpu":
        return ff(x)  # symbolic shapes (export) and accelerators: one product
    rows = math.prod(lead)
    chunk = 1 << max(0, (FF_CHUNK_ELEMENTS // p1["kernel"].shape[1]).bit_length() - 1)
    n = rows // chunk
    if n < 2:
        return ff(x)
    flat = x.reshape(rows, c)
    y = jax.lax.map(ff, flat[: n * chunk].reshape(n, chunk, c)).reshape(n * chunk, -1)
    if n * chunk < rows:
        y = jnp.concatenate([y, ff(flat[n * chunk :])])
    return y.reshape(*lead, y.shape[-1])


def mlp_on(
    module: nn.Module,
    x: jnp.ndarray,
    hidden: int,
    names: tuple[str, str],
    activation: Any,
    dtype: Any = None,
) -> jnp.ndarray:
    """`feed_forward` with its two layers' parameters declared on `module` itself under
    `names` (for modules whose reference keeps them beside other layers, not in a
    submodule). (..., C) -> (..., C)."""
    c = x.shape[-1]
    p1 = dense_params(module, names[0], c, hidden)
    p2 = dense_params(module, names[1], hidden, c)
    return feed_forward(x, p1, p2, activation, dtype)


class MLPBlock(nn.Module):
    """Transformer feed-forward: Dense -> activation -> Dense, (..., C) -> (..., C).

    `names` are the two layers' parameter names (SAM's lin1 / lin2, Hiera's layers_0 /
    layers_1, timm's fc1 / fc2).
    """

    mlp_dim: int
    activation: str = "gelu"
    names: tuple[str, str] = ("lin1", "lin2")
    dtype: Any = None  # computation dtype; None: inputs promoted with the float32 parameters

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = gelu if self.activation == "gelu" else jax.nn.relu
        return mlp_on(self, x, self.mlp_dim, self.names, act, self.dtype)


class ConvTranspose2x2(nn.Module):
    """Kernel-2 stride-2 transposed convolution: each pixel becomes a 2x2 block.

    Written as one product since the blocks never overlap. kernel: (2, 2, C_in, C_out).
    (B, H, W, C_in) -> (B, 2H, 2W, C_out); with `subpixel`, (..., C_in) -> (..., 2, 2, C_out),
    the blocks left beside their pixel ([..., i, j, :] is output pixel (2y + i, 2x + j)), so a
    caller that reduces the channels first can interleave fewer values (`interleave`).
    """

    features: int
    dtype: Any = None  # computation dtype; None: the input's
    subpixel: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x if self.dtype is None else x.astype(self.dtype)
        c = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jnp.einsum("...c,ijcd->...ijd", x, kernel.astype(x.dtype)) + bias.astype(x.dtype)
        return y if self.subpixel else interleave(y, 1)


def interleave(x: jnp.ndarray, levels: int) -> jnp.ndarray:
    """Sub-pixel blocks to an image: (B, h, w, [2, 2] * levels, C) -> (B, h * 2^levels,
    w * 2^levels, C), block (i1, j1, i2, j2, ...) of pixel (y, x) landing on row
    y 2^levels + i1 2^(levels-1) + i2 ..., and likewise for columns."""
    b, h, w = x.shape[:3]
    n = 2 * levels
    rows = [3 + 2 * i for i in range(levels)]
    cols = [4 + 2 * i for i in range(levels)]
    x = x.transpose(0, 1, *rows, 2, *cols, *range(3 + n, x.ndim))
    s = 2**levels
    return x.reshape(b, h * s, w * s, *x.shape[3 + n :])


def deinterleave(x: jnp.ndarray, levels: int) -> jnp.ndarray:
    """The inverse of `interleave`: (B, H, W, C) -> (B, H / 2^levels, W / 2^levels,
    [2, 2] * levels, C)."""
    b, hh, ww = x.shape[:3]
    s = 2**levels
    x = x.reshape(b, hh // s, *([2] * levels), ww // s, *([2] * levels), *x.shape[3:])
    rows = [2 + i for i in range(levels)]
    cols = [3 + levels + i for i in range(levels)]
    pairs = [a for rc in zip(rows, cols, strict=True) for a in rc]
    return x.transpose(0, 1, 2 + levels, *pairs, *range(3 + 2 * levels, x.ndim))


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution, 'same' padding, as a sum of k*k shifted products.

    Same parameters as `Conv(C, (k, k), feature_group_count=C)` (kernel (k, k, 1, C),
    bias (C,)). Written out because XLA's CPU backend computes the kernel gradient of a
    vmapped grouped convolution as a dense (k, k, C, C) one, C times the work (it made a
    SAM 2 clip's train step 50x slower than its forward pass). (B, H, W, C) -> same.
    """

    kernel_size: int = 7
    dtype: Any = None  # computation dtype; None: the input's

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x if self.dtype is None else x.astype(self.dtype)
        k, (h, w, c) = self.kernel_size, x.shape[-3:]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        kernel = kernel.astype(x.dtype)
        pad = [(0, 0)] * (x.ndim - 3) + [(k // 2, k // 2), (k // 2, k // 2), (0, 0)]
        xp = jnp.pad(x, pad)
        # The taps are summed in (at least) float32: a bf16 running sum loses the small ones.
        acc = jnp.promote_types(x.dtype, jnp.float32)
        taps = (
            (xp[..., i : i + h, j : j + w, :] * kernel[i, j, 0]).astype(acc)
            for i in range(k)
            for j in range(k)
        )
        return (sum(taps) + bias.astype(acc)).astype(x.dtype)


class Table(nn.Module):
    """A learned (num, dim) table used whole, like torch's nn.Embedding weight."""

    num: int
    dim: int

    @nn.compact
    def __call__(self) -> jnp.ndarray:
        return self.param("weight", nn.initializers.normal(1.0), (self.num, self.dim), jnp.float32)
