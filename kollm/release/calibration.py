"""Korean text for calibration (GPTQ) and for held-out perplexity (the quality report).

The default calibration set is the Korean half of the corpus bundled with kollm, minus every tenth line,
which is held out: the pretrained fixture never trains on those lines and the quality report measures
perplexity on them. A release may calibrate GPTQ and the GGUF importance matrix on its own SFT data instead
(``exports.gptq_calibration``, ``exports.gguf_imatrix_calibration``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from kollm.errors import CalibrationDataError

HELDOUT_EVERY = 10  # line i of corpus_ko.txt is held out when i % HELDOUT_EVERY == 0


def _korean_lines() -> list[str]:
    text = (resources.files("kollm.testing") / "data" / "corpus_ko.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def heldout_korean_lines() -> list[str]:
    """Bundled Korean lines that are never used for training or calibration."""
    return [line for i, line in enumerate(_korean_lines()) if i % HELDOUT_EVERY == 0]


def training_korean_lines() -> list[str]:
    """Every bundled Korean line that is not held out: fixture pretraining text and default calibration set."""
    return [line for i, line in enumerate(_korean_lines()) if i % HELDOUT_EVERY != 0]


def _record_text(record: Any, tokenizer: Any, path: Path, line_no: int, field: str) -> str:
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        if isinstance(record.get("messages"), list) and tokenizer is not None and tokenizer.chat_template:
            return tokenizer.apply_chat_template(record["messages"], tokenize=False)
        if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
            return record["prompt"] + record["completion"]
    raise CalibrationDataError(
        path,
        f"line {line_no} has none of 'text', 'messages' (with a chat template), or 'prompt' + 'completion'",
        field=field,
    )


def read_texts(path: Path, *, tokenizer: Any = None, field: str = "exports.gptq_calibration") -> list[str]:
    """Read calibration texts from a file: ``.txt`` (one text per line) or ``.jsonl`` (SFT records).

    Args:
        path: the file.
        tokenizer: renders ``messages`` records with its chat template.
        field: the spec field that named the file (errors name it).

    Returns:
        The non-empty texts, in file order.

    Raises:
        CalibrationDataError: the file is missing, empty, malformed, or of an unknown kind.
    """
    if not path.is_file():
        raise CalibrationDataError(path, "the file does not exist", field=field)
    if path.suffix not in (".txt", ".jsonl"):
        raise CalibrationDataError(path, f"unknown file kind '{path.suffix}'", field=field)
    texts: list[str] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            texts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationDataError(path, f"line {line_no} is not JSON ({e.msg})", field=field) from e
        texts.append(_record_text(record, tokenizer, path, line_no, field))
    if not texts:
        raise CalibrationDataError(path, "it holds no text", field=field)
    return texts


def pack_texts(texts: list[str], *, per_sample: int, limit: int) -> list[str]:
    """Join consecutive short texts ``per_sample`` at a time (newline-separated); return at most ``limit``."""
    packed = ["\n".join(texts[i : i + per_sample]) for i in range(0, len(texts), per_sample)]
    return packed[:limit]
