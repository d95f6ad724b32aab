"""Training data formats: read and validate records (file + line in every error), then tokenize per stage.

Formats, one JSON object per line:
- cpt: ``{"text": ...}`` JSONL, or a ``.txt`` file with one document per line.
- sft: ``{"messages": [{"role": ..., "content": ...}, ...]}`` or ``{"instruction", "input"?, "output"}``.
- dpo: ``{"prompt", "chosen", "rejected"}`` (strings).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kollm.errors import DataFormatError, InputNotFoundError

ROLES = ("system", "user", "assistant")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line.

    Raises:
        DataFormatError: invalid JSON or a non-object line, naming the line.
    """
    with path.open(encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, number, f"not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise DataFormatError(path, number, "each line must be a JSON object")
            yield number, record


def _text(path: Path, line: int, record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataFormatError(path, line, f"field '{key}' must be a non-empty string")
    return value


def _check_keys(path: Path, line: int, record: dict, allowed: set[str]) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise DataFormatError(
            path, line, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )


def read_cpt(path: Path) -> list[str]:
    """Raw text documents from ``.txt`` (one per line) or ``{"text"}`` JSONL."""
    _exists(path)
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = []
    for line, record in iter_jsonl(path):
        _check_keys(path, line, record, {"text"})
        docs.append(_text(path, line, record, "text"))
    return docs


def read_sft(path: Path) -> list[list[dict[str, str]]]:
    """Conversations (lists of role/content messages); instruction/input/output records become user+assistant."""
    _exists(path)
    conversations = []
    for line, record in iter_jsonl(path):
        if "messages" in record:
            _check_keys(path, line, record, {"messages"})
            conversations.append(_messages(path, line, record["messages"]))
        elif "instruction" in record:
            _check_keys(path, line, record, {"instruction", "input", "output"})
            prompt = _text(path, line, record, "instruction")
            extra = _text(path, line, record, "input", required=False)
            user = f"{prompt}\n\n{extra}" if extra.strip() else prompt
            conversations.append(
                [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": _text(path, line, record, "output")},
                ]
            )
        else:
            raise DataFormatError(
                path, line, "an SFT record needs 'messages' (chat) or 'instruction' + 'output' (instruction format)"
            )
    return conversations


def _messages(path: Path, line: int, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(path, line, "'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise DataFormatError(path, line, f"messages[{i}] must be an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise DataFormatError(
                path, line, f"messages[{i}].role '{message['role']}' is not one of {', '.join(ROLES)}"
            )
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise DataFormatError(path, line, f"messages[{i}].content must be a non-empty string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataFormatError(path, line, "the conversation has no assistant message, so nothing would be learned")
    return messages


def read_dpo(path: Path) -> list[dict[str, str]]:
    """Preference pairs ``{"prompt", "chosen", "rejected"}``."""
    _exists(path)
    pairs = []
    for line, record in iter_jsonl(path):
        _check_keys(path, line, record, {"prompt", "chosen", "rejected"})
        pair = {key: _text(path, line, record, key) for key in ("prompt", "chosen", "rejected")}
        if pair["chosen"] == pair["rejected"]:
            raise DataFormatError(path, line, "'chosen' and 'rejected' are identical, so the pair teaches nothing")
        pairs.append(pair)
    return pairs


def _exists(path: Path) -> None:
    if not path.is_file():
        raise InputNotFoundError(
            "data file", path, hint="Check the spec's `data` list (paths are relative to the cwd)."
        )


def tokenize_cpt(docs: list[str], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Token ids per document with EOS appended, so packed blocks keep document boundaries visible."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [{"input_ids": tokenizer(doc, add_special_tokens=False)["input_ids"] + eos} for doc in docs]


def tokenize_sft(
    conversations: list[list[dict[str, str]]], tokenizer: Any, max_length: int
) -> list[dict[str, list[int]]]:
    """input_ids + labels with -100 everywhere except assistant turns (their content and end-of-turn token).

    Renders growing prefixes of each conversation through the tokenizer's own chat template, so it works for any
    template whose rendering of a prefix is a prefix of the whole (ChatML, Llama 3, Gemma, EXAONE all are).
    """
    examples = []
    for conversation in conversations:
        ids: list[int] = []
        labels: list[int] = []
        for i, message in enumerate(conversation):
            upto = _render(tokenizer, conversation[: i + 1])
            if message["role"] == "assistant":
                before = _render(tokenizer, conversation[:i], generation_prompt=True)
                prompt_part, answer_part = upto[len(ids) : len(before)], upto[len(before) :]
                ids += prompt_part + answer_part
                labels += [-100] * len(prompt_part) + answer_part
            else:
                new = upto[len(ids) :]
                ids += new
                labels += [-100] * len(new)
        examples.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return examples


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> list[int]:
    if not messages and not generation_prompt:
        return []
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    # transformers 5 returns a BatchEncoding here; older versions a plain list.
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def dpo_conversational(pairs: list[dict[str, str]]) -> list[dict[str, list[dict[str, str]]]]:
    """trl's conversational preference format, so the chat template wraps prompt and answers as in SFT."""
    return [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


def read_for_stage(stage: str, paths: list[Path]) -> list[Any]:
    """Read and validate every file of a stage's data list, in order."""
    reader = {"cpt": read_cpt, "sft": read_sft, "dpo": read_dpo}[stage]
    records: list[Any] = []
    for path in paths:
        records.extend(reader(path))
    if not records:
        raise DataFormatError(paths[0], None, "no records found", hint="Check that the files are not empty.")
    return records
