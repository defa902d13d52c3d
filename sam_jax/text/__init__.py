"""Text prompts: CLIP's BPE tokenizer (SAM 3's text encoder reads its ids)."""

from sam_jax.text.clip_tokenizer import CLIPTokenizer
from sam_jax.text.text_cleanup import clean_caption, fix_text_plain

__all__ = ["CLIPTokenizer", "clean_caption", "fix_text_plain"]
