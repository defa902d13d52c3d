"""CLIPTokenizer against OpenAI CLIP's SimpleTokenizer (clip-anytorch), and the padded batch
format SAM 3's text encoder reads."""

from __future__ import annotations

import functools
import unicodedata
import warnings

import numpy as np
import pytest

from sam_jax.text import CLIPTokenizer, fix_text_plain
from sam_jax.text.clip_tokenizer import VOCAB_PATH

WORDS = """
person bicycle car motorcycle airplane bus train truck boat traffic-light fire_hydrant
stop-sign parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe
backpack umbrella handbag tie suitcase frisbee skis snowboard sports-ball kite baseball-bat
skateboard surfboard tennis racket bottle wine-glass cup fork knife spoon bowl banana apple
sandwich orange broccoli carrot hot-dog pizza donut cake chair couch potted-plant bed
dining-table toilet tv laptop mouse remote keyboard cell-phone microwave oven toaster sink
refrigerator book clock vase scissors teddy-bear hair-drier toothbrush
pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism
supercalifragilisticexpialidocious Donaudampfschifffahrtsgesellschaftskapitän
""".split()

PHRASES = [
    "a red car",
    "A Red CAR",
    "the dog's ball",
    "THE DOG'S BALL",
    "I'm sure they're here, we've seen it; you'll see, he'd say",
    "DON'T STOP, CAN'T STOP, WON'T STOP",
    "rock 'n' roll",
    "''s ''t 'S '''",
    "it’s a “quoted” phrase ‘here’",
    "3.14159 is pi, 2.71828 is e",
    "1,000,000 dollars / 12:30pm / 2024-01-31 / #42 / 50% / $9.99 / 1e-5",
    "x1 2y a1b2c3 0x7f 007",
    "hello, world!!! ?!? ... --- ___ *** ### @@@ ~~~ ^^^",
    "(parentheses) [brackets] {braces} <angles>",
    "email@example.com https://example.org/path?q=1&x=2",
    "tab\tseparated\twords",
    "line\nbreaks\r\nand\rreturns",
    "   leading and trailing spaces   ",
    "non\u00a0breaking\u2003em\u2009thin\u3000ideographic spaces",
    "naïve café résumé façade jalapeño crème brûlée",
    "Ünïcödé ÀÉÎÕÜ Straße ß",
    "Ελληνικά κείμενο",
    "русский текст, Привет мир",
    "日本語のテキスト 東京タワー",
    "中文文本 你好世界",
    "한국어 텍스트",
    "العربية نص",
    "עברית טקסט",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "ﬁsh ﬂower ﬀ ﬃ ﬄ Ĳssel ǅ",
    "&amp; &lt;tag&gt; &quot;q&quot; &#39;s &#x2019; &hellip; &NTILDE; &nbsp;",
    "&amp;amp; double escaped",
    "<b>bold &amp; html</b>",
    "a < b &amp; c\nd &amp; e",
    "surrogates \ud83d\ude00 and a lone \ud800",
    "emoji 🐶🐱🐭 🚗💨 ❤️ 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 🏳️‍🌈",
    "math ∑ ∫ √ ∞ ≠ ≤ ≥ ± × ÷ ° µ Ω",
    "currency € £ ¥ ₹ ₿ ¢",
    "super²script and sub₂script ½ ¼ Ⅻ ⑳",
    "soft\u00adhyphen zero\u200bwidth join\u200dner bom\ufeff",
    "controls \x00\x01\x07\x1b[31mred\x1b[0m \x7f\x85\x92",
    "combining e\u0301 a\u0308 n\u0303",
    "<|startoftext|> literal specials <|endoftext|>",
    "<|EndOfText|>",
    "",
    "   ",
    "!",
    "!?",
    "'",
    "a" * 100,
    "word " * 40,
    "a very long caption that certainly does not fit into thirty-two tokens because it "
    "goes on and on with more and more words describing every object in the scene",
]


def _random_strings(n: int, seed: int) -> list[str]:
    """Strings drawn from a pool of letters, digits, punctuation, spaces and non-ASCII."""
    pool = list(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        "      .,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`"
        "éèüöäçñßøåÆŒЖжΩπ中文日本한글١٢३🐶🚗👍🏽\u0301\u00a0\u2019\u201c\u3000ｆ"
    )
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(pool, size=rng.integers(1, 60))) for _ in range(n)]


CAPTIONS = WORDS + PHRASES + _random_strings(300, 0)
# Name prefixes of large blocks whose characters all split alike (letters, category Lo).
_UNIFORM_BLOCKS = (
    "CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HANGUL SYLLABLE", "TANGUT", "KHITAN",
    "NUSHU", "EGYPTIAN HIEROGLYPH", "YI SYLLABLE", "CUNEIFORM", "ANATOLIAN", "BAMUM",
)  # fmt: skip
# Mojibake (UTF-8 read as Windows-1252): only ftfy repairs it.
MOJIBAKE = {"cafÃ©": "café", "âœ” No problems": "✔ No problems"}


