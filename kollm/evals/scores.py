"""Turn lm-eval's raw results into kollm scores (percent), and refuse results that cannot be right."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from kollm.errors import EvalRunError
from kollm.evals.suites import PlannedSuite


@dataclass(frozen=True)
class SuiteScore:
    """One suite's score in percent (0-100), with what it means."""

    suite: str
    score: float
    stderr: float | None
    n_samples: int
    per_task: dict[str, float]
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def leaf_tasks(raw: dict[str, Any], name: str) -> list[str]:
    """The tasks that produced samples under ``name`` (itself when it is a task, its subtasks when a group)."""
    children = raw.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    leaves: list[str] = []
    for child in children:
        leaves.extend(leaf_tasks(raw, child))
    return leaves


def _metric(sample: dict[str, Any], metric: str) -> float:
    value = sample[metric]
    # Instruction-level metrics are per-instruction lists; the prompt counts by its share of passes.
    return sum(value) / len(value) if isinstance(value, list) else float(value)


def check_choices_differ(task: str, samples: list[dict[str, Any]]) -> None:
    """Fail when a multiple-choice question got the same loglikelihood for every choice.

    That is the signature of a backend that does not score continuations (llama.cpp's server echo): lm-eval
    then picks the first choice every time and reports the share of "A" answers as accuracy.

    Raises:
        EvalRunError: naming the task and how many questions were affected.
    """
    tied = 0
    for sample in samples:
        resps = sample.get("filtered_resps") or []
        lls = [r[0] if isinstance(r, list | tuple) else r for r in resps]
        if len(lls) > 1 and all(isinstance(x, int | float) for x in lls) and len(set(lls)) == 1:
            tied += 1
    if tied:
        raise EvalRunError(
            f"{tied} of {len(samples)} questions in '{task}' scored every choice the same; the backend does not "
            "return real continuation logprobs, and the accuracy would be meaningless.",
            hint="Evaluate a GGUF in process (`kollm eval model.gguf`), not through llama.cpp's server; "
            "servers must return prompt logprobs (vLLM does).",
        )


def suite_score(suite: PlannedSuite, raw: dict[str, Any]) -> SuiteScore:
    """Read one suite's score out of ``simple_evaluate``'s results.

    micro: lm-eval's own number for the suite's task or group (groups weight subtasks by size), or the mean
    over all samples when the suite lists several tasks. macro: the mean of per-task means.

    Raises:
        EvalRunError: the metric is missing, or choices tied (see ``check_choices_differ``).
    """
    metric = suite.spec.metric
    samples: dict[str, list[dict[str, Any]]] = raw.get("samples") or {}
    per_task: dict[str, float] = {}
    values: list[float] = []
    for top in suite.tasks:
        for task in leaf_tasks(raw, top):
            task_samples = samples.get(task, [])
            if raw.get("configs", {}).get(task, {}).get("output_type") == "multiple_choice":
                check_choices_differ(task, task_samples)
            task_values = [_metric(s, metric) for s in task_samples if metric in s]
            if task_values:
                per_task[task] = 100.0 * sum(task_values) / len(task_values)
                values.extend(task_values)
    if not values:
        raise EvalRunError(f"suite '{suite.name}' produced no '{metric}' values (tasks {suite.tasks})")
    stderr = None
    if suite.spec.aggregation == "macro":
        score = sum(per_task.values()) / len(per_task)
    elif len(suite.tasks) == 1 and f"{metric},none" in raw["results"].get(suite.tasks[0], {}):
        entry = raw["results"][suite.tasks[0]]
        score = 100.0 * float(entry[f"{metric},none"])
        stderr = _stderr(entry.get(f"{metric}_stderr,none"))
    else:
        score = 100.0 * sum(values) / len(values)
    if stderr is None and suite.spec.aggregation == "micro":
        stderr = _sample_stderr(values)
    return SuiteScore(suite.name, score, stderr, len(values), per_task, suite.protocol)


def _stderr(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has none
    return None if math.isnan(number) else 100.0 * number


def _sample_stderr(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return 100.0 * math.sqrt(variance / n)
