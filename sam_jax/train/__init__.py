"""Fine-tuning: losses, click simulation, jit train steps (images and SAM 2 clips), batching
of annotated pools, learning-rate schedules, sharding."""
