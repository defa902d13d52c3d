"""SAM 2 video tracking as pure functions: the fixed-shape memory bank, the per-frame
`track_step`, and propagation as a scanned chunk of frames."""

from sam_jax.tracking.memory_bank import MemoryBank, bucket, empty_bank, memory_tokens
from sam_jax.tracking.propagate import Chunk, StoredTable, make_propagate_chunk, propagate_chunk
from sam_jax.tracking.track_step import (
    COND,
    STORED,
    TRACK,
    FrameInput,
    TrackOutput,
    apply_non_overlapping_constraints,
    make_track_step,
    track_step,
)

__all__ = [
    "COND",
    "STORED",
    "TRACK",
    "Chunk",
    "FrameInput",
    "MemoryBank",
    "StoredTable",
    "TrackOutput",
    "apply_non_overlapping_constraints",
    "bucket",
    "empty_bank",
    "make_propagate_chunk",
    "make_track_step",
    "memory_tokens",
    "propagate_chunk",
    "track_step",
]
