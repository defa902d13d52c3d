"""TinyViT, MobileSAM's image encoder: a convolutional stage, then three stages of windowed
attention with learned attention biases and a depthwise "local" convolution, then SAM's neck.

Images (B, S, S, 3) -> embeddings (B, S/16, S/16, 256), for any S that is a multiple of 16.
Everything is channels-last; the reference's (B, N, C) token sequences are kept as
(B, H, W, C) grids here, so no reshape is needed between the attention and the convolutions.

Resolutions: the patch embedding has stride 4 and each patch merging halves the grid except
the last one (into the final stage), which keeps it; so the stages run at S/4, S/8, S/16 and
S/16. The reference picks the stride of a merging from its output width (1 for 320, 448 or
576 channels, the widths of the released models' last stages) while it sizes every stage
as just described; the two agree for every configuration the reference can run, and the
positional rule used here is the one that always yields S/16. Nothing learned depends on S
(the attention biases are per window), which is why ultralytics' `set_imgsz` only updates
its bookkeeping of resolutions; here the resolutions are simply read off the input shape.

BatchNorm runs in inference mode on the stored running statistics (collection
'batch_stats'); epsilon 1e-5 and momentum 0.9 are torch's eps 1e-5 and momentum 0.1
(flax's momentum weighs the old statistic, torch's the new one). Training-mode batch
statistics are not supported: SAM never trains its encoder's BatchNorm.

The classification head: the checkpoint carries TinyViT's ImageNet head (`norm_head`, a
LayerNorm, and `head`, a Dense to `num_classes` logits) that SAM never evaluates. It is
LOADED, not skipped: the module creates those parameters at init (computing the head once
on the pooled last-stage features, then discarding the result), so conversion consumes every
key strictly, the parameter count equals the file's, and an exported file carries the
original head weights bit for bit and loads strictly into the ultralytics module. At apply
time the head is never run, so it costs nothing.

`dtype` is the computation dtype (parameters and batch statistics stay float32; LayerNorm,
BatchNorm and softmax statistics run in float32); the embeddings come out float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sam_jax.config import TinyViTConfig
from sam_jax.models.attention import attention
from sam_jax.models.layers import Conv, Dense, gelu, layer_norm, mlp_on
from sam_jax.models.vit import neck, window_partition, window_unpartition

# torch BatchNorm2d's defaults, in flax's convention (see the module docstring).
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


class DepthwiseConv(nn.Module):
    """Bias-free depthwise k x k convolution, padding k // 2, as a sum of k*k shifted and
    scaled copies of the input. XLA fuses that into one pass over memory; on CPU it runs
    several times faster than a grouped convolution with one channel per group, and the
    stored kernel keeps nn.Conv's layout (k, k, 1, C) so the checkpoint mapping is shared.

    (B, H, W, C) -> (B, ceil(H/stride), ceil(W/stride), C).
    """

    kernel_size: int
    stride: int = 1
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k, s, p = self.kernel_size, self.stride, self.kernel_size // 2
        x = x.astype(self.dtype)
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32)
        kernel = kernel.astype(self.dtype)
        xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        # The taps are summed in (at least) float32: a bf16 running sum loses the small ones.
        out = jnp.zeros((b, ho, wo, c), jnp.promote_types(x.dtype, jnp.float32))
        for i in range(k):
            for j in range(k):
                window = xp[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s]
                out = out + window * kernel[i, j, 0]
        return out.astype(x.dtype)


class Conv2dBN(nn.Module):
    """Bias-free convolution `c` followed by inference-mode BatchNorm `bn`.

    (B, H, W, C_in) -> (B, ceil(H/stride), ceil(W/stride), features) with "same"-style
    padding of kernel_size // 2 on every side, as the reference pads. `depthwise` makes it
    one filter per channel (features must then equal C_in), the reference's groups=C.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    depthwise: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k, p = self.kernel_size, self.kernel_size // 2
        if self.depthwise:
            if x.shape[-1] != self.features:
                raise ValueError(
                    f"depthwise conv keeps {x.shape[-1]} channels, not {self.features}"
                )
            x = DepthwiseConv(k, self.stride, dtype=self.dtype, name="c")(x)
        else:
            x = Conv(
                self.features,
                (k, k),
                strides=(self.stride, self.stride),
                padding=((p, p), (p, p)),
                use_bias=False,
                dtype=self.dtype,
                name="c",
            )(x)
        bn = nn.BatchNorm(
            use_running_average=True,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPS,
            dtype=self.dtype,
            name="bn",
        )
        return bn(x)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 Conv2dBN with a GELU between: (B, S, S, 3) -> (B, S/4, S/4, D).

    Named seq_0 and seq_2 because the reference's Sequential has the activation at index 1.
    """

    embed_dim: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = Conv2dBN(self.embed_dim // 2, 3, 2, dtype=self.dtype, name="seq_0")(x)
        return Conv2dBN(self.embed_dim, 3, 2, dtype=self.dtype, name="seq_2")(gelu(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU.

    (B, H, W, C) -> (B, H, W, C).
    """

    expand_ratio: float
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c, dt = x.shape[-1], self.dtype
        hidden = int(c * self.expand_ratio)
        y = gelu(Conv2dBN(hidden, 1, dtype=dt, name="conv1")(x))
        y = gelu(Conv2dBN(hidden, 3, depthwise=True, dtype=dt, name="conv2")(y))
        y = Conv2dBN(c, 1, dtype=dt, name="conv3")(y)
        return gelu(x + y)


