"""SAM 3 checkpoint layout: one file, two models, and the names each model reads.

Meta's `sam3.pt` (and ultralytics' copy) holds `{"model": state_dict}` with
`detector.*` (the concept model, the shared vision backbone and the text encoder included)
and `tracker.*` (the interactive tracker's heads and memory; it has no image encoder and
reads the detector's vision backbone). SAM 3.1 files call the tracker's point-prompt
modules `tracker.model.interactive_*` / `tracker.model.interactivity_*` beside a
multiplex video tracker, and the tracker's neck `interactive_convs`; those names are read
as SAM 3's. The multiplex tracker (`tracker.model.*` otherwise) is not part of SAM 3's
interactive model and is left out.

The concept model (`sam3_semantic`) reads the `detector.*` keys with the prefix stripped
(ultralytics' SAM3SemanticModel names), the tracker's neck (`sam2_convs`) left out.

The interactive tracker (`sam3`) reads ultralytics' SAM3Model names:
    detector.backbone.vision_backbone.{trunk, sam2_convs}.*  -> image_encoder.vision_backbone.*
    tracker.transformer.encoder.*                            -> memory_attention.*
    tracker.maskmem_backbone.*                               -> memory_encoder.*
    tracker.<other>                                          -> <other>
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_VISION = "detector.backbone.vision_backbone."
# SAM 3.1 -> SAM 3 renames (applied in this order).
_SAM3_1_RENAMES = (
    ("tracker.model.interactive_", "tracker."),
    ("tracker.model.interactivity_", "tracker."),
    ("interactive_convs", "sam2_convs"),
)
# Tracker key prefixes as stored -> as the tracker module names them.
_TRACKER_PREFIXES = (
    ("tracker.transformer.encoder.", "memory_attention."),
    ("tracker.maskmem_backbone.", "memory_encoder."),
    ("tracker.", ""),
)


def is_sam3_checkpoint(state_dict: Mapping) -> bool:
    """True when the keys are SAM 3's combined layout (`detector.*` / `tracker.*`)."""
    return any(k.startswith(("detector.", "tracker.")) for k in state_dict)


def sam3_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state_dict with SAM 3.1's interactive-head names read as SAM 3's."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _SAM3_1_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def tracker_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The interactive tracker's weights under its own names (module docstring). Raises a
    ValueError when the file holds no SAM 3 tracker."""
    sd = sam3_names(state_dict)
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        if key.startswith(_VISION):
            rest = key[len(_VISION) :]
            if rest.startswith(("trunk.", "sam2_convs.")):
                out["image_encoder.vision_backbone." + rest] = value
        elif key.startswith("tracker.") and not key.startswith("tracker.model."):
            for old, new in _TRACKER_PREFIXES:
                if key.startswith(old):
                    out[new + key[len(old) :]] = value
                    break
    if not any(k.startswith("sam_mask_decoder.") for k in out):
        raise ValueError(
            "no SAM 3 tracker in this checkpoint (no tracker.sam_mask_decoder.* keys); "
            "a detector-only file loads as variant='sam3_semantic'"
        )
    return out


def tracker_to_sam3_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `tracker_state_dict`: tracker names -> the combined file's names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("image_encoder.vision_backbone."):
            out[_VISION + key[len("image_encoder.vision_backbone.") :]] = value
            continue
        for stored, ours in _TRACKER_PREFIXES:
            if key.startswith(ours):
                out[stored + key[len(ours) :]] = value
                break
    return out


def detector_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The concept model's weights under its own names (module docstring). Raises a
    ValueError when the file holds no SAM 3 detector."""
    sd = sam3_names(state_dict)
    out = {
        key[len("detector.") :]: value
        for key, value in sd.items()
        if key.startswith("detector.") and not key.startswith(_VISION + "sam2_convs.")
    }
    if not any(k.startswith("transformer.decoder.") for k in out):
        raise ValueError(
            "no SAM 3 detector in this checkpoint (no detector.transformer.decoder.* keys); "
            "a tracker-only file loads as variant='sam3'"
        )
    return out


def detector_to_sam3_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `detector_state_dict`: concept-model names -> the combined file's names."""
    return {"detector." + key: value for key, value in state_dict.items()}
