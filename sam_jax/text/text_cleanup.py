"""CLIP's caption cleanup, applied before byte-pair encoding.

    clean_caption(text) = collapse_whitespace(unescape(unescape(fix_text(text))).strip()).lower()

`fix_text` is ftfy's `fix_text` with its default settings when ftfy is installed (what
OpenAI's tokenizer calls), else `fix_text_plain`: the same fixes written with the standard
library, minus ftfy's mojibake repair (re-decoding text that was decoded in the wrong
encoding, e.g. "cafÃ©" -> "café"). On text without mojibake the two agree; the tests check
this on a few hundred varied strings.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable

# ftfy fixes a text one line at a time (and long lines in slices of this many characters).
_SEGMENT = 1_000_000

_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_TERMINAL_ESCAPE = re.compile("\x1b\\[[\\d;]*[a-zA-Z]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Whitespace as the reference's `regex` module sees it: Python's str.isspace() also counts
# the information separators U+1C..U+1F, which `regex` does not.
_WHITESPACE_RUN = re.compile(r"[^\S\x1c-\x1f]+")


def _entity_table() -> dict[str, str]:
    """'&name;' -> text for every HTML5 entity, plus all-uppercase spellings of the
    lowercase names that do not collide with another entity ('&NTILDE;' -> 'Ñ')."""
    table = {}
    for name, char in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = char
        upper = "&" + name.upper()
        if name == name.lower() and html.unescape(upper) == upper:
            table[upper] = char.upper()
    return table


def _c1_table() -> dict[int, str]:
    """C1 controls U+80..U+9F read as the Windows-1252 bytes they most likely were; the five
    bytes Windows-1252 leaves undefined stay as they are."""
    table = {}
    for b in range(0x80, 0xA0):
        try:
            table[b] = bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            table[b] = chr(b)
    return table


def _width_table() -> dict[int, str]:
    """Fullwidth and halfwidth forms -> their usual width (their NFKC form), and the
    ideographic space -> a space."""
    table = {0x3000: " "}
    for cp in range(0xFF01, 0xFFF0):
        normal = unicodedata.normalize("NFKC", chr(cp))
        if normal != chr(cp):
            table[cp] = normal
    return table


_ENTITIES = _entity_table()
_C1 = _c1_table()
_WIDTH = _width_table()
# Latin ligatures and legacy digraphs split into their letters (not æ / œ, which are
# letters in their own right). U+0149 becomes U+02BC + n, which the quote fix then straightens.
_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn",
    0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl",
    0xFB05: "\u017ft", 0xFB06: "st",
}  # fmt: skip
_QUOTES = {cp: "'" for cp in (0x02BC, 0x2018, 0x2019, 0x201A, 0x201B)}
_QUOTES.update({cp: '"' for cp in range(0x201C, 0x2020)})
_LINE_BREAKS = {0x2028: "\n", 0x2029: "\n", 0x0085: "\n"}
_CONTROLS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF]
    + list(range(0xFFF9, 0xFFFD))
)


def _unescape_entity(match: re.Match) -> str:
    entity = match.group(0)
    if entity in _ENTITIES:
        return _ENTITIES[entity]
    if entity.startswith("&#"):
        text = html.unescape(entity)
        # A numeric reference only counts when it decodes whole, semicolon included.
        return entity if ";" in text else text
    return entity


def _join_surrogates(text: str) -> str:
    if not _SURROGATE.search(text):
        return text
    pair = lambda m: chr(0x10000 + (ord(m[0][0]) - 0xD800) * 0x400 + ord(m[0][1]) - 0xDC00)
    return _SURROGATE.sub("\ufffd", _SURROGATE_PAIR.sub(pair, text))


def _fix_segment(text: str, unescape: bool) -> str:
    """One line, every fix in ftfy's order, repeated until nothing changes."""
    while True:
        before = text
        if unescape:
            text = _ENTITY.sub(_unescape_entity, text)
        text = text.translate(_C1).translate(_LIGATURES).translate(_WIDTH)
        text = text.translate(_QUOTES).replace("\r\n", "\n").replace("\r", "\n")
        text = _join_surrogates(text.translate(_LINE_BREAKS))
        text = _TERMINAL_ESCAPE.sub("", text).translate(_CONTROLS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def fix_text_plain(text: str) -> str:
    """ftfy.fix_text's default fixes except the mojibake repair, without ftfy.

    HTML entities are decoded only until the first line containing '<' (that text is
    taken to be real HTML); then C1 controls as Windows-1252, Latin ligatures, character
    widths, curly quotes, line breaks, surrogates, terminal escapes, invisible controls
    and NFC normalisation.
    """
    out, pos, unescape = [], 0, True
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        end = min(end, pos + _SEGMENT)
        segment = text[pos:end]
        unescape = unescape and "<" not in segment
        out.append(_fix_segment(segment, unescape))
        pos = end
    return "".join(out)


def default_fix_text() -> Callable[[str], str]:
    """ftfy.fix_text when ftfy is installed, else `fix_text_plain`."""
    try:
        import ftfy
    except ImportError:
        return fix_text_plain
    return ftfy.fix_text


def clean_caption(text: str, fix_text: Callable[[str], str] = fix_text_plain) -> str:
    """The text CLIP's tokenizer splits: fixed, HTML-unescaped twice, whitespace runs
    collapsed to one space, stripped, lowercased."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()
