"""`kollm data prep`: clean a Korean corpus before training, and say what was dropped and why.

Per record: Unicode normalisation (NFC, or NFKC to fold full-width forms) → HTML stripped and entities
unescaped → whitespace collapsed → PII masked → length and Korean-ratio filters → exact duplicates (sha256 of
the cleaned text) → near duplicates (MinHash LSH from ``datasketch`` over character 5-gram shingles: Korean has
no reliable word boundaries for word shingles, and LSH keeps the check sub-quadratic on large corpora).

Works on ``.txt`` (one document a line) and on the JSONL training formats (every string field is cleaned;
filters and dedup look at the record's text as a whole).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

from kollm.errors import DataFormatError, InputNotFoundError
from kollm.manifest import write_json_atomic, write_text_atomic
from kollm.train.data import iter_jsonl

# Order matters: emails first (they contain digits), then resident numbers, phones, then long digit groups.
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # 주민등록번호: YYMMDD-GNNNNNN, G in 1-8 (4 centuries x sex, foreigners 5-8); month and day checked.
    "rrn": re.compile(r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-?\s?[1-8]\d{6}(?!\d)"),
    "phone": re.compile(
        r"(?<![\d-])(?:\+82[\s-]?(?:0)?|0)(?:1[016789]|2|[3-6][1-5]|70)[\s.-]?\d{3,4}[\s.-]?\d{4}(?![\d-])"
    ),
    # Bank accounts: 3-4 hyphenated digit groups with 10-14 digits in all (dates and prices have fewer).
    "account": re.compile(r"(?<![\d-])\d{2,6}-\d{2,6}-\d{2,7}(?:-\d{1,3})?(?![\d-])"),
}
MASKS = {"email": "[이메일]", "rrn": "[주민등록번호]", "phone": "[전화번호]", "account": "[계좌번호]"}
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")


@dataclass(frozen=True)
class PrepConfig:
    """Cleaning settings (the CLI flags of `kollm data prep`)."""

    normalization: Literal["NFC", "NFKC"] = "NFC"
    min_chars: int = 10
    max_chars: int = 20000
    min_korean_ratio: float = 0.5  # Hangul share of the letters (Hangul + Latin + Han + ...)
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity of 5-gram shingle sets
    num_perm: int = 128
    shingle: int = 5


@dataclass
class PrepResult:
    """Counts of what happened; ``examples`` holds the first few line numbers per drop reason."""

    output_path: Path
    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)


class _TextOnly(HTMLParser):
    """Collects text content, dropping tags, scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li", "tr"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Remove tags (and script/style bodies) and unescape entities; plain text passes through unchanged."""
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))


def mask_pii(text: str, counts: dict[str, int] | None = None) -> str:
    """Replace emails, resident registration numbers, phone and account numbers with Korean placeholders."""
    for kind, pattern in PII_PATTERNS.items():
        hits = 0

        def replace(match: re.Match[str], kind: str = kind) -> str:
            nonlocal hits
            if kind == "account" and not 10 <= _digits(match.group()) <= 14:
                return match.group()
            hits += 1
            return MASKS[kind]

        text = pattern.sub(replace, text)
        if counts is not None and hits:
            counts[kind] = counts.get(kind, 0) + hits
    return text


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def korean_ratio(text: str) -> float:
    """Share of Hangul among the letters of ``text`` (0 when it has no letters)."""
    letters = sum(ch.isalpha() for ch in text)
    return len(_HANGUL.findall(text)) / letters if letters else 0.0


def clean_text(text: str, cfg: PrepConfig, counts: dict[str, int] | None = None) -> str:
    """Normalise, strip HTML, collapse whitespace and mask PII in one string."""
    text = unicodedata.normalize(cfg.normalization, text)
    text = strip_html(text)
    text = unicodedata.normalize(cfg.normalization, text)  # entities can decode to unnormalised forms
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return mask_pii(text, counts)


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: (v if k == "role" else _map_strings(v, fn)) for k, v in value.items()}
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "role" for s in _strings(v)]
    return []


def _read(path: Path) -> tuple[str, list[tuple[int, Any]]]:
    if not path.is_file():
        raise InputNotFoundError("input data", path, hint="Give a .txt (one document a line) or a JSONL file.")
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return "txt", [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if path.suffix in (".jsonl", ".json"):
        return "jsonl", list(iter_jsonl(path))
    raise DataFormatError(path, None, f"unsupported file type '{path.suffix}'", hint="Use .txt or .jsonl.")


def run_prep(cfg: PrepConfig, *, input_path: Path, output_path: Path, report_path: Path | None = None) -> PrepResult:
    """Clean ``input_path`` into ``output_path`` (same format), optionally writing a JSON report.

    Args:
        cfg: cleaning settings.
        input_path: ``.txt`` or ``.jsonl``.
        output_path: the cleaned file, written atomically.
        report_path: where to write the report (counts, thresholds, example line numbers).

    Returns:
        Counts of kept, dropped (by reason) and masked (by kind) items.

    Raises:
        InputNotFoundError: the input does not exist.
        DataFormatError: a JSONL line is not a JSON object, or the file type is unknown.
    """
    from datasketch import MinHash, MinHashLSH

    kind, records = _read(input_path)
    result = PrepResult(output_path=output_path, total=len(records))
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    seen: set[str] = set()
    kept: list[str] = []

    def drop(reason: str, line: int) -> None:
        result.dropped[reason] = result.dropped.get(reason, 0) + 1
        examples = result.examples.setdefault(reason, [])
        if len(examples) < 20:
            examples.append(line)

    for line, record in records:
        cleaned = _map_strings(record, lambda s: clean_text(s, cfg, result.masked))
        if kind == "txt":
            cleaned = cleaned.replace("\n", " ")  # the output keeps one document a line
        text = "\n".join(_strings(cleaned))
        if not text.strip():
            drop("empty_after_cleaning", line)
        elif len(text) < cfg.min_chars:
            drop("too_short", line)
        elif len(text) > cfg.max_chars:
            drop("too_long", line)
        elif korean_ratio(text) < cfg.min_korean_ratio:
            drop("low_korean_ratio", line)
        else:
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:
                drop("exact_duplicate", line)
                continue
            seen.add(digest)
            minhash = MinHash(num_perm=cfg.num_perm, seed=1)
            compact = re.sub(r"\s+", " ", text)
            for i in range(max(1, len(compact) - cfg.shingle + 1)):
                minhash.update(compact[i : i + cfg.shingle].encode())
            if lsh.query(minhash):
                drop("near_duplicate", line)
                continue
            lsh.insert(str(line), minhash)
            kept.append(cleaned if kind == "txt" else json.dumps(cleaned, ensure_ascii=False))
    result.kept = len(kept)
    write_text_atomic(output_path, "".join(f"{item}\n" for item in kept))
    if report_path is not None:
        report = {"input": str(input_path), "config": asdict(cfg), **asdict(result)}
        report["output_path"] = str(output_path)
        write_json_atomic(report_path, report)
    return result
