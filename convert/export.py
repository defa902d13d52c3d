"""Write sam_jax variables back to a torch checkpoint (needs torch, unlike everything else)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax.linen as nn

from sam_jax.convert.keymap import variables_to_state_dict


def export_torch(path: str | os.PathLike, model: nn.Module, variables: Mapping) -> None:
    """Save a state_dict the reference module loads strictly: raw for SAM 1 / MobileSAM,
    {"model": state_dict} for SAM 2 (as the official files are laid out)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("exporting to a torch file needs torch: pip install torch") from e
    from sam_jax.checkpoint import atomic_write

    sd = {k: torch.from_numpy(v.copy()) for k, v in variables_to_state_dict(variables).items()}
    obj = {"model": sd} if getattr(model.config, "wraps_state_dict", False) else sd
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