class PatchMerging(nn.Module):
    """1x1 conv to `out_dim`, 3x3 depthwise conv with `stride`, 1x1 conv; GELUs between.

    (B, H, W, C) -> (B, ceil(H/stride), ceil(W/stride), out_dim).
    """

    out_dim: int
    stride: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d, dt = self.out_dim, self.dtype
        x = gelu(Conv2dBN(d, 1, dtype=dt, name="conv1")(x))
        x = gelu(Conv2dBN(d, 3, self.stride, depthwise=True, dtype=dt, name="conv2")(x))
        return Conv2dBN(d, 1, dtype=dt, name="conv3")(x)


def attention_bias_index(window_size: int) -> np.ndarray:
    """(N, N) int table, N = window_size**2: which stored bias each (query, key) pair uses.

    A bias is shared by every pair with the same absolute offset (|dy|, |dx|). The reference
    numbers offsets in order of first appearance while scanning query-major over the
    window's row-major points; the first query (0, 0) already meets every offset, in
    row-major order, so the number of (|dy|, |dx|) is |dy| * window_size + |dx|.
    Computed with numpy at trace time: it is a constant, never a stored variable.
    """
    r = np.arange(window_size)
    ys, xs = np.repeat(r, window_size), np.tile(r, window_size)
    dy = np.abs(ys[:, None] - ys[None, :])
    dx = np.abs(xs[:, None] - xs[None, :])
    return dy * window_size + dx


