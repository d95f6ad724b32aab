"""Korean-aware text measures for instruction checks: eojeol words, sentences, script-based language.

IFEval's reference checker counts words with an English tokenizer, splits sentences with nltk's punkt (which
downloads data at import time) and detects language with a statistical model. None of that fits Korean:
words are eojeol (space-separated units with particles attached), sentences may end in a verb ending without
punctuation before a line break, and Hangul identifies Korean with certainty. These functions are pure and
need no downloads.
"""

from __future__ import annotations

import re
import unicodedata

# Sentence ends: terminal punctuation (ASCII, full-width, ellipsis), optionally followed by one closing quote or
# bracket, then whitespace; or a line break. Decimals ("3.5") and versions ("v1.2") never split because
# no whitespace follows the dot.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？…][\"'”’」』)\]])\s+|(?<=[.!?。！？…])\s+|\n+")
_WORD_CHAR = re.compile(r"[0-9A-Za-z\u3131-\u318e\uac00-\ud7a3\u4e00-\u9fff\u3040-\u30ff\u0400-\u04ff]")
_TRAILING = "\"'”’」』)]}.!?。！？…~·,;: \t\n"

# Scripts that identify a language on their own; Latin is shared, so it maps to English only as a fallback.
_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("ko", "\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e"),
    ("ja", "\u3040-\u30ff"),
    ("zh", "\u4e00-\u9fff"),
    ("ru", "\u0400-\u04ff"),
    ("ar", "\u0600-\u06ff"),
    ("hi", "\u0900-\u097f"),
    ("th", "\u0e00-\u0e7f"),
    ("el", "\u0370-\u03ff"),
    ("he", "\u0590-\u05ff"),
    ("en", "A-Za-z"),
)

# Polite sentence endings. 하십시오체 (formal) and 해요체 (polite informal) are what "존댓말" instructions mean.
HAPSYO_ENDINGS = ("니다", "니까", "십시오", "시오")
HAEYO_ENDINGS = ("요", "죠")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, Korean style: after . ! ? (and full-width forms, …) or at line breaks.

    Args:
        text: any text; markdown list markers stay part of their sentence.

    Returns:
        Non-empty stripped sentences in order.
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip() and _WORD_CHAR.search(s)]


def count_sentences(text: str) -> int:
    """Number of sentences as ``split_sentences`` finds them."""
    return len(split_sentences(text))


def words(text: str) -> list[str]:
    """Eojeol: whitespace-separated units that contain at least one letter or digit (punctuation alone is not a word)."""
    return [w for w in text.split() if _WORD_CHAR.search(w)]


def count_words(text: str) -> int:
    """Number of eojeol (Korean words with their particles), e.g. '나는 학교에 간다' has 3."""
    return len(words(text))


def script_counts(text: str) -> dict[str, int]:
    """How many letters of each identifying script the text holds."""
    return {lang: len(re.findall(f"[{chars}]", text)) for lang, chars in _SCRIPTS}


def detect_language(text: str) -> str | None:
    """The language whose script dominates the letters of ``text`` (ISO 639-1), or None without letters.

    Hangul is decisive for Korean: a Korean answer that quotes English terms is still Korean, so Korean wins
    when Hangul makes up at least a third of the letters. Kana beats Han characters (Japanese uses both).
    """
    counts = script_counts(text)
    total = sum(counts.values())
    if total == 0:
        return None
    if counts["ko"] * 3 >= total:
        return "ko"
    if counts["ja"] and counts["ja"] * 5 >= counts["zh"]:
        return "ja"
    return max(counts, key=lambda lang: counts[lang])


def hangul_ratio(text: str) -> float:
    """Share of Hangul among the letters of ``text`` (0.0 without letters)."""
    counts = script_counts(text)
    total = sum(counts.values())
    return counts["ko"] / total if total else 0.0


def sentence_ending(sentence: str) -> str:
    """The sentence without trailing punctuation, quotes, emoji or spaces (where its verb ending is)."""
    stripped = sentence.rstrip()
    while stripped and (stripped[-1] in _TRAILING or unicodedata.category(stripped[-1]) in ("So", "Sk", "Po")):
        stripped = stripped[:-1].rstrip()
    return stripped


def is_honorific(sentence: str, style: str = "any") -> bool:
    """Whether a Korean sentence ends politely.

    Args:
        sentence: one sentence.
        style: ``hapsyo`` (하십시오체: -니다, -니까, -시오), ``haeyo`` (해요체: -요, -죠) or ``any`` of both.

    Returns:
        True when the sentence's final Hangul ends in one of the style's endings. A sentence without Hangul
        (a number, an English quote, a code line) is not judged and counts as polite.
    """
    ending = sentence_ending(sentence)
    if not re.search("[\uac00-\ud7a3]", ending):
        return True
    endings = {"hapsyo": HAPSYO_ENDINGS, "haeyo": HAEYO_ENDINGS, "any": HAPSYO_ENDINGS + HAEYO_ENDINGS}[style]
    return ending.endswith(endings) or (style != "haeyo" and _is_formal_suggestion(ending))


def _is_formal_suggestion(ending: str) -> bool:
    # 합시다 / 갑시다 / 읽읍시다: "-(으)ㅂ시다" is 하십시오체 too; the ㅂ sits in the syllable before 시다.
    if len(ending) < 3 or not ending.endswith("시다"):
        return False
    code = ord(ending[-3]) - 0xAC00
    return 0 <= code < 11172 and code % 28 == 17
