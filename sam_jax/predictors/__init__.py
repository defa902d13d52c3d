"""Predictors: prompts in original-image pixels in, masks at the original size out.

`image.Predictor` segments one image from prompts, `mask_generator.MaskGenerator` segments
everything in an image, `video.VideoPredictor` tracks prompted objects through a video,
`stream.StreamTracker` through frames fed one at a time; for SAM 3's concept model,
`concept.ConceptPredictor` (every instance of a caption in an image, behind `Predictor`)
and `concept_video.ConceptVideoPredictor` (every instance through a video).
`prompts` holds the prompt validation they share, `resample` the bilinear resampling between
the letterboxed model frame and the original image, `amg` the segment-everything helpers.
The video predictor's parts: `history` (per-frame outputs, in RAM, on disk or, for
streams, in a ring), `video_state` (a session), `video_prompts` (prompts in model pixels,
several objects per call), `video_propagation` (which frames run, chunk by chunk) and
`video_compiled` (its jit-compiled functions).
"""

from sam_jax.predictors.concept import ConceptPredictor
from sam_jax.predictors.concept_video import ConceptVideoPredictor
from sam_jax.predictors.image import Predictor
from sam_jax.predictors.mask_generator import MaskGenerator
from sam_jax.predictors.stream import StreamTracker
from sam_jax.predictors.video import VideoPredictor

__all__ = [
    "ConceptPredictor",
    "ConceptVideoPredictor",
    "MaskGenerator",
    "Predictor",
    "StreamTracker",
    "VideoPredictor",
]