class Attention(nn.Module):
    """Pre-norm multi-head self-attention within one window, plus a learned bias per head
    and per relative offset. (N, ws, ws, C) windows -> (N, ws, ws, C)."""

    num_heads: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, ws, _, c = x.shape
        heads, hd, dt = self.num_heads, c // self.num_heads, self.dtype
        x = layer_norm(1e-5, name="norm", dtype=dt)(x.reshape(n, ws * ws, c))
        # The reference lays qkv out head-major: each head's slice is [q | k | v].
        qkv = Dense(3 * c, dtype=dt, name="qkv")(x).reshape(n, ws * ws, heads, 3 * hd)
        q, k, v = jnp.split(qkv, 3, axis=-1)  # each (n, N, heads, hd)
        biases = self.param(
            "attention_biases", nn.initializers.zeros, (heads, ws * ws), jnp.float32
        )
        # Float32 whatever the inputs: the bias joins the float32 logits.
        bias = biases[:, attention_bias_index(ws)]  # (heads, N, N)
        out = attention(q, k, v, bias=bias).reshape(n, ws * ws, c)
        return Dense(c, dtype=dt, name="proj")(out).reshape(n, ws, ws, c)


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, fc1, GELU, fc2. (..., C) -> (..., C)."""

    hidden: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dt = self.dtype
        y = layer_norm(1e-5, name="norm", dtype=dt)(x)
        return mlp_on(self, y, self.hidden, ("fc1", "fc2"), gelu, dt)


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise local conv (no residual), MLP (residual).

    (B, H, W, C) -> (B, H, W, C). The grid is zero-padded up to whole windows before the
    attention's LayerNorm, as the reference does, so padded tokens take part as keys.
    """

    num_heads: int
    window_size: int
    mlp_ratio: float
    local_conv_size: int
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        ws, dt = self.window_size, self.dtype
        y = Attention(self.num_heads, dtype=dt, name="attn")(window_partition(x, ws))
        x = x + window_unpartition(y, ws, (h, w))
        k = self.local_conv_size
        x = Conv2dBN(c, k, depthwise=True, dtype=dt, name="local_conv")(x)
        return x + Mlp(int(c * self.mlp_ratio), dtype=dt, name="mlp")(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then an optional patch merging. (B, H, W, C) -> (B, H', W', C')."""

    depth: int
    expand_ratio: float
    out_dim: int | None  # None: no patch merging
    merge_stride: int
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        block = nn.remat(MBConv) if self.remat else MBConv
        for i in range(self.depth):
            x = block(self.expand_ratio, dtype=self.dtype, name=f"blocks_{i}")(x)
        if self.out_dim is not None:
            merge = PatchMerging(
                self.out_dim, self.merge_stride, dtype=self.dtype, name="downsample"
            )
            x = merge(x)
        return x


class BasicLayer(nn.Module):
    """Stages 1..: TinyViT blocks, then an optional patch merging.
    (B, H, W, C) -> (B, H', W', C')."""

    depth: int
    num_heads: int
    window_size: int
    mlp_ratio: float
    local_conv_size: int
    out_dim: int | None  # None: no patch merging
    merge_stride: int
    remat: bool = False
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        block = nn.remat(TinyViTBlock) if self.remat else TinyViTBlock
        for i in range(self.depth):
            x = block(
                self.num_heads,
                self.window_size,
                self.mlp_ratio,
                self.local_conv_size,
                dtype=self.dtype,
                name=f"blocks_{i}",
            )(x)
        if self.out_dim is not None:
            merge = PatchMerging(
                self.out_dim, self.merge_stride, dtype=self.dtype, name="downsample"
            )
            x = merge(x)
        return x


class TinyViT(nn.Module):
    """(B, S, S, 3) normalised images -> (B, S/16, S/16, out_chans) float32; S a multiple
    of 16."""

    config: TinyViTConfig
    remat: bool = False  # recompute blocks in the backward pass (fine-tuning memory)
    dtype: Any = jnp.float32  # computation dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(
                f"images must be (B, S, S, 3) with S a multiple of 16; got shape {x.shape}"
            )
        dims = cfg.embed_dims
        n = len(dims)
        # The stride bookkeeping (S/4, S/8, S/16, S/16) is the reference's, made for 4 stages.
        if not n == len(cfg.depths) == len(cfg.num_heads) == len(cfg.window_sizes) == 4:
            raise ValueError(f"TinyViT has 4 stages; the config describes {n}: {cfg}")
        dt = self.dtype
        x = PatchEmbed(dims[0], dtype=dt, name="patch_embed")(x)
        for i in range(n):
            last = i == n - 1
            out_dim = None if last else dims[i + 1]
            # Only the merging into the final stage keeps the resolution (total stride 16).
            stride = 1 if i == n - 2 else 2
            if i == 0:
                layer = ConvLayer(
                    cfg.depths[0],
                    cfg.mbconv_expand_ratio,
                    out_dim,
                    stride,
                    self.remat,
                    dtype=dt,
                    name="layers_0",
                )
            else:
                layer = BasicLayer(
                    cfg.depths[i],
                    cfg.num_heads[i],
                    cfg.window_sizes[i],
                    cfg.mlp_ratio,
                    cfg.local_conv_size,
                    out_dim,
                    stride,
                    self.remat,
                    dtype=dt,
                    name=f"layers_{i}",
                )
            x = layer(x)
        if self.is_initializing():
            self._classification_head(x)
        return neck(x, cfg.out_chans, dt)

    def _classification_head(self, x: jnp.ndarray) -> jnp.ndarray:
        """ImageNet logits (B, num_classes) from last-stage features (B, h, w, C): only run
        at init, to create `norm_head` and `head` (see the module docstring)."""
        pooled = layer_norm(1e-5, name="norm_head")(x.mean(axis=(1, 2)))
        if self.config.num_classes <= 0:  # the reference's head is then an Identity
            return pooled
        return Dense(self.config.num_classes, name="head")(pooled)
