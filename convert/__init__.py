"""Checkpoint conversion: torch-free reading, key mapping, variant detection, export.

Meta / ultralytics torch files: torch_reader.py, keymap.py, detect.py, export.py. Hugging Face
transformers folders and files: hf_reader.py, hf_config.py, hf_rules.py, hf_keymap.py (SAM),
hf_sam2_keymap.py (SAM 2), hf_writer.py.

Installed as `sam_jax.convert` (the folder is convert/ at the top of the repository).
"""
