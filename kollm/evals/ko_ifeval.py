"""Ko-IFEval scoring: IFEval's instruction checks, made Korean-aware, with strict and loose accuracy.

Items follow allganize/IFEval-Ko (Google IFEval's schema in Korean): ``key``, ``prompt``,
``instruction_id_list`` and ``kwargs`` (one dict per instruction; unused keys may be null). Scoring follows
IFEval: an instruction passes *strictly* when the response satisfies it as written, *loosely* when any of
eight relaxed variants does (first line, last line or both removed, markdown asterisks removed). A prompt
passes when all its instructions pass. Word and sentence counts use eojeol and a Korean sentence splitter
(``kollm.evals.korean_text``); language detection recognises Hangul; case rules look at Latin letters only.
kollm adds ``ko:honorific_endings`` (every sentence in 하십시오체 / 해요체) for Korean-specific prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kollm.evals import korean_text as kt

Check = Callable[[str, dict[str, Any]], bool]

# Answers accepted for detectable_format:constrained_response: IFEval's English ones, and their Korean forms.
CONSTRAINED_OPTIONS = (
    "My answer is yes.",
    "My answer is no.",
    "My answer is maybe.",
    "제 대답은 예입니다.",
    "제 대답은 아니요입니다.",
    "제 대답은 아마도입니다.",
)


def _compare(actual: int, relation: str | None, target: int) -> bool:
    if relation in ("less than", "미만"):
        return actual < target
    if relation in ("at least", "이상", None):
        return actual >= target
    raise ValueError(f"unknown relation '{relation}' (use 'less than' or 'at least')")


def _occurrences(text: str, word: str) -> int:
    # Korean words carry particles ("사과를", "사과가"), so Hangul keywords match as substrings; Latin words
    # keep IFEval's word boundaries so "cat" does not count inside "category".
    if re.search("[\uac00-\ud7a3]", word):
        return text.count(word)
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def _latin_letters(text: str) -> str:
    return "".join(re.findall("[A-Za-z]", text))


def _paragraphs_by_divider(text: str) -> list[str] | None:
    parts = re.split(r"\s?\*\*\*\s?", text)
    stripped = [p.strip() for p in parts]
    # An empty paragraph between two dividers is a formatting failure, not one paragraph fewer.
    for i, p in enumerate(stripped):
        if not p and 0 < i < len(stripped) - 1:
            return None
    return [p for p in stripped if p]


def _nth_paragraph_first_word(text: str, kw: dict[str, Any]) -> bool:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) != kw["num_paragraphs"]:
        return False
    n = kw["nth_paragraph"]
    if n > len(paragraphs):
        return False
    first = kt.words(paragraphs[n - 1])
    if not first:
        return False
    cleaned = first[0].strip("\"'“”‘’「」()[]*.,!?:;").lower()
    return cleaned == str(kw["first_word"]).strip().lower()


def _bullets(text: str) -> int:
    return len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)) + len(
        re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    )


def _highlights(text: str) -> int:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double)


def _sections(text: str, kw: dict[str, Any]) -> bool:
    splitter = str(kw["section_spliter"]).strip()
    parts = re.split(rf"\s?{re.escape(splitter)}\s?\d+\s?", text)
    return len(parts) - 1 >= kw["num_sections"]


def _is_json(text: str) -> bool:
    body = text.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON").removeprefix("```")
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _two_responses(text: str) -> bool:
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def _postscript(text: str, kw: dict[str, Any]) -> bool:
    marker = str(kw["postscript_marker"]).strip().lower()
    lowered = text.lower()
    if marker in ("p.s.", "p.p.s"):
        pattern = r"\s*p\.\s?p\.\s?s.*$" if marker == "p.p.s" else r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return re.search(pattern, lowered, flags=re.MULTILINE) is not None


def _quotation(text: str) -> bool:
    body = text.strip()
    pairs = (('"', '"'), ("“", "”"), ("「", "」"), ("『", "』"))
    return len(body) > 1 and any(body.startswith(a) and body.endswith(b) for a, b in pairs)


def _end_phrase(text: str, kw: dict[str, Any]) -> bool:
    body = text.strip().strip('"“”').strip().lower()
    return body.endswith(str(kw["end_phrase"]).strip().lower())


def _capital_words(text: str, kw: dict[str, Any]) -> bool:
    capitals = [w for w in re.findall(r"[A-Za-z]+", text) if len(w) > 1 and w.isupper()]
    return _compare(len(capitals), kw.get("capital_relation"), kw["capital_frequency"])


def _honorific(text: str, kw: dict[str, Any]) -> bool:
    sentences = kt.split_sentences(text)
    style = kw.get("style") or "any"
    return bool(sentences) and all(kt.is_honorific(s, style) for s in sentences)


CHECKS: dict[str, Check] = {
    "keywords:existence": lambda r, kw: all(_occurrences(r, k) > 0 for k in kw["keywords"]),
    "keywords:frequency": lambda r, kw: _compare(_occurrences(r, kw["keyword"]), kw["relation"], kw["frequency"]),
    "keywords:forbidden_words": lambda r, kw: all(_occurrences(r, w) == 0 for w in kw["forbidden_words"]),
    "keywords:letter_frequency": lambda r, kw: _compare(
        r.lower().count(str(kw["letter"]).lower()), kw["let_relation"], kw["let_frequency"]
    ),
    "language:response_language": lambda r, kw: kt.detect_language(r) == kw["language"],
    "length_constraints:number_sentences": lambda r, kw: _compare(
        kt.count_sentences(r), kw["relation"], kw["num_sentences"]
    ),
    "length_constraints:number_paragraphs": lambda r, kw: (
        (p := _paragraphs_by_divider(r)) is not None and len(p) == kw["num_paragraphs"]
    ),
    "length_constraints:number_words": lambda r, kw: _compare(kt.count_words(r), kw["relation"], kw["num_words"]),
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": lambda r, kw: len(re.findall(r"\[.*?\]", r)) >= kw["num_placeholders"],
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": lambda r, kw: _bullets(r) == kw["num_bullets"],
    "detectable_format:constrained_response": lambda r, kw: any(o in r for o in CONSTRAINED_OPTIONS),
    "detectable_format:number_highlighted_sections": lambda r, kw: _highlights(r) >= kw["num_highlights"],
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": lambda r, kw: _is_json(r),
    "detectable_format:title": lambda r, kw: any(t.strip() for t in re.findall(r"<<([^\n]+)>>", r)),
    "combination:two_responses": lambda r, kw: _two_responses(r),
    "combination:repeat_prompt": lambda r, kw: (
        r.strip().lower().startswith(str(kw["prompt_to_repeat"]).strip().lower())
    ),
    "startend:end_checker": _end_phrase,
    "startend:quotation": lambda r, kw: _quotation(r),
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": lambda r, kw: (s := _latin_letters(r)) != "" and s.isupper(),
    "change_case:english_lowercase": lambda r, kw: (s := _latin_letters(r)) != "" and s.islower(),
    "punctuation:no_comma": lambda r, kw: "," not in r and "，" not in r,
    "ko:honorific_endings": _honorific,
}


@dataclass(frozen=True)
class PromptScore:
    """Per-prompt outcome: one bool per instruction, strict and loose."""

    strict: list[bool]
    loose: list[bool]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def unknown_instructions(instruction_ids: list[str]) -> list[str]:
    """The ids kollm has no check for (used to reject a data set before any model loads)."""
    return [i for i in instruction_ids if i not in CHECKS]


def loose_variants(response: str) -> list[str]:
    """IFEval's relaxed responses: without the first/last line, and with markdown asterisks removed."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [b.replace("*", "") for b in base]


def _check(instruction_id: str, response: str, kwargs: dict[str, Any]) -> bool:
    if not response.strip():
        return False
    return CHECKS[instruction_id](response, kwargs)


def score(instruction_ids: list[str], kwargs_list: list[dict[str, Any] | None], response: str) -> PromptScore:
    """Score one response against its instructions.

    Args:
        instruction_ids: the item's ``instruction_id_list``.
        kwargs_list: the item's ``kwargs``, one dict per instruction (null values are dropped).
        response: the model's answer.

    Returns:
        Strict and loose verdicts per instruction.

    Raises:
        KeyError: an instruction id without a check (``unknown_instructions`` finds them up front).
    """
    variants = [v for v in loose_variants(response) if v.strip()]
    strict, loose = [], []
    for instruction_id, raw in zip(instruction_ids, kwargs_list, strict=True):
        kwargs = {k: v for k, v in (raw or {}).items() if v is not None}
        strict.append(_check(instruction_id, response, kwargs))
        loose.append(any(_check(instruction_id, v, kwargs) for v in variants))
    return PromptScore(strict, loose)
