"""Write sam_jax variables back to a torch checkpoint (needs torch, unlike everything else)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax.linen as nn

from sam_jax.config import Sam3SemanticConfig
from sam_jax.convert.keymap import variables_to_state_dict
from sam_jax.convert.sam3_keys import detector_to_sam3_keys, tracker_to_sam3_keys
from sam_jax.models.sam3_config import Sam3VisionConfig


def export_torch(path: str | os.PathLike, model: nn.Module, variables: Mapping) -> None:
    """Save a state_dict the reference module loads strictly: raw for SAM 1 / MobileSAM,
    {"model": state_dict} for SAM 2 (as the official files are laid out); SAM 3's tracker
    under the combined file's `detector.*` / `tracker.*` names (sam_jax.convert.sam3_keys)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("exporting to a torch file needs torch: pip install torch") from e
    from sam_jax.checkpoint import atomic_write

    sd = variables_to_state_dict(variables)
    if isinstance(model.config, Sam3SemanticConfig):
        sd = detector_to_sam3_keys(sd)  # the combined SAM 3 file's names
    elif isinstance(getattr(model.config, "encoder", None), Sam3VisionConfig):
        sd = tracker_to_sam3_keys(sd)
    sd = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    obj = {"model": sd} if getattr(model.config, "wraps_state_dict", False) else sd
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
