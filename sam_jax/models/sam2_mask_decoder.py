"""SAM 2's mask decoder: SAM's decoder plus high-resolution skips and an object-score token."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.models.layers import MLP, Conv, ConvTranspose2x2, Table, deinterleave, gelu, layer_norm
from sam_jax.models.mask_decoder import hypernetwork_masks
from sam_jax.models.two_way_transformer import TwoWayTransformer


def stability_scores(mask_logits: jnp.ndarray, delta: float) -> jnp.ndarray:
    """(..., H, W) logits -> (...): area above +delta over area above -delta (1 if empty)."""
    inner = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
    outer = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(outer > 0, inner / jnp.maximum(outer, 1.0), 1.0)


def take_best(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """x (B, M, ...) and index (B,) -> (B, 1, ...): x[b, index[b]] per batch row."""
    idx = index.reshape(-1, 1, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)


class Sam2MaskDecoder(nn.Module):
    """Predicts masks, IoU (through a sigmoid) and an object score from image features and
    prompt embeddings. Submodule names mirror torch `sam_mask_decoder.*`."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    stability_delta: float = 0.05
    stability_thresh: float = 0.98
    # The transformer's MLP parameters as SAM 2 names them (`mlp.layers.i`); False: SAM's
    # `mlp.lin1` / `mlp.lin2`, which SAM 3's tracker uses (same math).
    sam2_mlp_names: bool = True

    def setup(self) -> None:
        d = self.transformer_dim
        self.num_mask_tokens = self.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(
            d, self.depth, self.num_heads, self.mlp_dim, sam2_mlp_names=self.sam2_mlp_names
        )
        self.iou_token = Table(1, d)
        self.mask_tokens = Table(self.num_mask_tokens, d)
        self.obj_score_token = Table(1, d)
        self.output_upscaling_0 = ConvTranspose2x2(d // 4, subpixel=True)
        self.output_upscaling_1 = layer_norm(1e-6)
        self.output_upscaling_3 = ConvTranspose2x2(d // 8, subpixel=True)
        # Projections of the two finest FPN levels, run once per image by the encoder.
        self.conv_s0 = Conv(d // 8, (1, 1))
        self.conv_s1 = Conv(d // 4, (1, 1))
        self.output_hypernetworks_mlps = [MLP(d, d // 8, 3) for _ in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(
            self.iou_head_hidden_dim,
            self.num_mask_tokens,
            self.iou_head_depth,
            sigmoid_output=True,
        )
        self.pred_obj_score_head = MLP(d, 1, 3)

    def project_high_res(
        self, feat_s0: jnp.ndarray, feat_s1: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(B, 4h, 4w, D), (B, 2h, 2w, D) -> (B, 4h, 4w, D/8), (B, 2h, 2w, D/4)."""
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def image_cache(
        self,
        image: jnp.ndarray,
        image_pe: jnp.ndarray,
        high_res_features: list[jnp.ndarray] | None = None,
    ) -> dict:
        """Prompt-independent decoder work for `image` = embeddings + the dense prompt, and
        the high-res features in the upscaling's sub-pixel layout."""
        cache = self.transformer.image_cache(image, image_pe)
        if high_res_features is not None:
            cache["high_res_subpixel"] = _subpixel(high_res_features)
        return cache

    def predict_all(
        self,
        image_embeddings: jnp.ndarray,
        image_pe: jnp.ndarray,
        sparse: jnp.ndarray,
        dense: jnp.ndarray,
        high_res_features: list[jnp.ndarray] | None,
        cache: dict | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Every output token's result.

        image_embeddings (B, h, w, D), image_pe (h, w, D), sparse (B, N, D), dense (B, h, w, D),
        high_res_features [(B, 4h, 4w, D/8), (B, 2h, 2w, D/4)] (already projected) or None.
        The image embeddings, dense prompt and high-res features may hold a batch of one
        for the B prompts. `cache`: image_cache(image_embeddings + dense, image_pe) or None.
        Returns masks (B, T, 4h, 4w), iou (B, T), mask tokens (B, T, D), object score (B, 1),
        T = 1 + num_multimask_outputs.
        """
        d = self.transformer_dim
        b = sparse.shape[0]
        h, w = image_embeddings.shape[1:3]
        # Order matters: object-score token, IoU token, then the mask tokens.
        output_tokens = jnp.concatenate(
            [self.obj_score_token(), self.iou_token(), self.mask_tokens()]
        )
        tokens = jnp.concatenate(
            [jnp.broadcast_to(output_tokens, (b, *output_tokens.shape)), sparse], axis=1
        )
        hs, src = self.transformer(image_embeddings + dense, image_pe, tokens, cache)
        obj_token_out = hs[:, 0]
        iou_token_out = hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        x = self.output_upscaling_0(src.reshape(b, h, w, d))  # (b, h, w, 2, 2, d/4)
        if high_res_features is not None:
            cached = (cache or {}).get("high_res_subpixel")
            feat_s0, feat_s1 = _subpixel(high_res_features) if cached is None else cached
            x = x + feat_s1
        x = gelu(self.output_upscaling_1(x))
        x = self.output_upscaling_3(x)  # (b, h, w, 2, 2, 2, 2, d/8)
        if high_res_features is not None:
            x = x + feat_s0
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )
        masks = hypernetwork_masks(hyper_in, gelu(x))
        iou = self.iou_prediction_head(iou_token_out)
        object_score_logits = self.pred_obj_score_head(obj_token_out)
        return masks, iou, mask_tokens_out, object_score_logits

    def __call__(
        self,
        image_embeddings: jnp.ndarray,
        image_pe: jnp.ndarray,
        sparse: jnp.ndarray,
        dense: jnp.ndarray,
        high_res_features: list[jnp.ndarray] | None = None,
        multimask_output: bool = True,
        cache: dict | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Masks (B, M, 4h, 4w), iou (B, M), pointer tokens (B, M_t, D), object score (B, 1).

        Multimask: the 3 multimask outputs and their 3 tokens. Otherwise one mask: the
        single-mask output where its stability score reaches `stability_thresh`, else the
        multimask output of highest IoU; the pointer token is then always the single-mask
        token (the reference trains the object pointer on that token).
        """
        masks, iou, tokens, obj = self.predict_all(
            image_embeddings, image_pe, sparse, dense, high_res_features, cache
        )
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], tokens[:, 1:], obj
        best = jnp.argmax(iou[:, 1:], axis=-1)
        best_masks = take_best(masks[:, 1:], best)
        best_iou = take_best(iou[:, 1:], best)
        single_masks, single_iou = masks[:, :1], iou[:, :1]
        stable = stability_scores(single_masks, self.stability_delta) >= self.stability_thresh
        masks_out = jnp.where(stable[..., None, None], single_masks, best_masks)
        iou_out = jnp.where(stable, single_iou, best_iou)
        return masks_out, iou_out, tokens[:, :1], obj


def _subpixel(high_res_features: list[jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[(B, 4h, 4w, C0), (B, 2h, 2w, C1)] -> (B, h, w, 2, 2, 2, 2, C0), (B, h, w, 2, 2, C1):
    the layouts of the upscaling they are added to."""
    feat_s0, feat_s1 = high_res_features
    return deinterleave(feat_s0, 2), deinterleave(feat_s1, 1)
