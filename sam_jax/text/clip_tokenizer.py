"""CLIP's byte-level BPE tokenizer (OpenAI CLIP's `SimpleTokenizer`), without torch.

    CLIPTokenizer()(["a red car", "the dog's ball"]) -> (2, 32) int32
        row: [49406 (start), ids..., 49407 (end), 0, 0, ...]

A caption is cleaned (text_cleanup.clean_caption: ftfy-style fixes, HTML unescaping,
whitespace collapsing, lowercase), split into words, numbers and punctuation runs, and each
piece's UTF-8 bytes are merged by the 48,894 ranked pairs of `bpe_simple_vocab_16e6.txt.gz`
(OpenAI CLIP, MIT; see CLIP_VOCAB_LICENSE.txt). The last symbol of a piece carries the
end-of-word mark "</w>". The vocabulary is 256 byte symbols, the same 256 ending a word,
one symbol per merge, then the start and end tokens: 49,408 ids.

Letters and numbers are Unicode categories L* and N* of this Python's unicodedata; the
reference's `regex` module may know newer Unicode versions, so characters assigned after
this Python's Unicode version (unassigned here) split as punctuation, not as letters.
"""

from __future__ import annotations

import functools
import gzip
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sam_jax.text.text_cleanup import clean_caption, default_fix_text

VOCAB_PATH = Path(__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: lines 1 .. 48894 of the file
START, END = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# Contractions split off a word ("dog's" -> "dog", "'s"), matched case-insensitively.
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@functools.cache
def byte_symbols() -> tuple[tuple[int, str], ...]:
    """(byte, the printable character standing for it) for the 256 bytes, in vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the others (controls,
    space, U+AD) follow in byte order and take the code points from 256 up, so no symbol
    is whitespace or a control.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in kept]
    return tuple(zip(kept + others, map(chr, [*kept, *range(256, 256 + len(others))]), strict=True))


def _is_space(c: str) -> bool:
    # The reference's `regex` \s: str.isspace() without the separators U+1C..U+1F.
    return c.isspace() and not "\x1c" <= c <= "\x1f"


def _kind(c: str) -> str:
    """'L' letter, 'N' number, ' ' whitespace (or dropped), 'P' anything else."""
    cat = unicodedata.category(c)[0]
    if cat in "LN":
        return cat
    # U+0345 (a combining mark) case-folds to a letter, iota: the reference's
    # case-insensitive pattern then counts it neither as a letter nor as punctuation,
    # and it vanishes like whitespace.
    return " " if _is_space(c) or c == "\u0345" else "P"


def _contraction_at(text: str, i: int) -> int:
    """Length of the contraction starting at text[i], or 0."""
    for c in _CONTRACTIONS:
        piece = text[i : i + len(c)]
        if len(piece) == len(c) and all(a.casefold() == b for a, b in zip(piece, c, strict=True)):
            return len(c)
    return 0


def _piece_size(text: str, i: int) -> int:
    """Length of the piece starting at text[i]; 0 where text[i] is whitespace."""
    for token in (START, END):
        if text.startswith(token, i):
            return len(token)
    if size := _contraction_at(text, i):
        return size
    kind = _kind(text[i])
    if kind in " N":  # whitespace separates; a number is one character
        return int(kind == "N")
    size = 1
    while i + size < len(text) and _kind(text[i + size]) == kind:
        size += 1
    return size


def split_pieces(text: str) -> list[str]:
    """Cleaned text -> the pieces BPE encodes one by one.

    At each position, the first that applies: a literal start/end token; a contraction;
    a run of letters; one number character; a run of characters that are neither
    letters, numbers nor whitespace. Whitespace only separates.
    """
    pieces, i = [], 0
    while i < len(text):
        size = _piece_size(text, i)
        if size:
            pieces.append(text[i : i + size])
        i += max(size, 1)
    return pieces


def merge_symbols(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging: while some adjacent pair is ranked, join every occurrence (left
    to right, without overlap) of the lowest-ranked one."""
    while len(symbols) > 1:
        pairs = {p for p in zip(symbols, symbols[1:], strict=False) if p in ranks}
        if not pairs:
            break
        first, second = min(pairs, key=ranks.__getitem__)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class CLIPTokenizer:
    """Captions -> CLIP token ids, equal to OpenAI CLIP's SimpleTokenizer.

    `fix_text`: the first cleanup step (default: ftfy.fix_text if ftfy is installed, else
    text_cleanup.fix_text_plain, which lacks only ftfy's mojibake repair).
    """

    def __init__(
        self,
        vocab_path: str | Path = VOCAB_PATH,
        fix_text: Callable[[str], str] | None = None,
    ) -> None:
        try:
            with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")[1 : NUM_MERGES + 1]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read a gzipped BPE merge list from {vocab_path}: {e}") from e
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_path} is not CLIP's BPE merge list ({NUM_MERGES} pairs)")
        self.ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        symbols = [s for _, s in byte_symbols()]
        vocab = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(m) for m in merges)]
        self.vocab: dict[str, int] = {s: i for i, s in enumerate([*vocab, START, END])}
        self.start_id, self.end_id = self.vocab[START], self.vocab[END]
        self.fix_text = default_fix_text() if fix_text is None else fix_text
        self._byte = dict(byte_symbols())  # byte -> symbol
        self._piece_ids = functools.lru_cache(maxsize=1 << 16)(self._encode_piece)

    def __len__(self) -> int:
        return len(self.vocab)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        if piece in (START, END):
            return (self.vocab[piece],)
        symbols = [self._byte[b] for b in piece.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        return tuple(self.vocab[s] for s in merge_symbols(symbols, self.ranks))

    def encode(self, text: str) -> list[int]:
        """One caption -> its ids, without start and end tokens."""
        if not isinstance(text, str):
            raise ValueError(f"a caption must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in split_pieces(clean_caption(text, self.fix_text)):
            ids.extend(self._piece_ids(piece))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, each end-of-word mark read as a space (padding zeros are '!')."""
        inverse = {i: s for s, i in self.vocab.items()}
        unknown = [int(i) for i in ids if int(i) not in inverse]
        if unknown:
            raise ValueError(f"ids outside the vocabulary of {len(inverse)}: {unknown[:5]}")
        to_byte = {s: b for b, s in self._byte.items()}
        symbols = "".join(inverse[int(i)] for i in ids)
        text = bytearray(to_byte[c] for c in symbols).decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = 32) -> np.ndarray:
        """Captions -> (N, context_length) int32: start token, ids, end token, zeros.

        A caption whose ids do not fit is cut to context_length - 1 tokens and ends with
        the end token. A single str counts as one caption.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        out = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id][:context_length]
            ids[-1] = self.end_id
            out[row, : len(ids)] = ids
        return out