@functools.cache
def _tokenizer(fallback: bool = False) -> CLIPTokenizer:
    return CLIPTokenizer(fix_text=fix_text_plain) if fallback else CLIPTokenizer()


@functools.cache
def _reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clip imports pkg_resources
        from clip.simple_tokenizer import SimpleTokenizer
    return SimpleTokenizer()


def test_list_is_varied():
    assert len(CAPTIONS) >= 400
    assert len(set(CAPTIONS)) > 390


@pytest.mark.torch
def test_vocabulary_matches_reference():
    tok, ref = _tokenizer(), _reference()
    assert len(tok) == 49408
    assert tok.vocab == ref.encoder
    assert (tok.start_id, tok.end_id) == (49406, 49407)


@pytest.mark.torch
@pytest.mark.parametrize("fallback", [False, True], ids=["ftfy", "plain"])
def test_ids_match_simple_tokenizer(fallback: bool):
    tok, ref = _tokenizer(fallback), _reference()
    wrong = [(c, tok.encode(c), ref.encode(c)) for c in CAPTIONS if tok.encode(c) != ref.encode(c)]
    assert not wrong, wrong[:5]


@pytest.mark.torch
def test_every_assigned_character_splits_like_reference():
    """Each code point this Python's Unicode assigns (1 in 31 of the large uniform
    ideograph and syllable blocks), between letters, digits, punctuation, an apostrophe and
    spaces: the pre-tokenisation and cleanup agree with the reference."""
    tok, ref = _tokenizer(), _reference()
    chars = [
        chr(cp)
        for cp in range(0x110000)
        if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co")
        and (cp % 31 == 0 or not unicodedata.name(chr(cp), "").startswith(_UNIFORM_BLOCKS))
    ]
    wrong = []
    for i in range(0, len(chars), 64):
        text = " ".join(f"a{c}b'{c} {c}{c}1{c}." for c in chars[i : i + 64])
        if tok.encode(text) != ref.encode(text):
            wrong.append(chars[i : i + 64])
    assert not wrong, [hex(ord(c[0])) for c in wrong[:10]]


def test_plain_cleanup_equals_ftfy_but_for_mojibake():
    ftfy = pytest.importorskip("ftfy")
    wrong = [c for c in CAPTIONS if fix_text_plain(c) != ftfy.fix_text(c)]
    assert not wrong, wrong[:5]
    for broken, fixed in MOJIBAKE.items():
        assert ftfy.fix_text(broken) == fixed
        assert fix_text_plain(broken) != fixed
    assert fix_text_plain("it&#x2019;s ﬂubberiﬁc") == "it's flubberific"
    assert fix_text_plain("ＬＯＵＤ\r\nb") == "LOUD\nb"


def test_known_ids():
    tok = _tokenizer()
    assert tok.encode("a red car") == [320, 736, 1615]
    assert tok.encode("A  RED\tcar ") == [320, 736, 1615]
    assert tok.encode("the dog's ball!!") == [518, 1929, 568, 1069, 748]
    assert tok.encode("hello <|endoftext|> x") == [3306, 49407, 343]
    assert tok.decode(tok.encode("The dog's ball")) == "the dog 's ball "


def test_batch_format():
    tok = _tokenizer()
    long = "word " * 40
    out = tok(["a red car", "", long])
    assert out.shape == (3, 32) and out.dtype == np.int32
    np.testing.assert_array_equal(out[0, :5], [49406, 320, 736, 1615, 49407])
    assert not out[0, 5:].any()
    np.testing.assert_array_equal(out[1, :2], [49406, 49407])
    assert not out[1, 2:].any()
    ids = tok.encode(long)
    assert len(ids) > 31
    np.testing.assert_array_equal(out[2], [49406, *ids[:30], 49407])
    single = tok("a red car", context_length=8)
    np.testing.assert_array_equal(single, [[49406, 320, 736, 1615, 49407, 0, 0, 0]])
    exact = tok("a red car", context_length=5)  # fits exactly: nothing cut
    np.testing.assert_array_equal(exact, [[49406, 320, 736, 1615, 49407]])
    cut = tok("a red car", context_length=4)
    np.testing.assert_array_equal(cut, [[49406, 320, 736, 49407]])
    assert tok([]).shape == (0, 32)


@pytest.mark.torch
def test_batch_matches_ultralytics_padding():
    """The padded rows equal the reference's encode wrapped as ultralytics' SAM 3 expects
    (start, ids, end, cut to the context with the end token last)."""
    tok, ref = _tokenizer(), _reference()
    out = tok(CAPTIONS, context_length=32)
    for row, caption in zip(out, CAPTIONS, strict=True):
        ids = [ref.encoder["<|startoftext|>"], *ref.encode(caption), 49407][:32]
        ids[-1] = 49407
        np.testing.assert_array_equal(row, ids + [0] * (32 - len(ids)))


def test_bad_input():
    tok = _tokenizer()
    with pytest.raises(ValueError, match="str"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([320, 49408])
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=0)
    with pytest.raises(ValueError, match="BPE merge list"):
        CLIPTokenizer(vocab_path=VOCAB_PATH.with_name("CLIP_VOCAB_LICENSE.txt"))
