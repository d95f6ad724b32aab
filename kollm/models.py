"""What kollm knows per model family: llama.cpp pre-tokenizer names and the strings that tell them apart.

llama.cpp's converter identifies a BPE pre-tokenizer by hashing the ids of a probe string, so any vocabulary
it has not seen (every Korean-extended one) is refused. The split rules, not the vocabulary, decide which
pre-tokenizer is right, so kollm reads them from tokenizer.json and maps them to llama.cpp's name. The choice
is then proven by comparing llama.cpp's and HF's token ids on ``PARITY_TEXTS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kollm.errors import PreTokenizerError

# The split regexes as they appear in tokenizer.json for each family.
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# (split regexes in order, ByteLevel applies the GPT-2 regex itself) -> llama.cpp pre-tokenizer name
_KNOWN_SIGNATURES: dict[tuple[tuple[str, ...], bool], str] = {
    ((_QWEN2_REGEX,), False): "qwen2",
    ((_LLAMA3_REGEX,), False): "llama-bpe",
    ((), True): "gpt2",
    ((r"\p{N}",), True): "exaone",  # EXAONE 3.x: digits split singly, then GPT-2 rules
}

SPLIT_REGEXES = {"qwen2": _QWEN2_REGEX, "llama-bpe": _LLAMA3_REGEX}

# Strings on which the families above tokenize differently: Korean with digits (single vs 1-3 digit groups),
# runs of spaces and newlines, emoji, English contractions, mixed scripts.
PARITY_TEXTS = [
    "안녕하세요, 반갑습니다.",
    "2024년 3월 15일에 12345원을 냈습니다.",
    "서울특별시 강남구 테헤란로 152",
    "I've been told he's there, we'll see.",
    "줄바꿈\n\n두 번, 그리고   공백 세 개.",
    "이모지 🚀 와 ✅ 가 섞인 문장 😶\u200d🌫️",
    "GPU 8장으로 70B 모델을 학습했다.",
    "def add(a, b):\n    return a + b",
    "  앞에 공백이 있는 문장",
    "한국어와 English가 섞인 code-switching 문장입니다!",
    "가격은 1,500원이고 할인율은 33.3%입니다.",
    "ㅋㅋㅋ ㅎㅎ 진짜?? 대박!!!",
]


def _split_regexes(pre: dict[str, Any]) -> tuple[tuple[str, ...], bool] | None:
    """Flatten a tokenizers pre_tokenizer into (split regexes, bytelevel_uses_gpt2_regex), or None if unknown."""
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    regexes: list[str] = []
    bytelevel_regex = False
    for part in parts:
        kind = part.get("type")
        if kind == "Split":
            pattern = part.get("pattern", {})
            if "Regex" not in pattern:
                return None
            regexes.append(pattern["Regex"])
        elif kind == "ByteLevel":
            bytelevel_regex = bool(part.get("use_regex", True))
        elif kind == "Digits" and part.get("individual_digits"):
            regexes.append(r"\p{N}")
        else:
            return None
    return tuple(regexes), bytelevel_regex


def resolve_pre_tokenizer(model_dir: Path) -> str:
    """Return the llama.cpp pre-tokenizer name for the tokenizer in ``model_dir``.

    Raises:
        PreTokenizerError: the tokenizer is not a byte-level BPE with split rules kollm recognises.
    """
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise PreTokenizerError(path, "tokenizer.json is missing (SentencePiece models need no pre-tokenizer)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if (data.get("model") or {}).get("type") != "BPE":
        raise PreTokenizerError(path, "the tokenizer model is not BPE")
    signature = _split_regexes(data.get("pre_tokenizer") or {})
    if signature is None or signature not in _KNOWN_SIGNATURES:
        raise PreTokenizerError(path, "its pre_tokenizer split rules match none of qwen2, llama-bpe, gpt2, exaone")
    return _KNOWN_SIGNATURES[signature]


def eos_token_ids(model_dir: Path) -> list[int]:
    """EOS ids a runtime must stop on: generation_config.json's list, else config.json's id."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if value is not None:
                ids = value if isinstance(value, list) else [value]
                break
    return ids
