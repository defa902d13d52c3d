"""sam-jax: Segment Anything (SAM, MobileSAM, SAM 2, SAM 3) in JAX/Flax.

import sam_jax
model, params = sam_jax.load("sam_b.pt")            # torch file read without torch
emb = model.apply(params, images, method="encode_image")
"""

from sam_jax.checkpoint import build, init_params, load, save
from sam_jax.config import VARIANTS
from sam_jax.predictors.concept import ConceptPredictor
from sam_jax.predictors.concept_video import ConceptVideoPredictor
from sam_jax.predictors.image import Predictor
from sam_jax.predictors.mask_generator import MaskGenerator
from sam_jax.predictors.stream import StreamTracker
from sam_jax.predictors.video import VideoPredictor

__all__ = [
    "VARIANTS",
    "ConceptPredictor",
    "ConceptVideoPredictor",
    "MaskGenerator",
    "Predictor",
    "StreamTracker",
    "VideoPredictor",
    "build",
    "init_params",
    "load",
    "save",
]
__version__ = "0.1.0"
