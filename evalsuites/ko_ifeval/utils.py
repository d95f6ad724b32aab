"""lm-eval hooks for Ko-IFEval: score each generation with kollm's Korean-aware checker."""

from __future__ import annotations

from kollm.evals.ko_ifeval import score


def process_results(doc: dict, results: list[str]) -> dict:
    """Prompt-level metrics are one bool per item; instruction-level ones a list, flattened by agg_inst_level_acc."""
    outcome = score(doc["instruction_id_list"], doc["kwargs"], results[0])
    return {
        "prompt_level_strict_acc": outcome.prompt_strict,
        "inst_level_strict_acc": outcome.strict,
        "prompt_level_loose_acc": outcome.prompt_loose,
        "inst_level_loose_acc": outcome.loose,
    }


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    """Share of passed instructions over all instructions of all prompts (IFEval's instruction-level accuracy)."""
    flat = [passed for item in items for passed in item]
    return sum(flat) / len(flat)
