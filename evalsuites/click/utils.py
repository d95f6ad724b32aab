"""Prompt hooks for the offline CLIcK sample: the same prompt and answer letters as lm-eval's built-in `click`."""

from __future__ import annotations

LETTERS = ["A", "B", "C", "D", "E"]


def doc_to_text(doc: dict) -> str:
    """CLIcK's prompt: instruction, optional context paragraph, question, four options on one line."""
    options = doc["choices"]
    shown = f"A:{options[0]}, B: {options[1]}, C: {options[2]}, D: {options[3]}"
    if doc["paragraph"]:
        head = "주어진 맥락을 천천히 읽고, 질문에 대한 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오."
        return f"{head}\n\n맥락: {doc['paragraph']}\n질문: {doc['question']}\n보기:\n{shown}\n정답:"
    head = "주어진 질문을 천천히 읽고, 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오."
    return f"{head}\n\n질문: {doc['question']}\n보기:\n{shown}\n정답:"


def doc_to_choice(doc: dict) -> list[str]:
    """Five letters for CSAT items (five options), four otherwise."""
    return LETTERS[: 5 if "CSAT" in doc["id"] else 4]


def doc_to_target(doc: dict) -> int:
    """Index of the answer string among the choices."""
    return doc["choices"].index(doc["answer"])
