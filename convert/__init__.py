"""Checkpoint conversion: torch-free reading, key mapping, variant detection, export.

Installed as `sam_jax.convert` (the folder is convert/ at the top of the repository).
"""
