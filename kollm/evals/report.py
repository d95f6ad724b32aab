"""Eval reports: results JSON (kollm scores + lm-eval's raw output), gate rows, and a bar chart PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.evals.gates import GateOutcome
from kollm.evals.runner import EvalResult
from kollm.evals.suites import SAMPLE_DATA_DIR
from kollm.manifest import atomic_path, tool_versions, write_json_atomic

RESULTS_NAME = "results.json"
CHART_NAME = "scores.png"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report went."""

    results: Path
    chart: Path | None


def gate_rows(outcomes: list[GateOutcome]) -> list[dict[str, Any]]:
    """One row per gate: gate, score ± stderr, threshold, pass/fail (percent, 2 decimals)."""
    rows = []
    for o in outcomes:
        rows.append(
            {
                "gate": o.gate.text,
                "artifact": o.gate.left.artifact,
                "suite": o.gate.left.suite,
                "score": round(o.actual, 2),
                "stderr": round(o.stderr, 2) if o.stderr is not None else None,
                "op": o.gate.op,
                "threshold": round(o.threshold, 2),
                "passed": o.passed,
            }
        )
    return rows


def score_records(outcomes: list[GateOutcome], results: dict[str, EvalResult]) -> list[dict[str, Any]]:
    """One record per gate in the publish stage's ScoreRecord shape (percent), for cards and the publish check."""
    records = []
    for o in outcomes:
        score = results[o.gate.left.artifact].scores[o.gate.left.suite]
        p = score.protocol
        at_least = o.gate.op in (">=", ">")
        records.append(
            {
                "gate": o.gate.text,
                "task": ",".join(p["tasks"]),
                "metric": p["metric"],
                "value": round(o.actual, 4),
                "stderr": round(o.stderr, 4) if o.stderr is not None else None,
                "dataset_id": p["dataset"] if p["mode"] == "hub" else _offline_id(Path(str(p["dataset"]))),
                "dataset_revision": p["revision"],
                "n_shot": p["num_fewshot"],
                "protocol": f"artifact {o.gate.left.artifact}; chat template {'on' if p['chat_template'] else 'off'}; "
                f"{p['aggregation']} average; {o.gate.op} {o.threshold:.2f}",
                # Only lower bounds map onto a card's threshold; the protocol string keeps the exact comparison.
                "threshold": min(100.0, max(0.0, round(o.threshold, 4))) if at_least else None,
                "passed": o.passed,
            }
        )
    return records


def _offline_id(data_dir: Path) -> str:
    # Cards are public: name the offline data without the local path it was read from.
    return "kollm-bundled-sample" if data_dir == SAMPLE_DATA_DIR.resolve() else f"local:{data_dir.name}"


def payload(results: dict[str, EvalResult], outcomes: list[GateOutcome]) -> dict[str, Any]:
    """The results JSON: scores per artifact and suite with their protocol, gates, lm-eval's raw output."""
    return {
        "kollm_eval": 1,
        "scale": "percent (0-100)",
        "tools": tool_versions("lm_eval", "transformers", "llama-cpp-python", "datasets"),
        "artifacts": {
            name: {
                "model": r.model,
                "kind": r.kind,
                "seconds": round(r.seconds, 2),
                "scores": {suite: s.to_json() for suite, s in r.scores.items()},
            }
            for name, r in results.items()
        },
        "gates": gate_rows(outcomes),
        "lm_eval_raw": {name: r.raw for name, r in results.items()},
    }


def write(out_dir: Path, results: dict[str, EvalResult], outcomes: list[GateOutcome]) -> ReportFiles:
    """Write ``results.json`` and ``scores.png`` into ``out_dir`` (temp + rename).

    Args:
        out_dir: the folder (created if needed).
        results: artifact name -> its evaluation.
        outcomes: gate outcomes (may be empty).

    Returns:
        The paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_NAME
    write_json_atomic(results_path, payload(results, outcomes))
    chart = out_dir / CHART_NAME
    plot(results, outcomes, chart)
    return ReportFiles(results_path, chart)


def plot(results: dict[str, EvalResult], outcomes: list[GateOutcome], path: Path) -> None:
    """Grouped bars: one group per suite, one bar per artifact, stderr whiskers, gate thresholds as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(dict.fromkeys(s for r in results.values() for s in r.scores))
    artifacts = list(results)
    width = 0.8 / max(len(artifacts), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(suites) + 1.5), 4.0), dpi=120)
    for i, name in enumerate(artifacts):
        xs, ys, errs = [], [], []
        for j, suite in enumerate(suites):
            score = results[name].scores.get(suite)
            if score is None:
                continue
            xs.append(j + (i - (len(artifacts) - 1) / 2) * width)
            ys.append(score.score)
            errs.append(score.stderr or 0.0)
        bars = ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    for o in outcomes:
        if o.gate.left.suite in suites:
            j = suites.index(o.gate.left.suite)
            colour = "tab:green" if o.passed else "tab:red"
            ax.hlines(o.threshold, j - 0.45, j + 0.45, colors=colour, linestyles="--", linewidth=1.2)
            ax.annotate(o.gate.text, (j + 0.45, o.threshold), fontsize=7, color=colour, ha="right", va="bottom")
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (%)")
    ax.set_title("kollm eval: score ± stderr per suite; dashed: gates (green pass, red fail)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
