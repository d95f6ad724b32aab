"""Eval report: gate rows, publish-stage score records, results JSON and chart."""

import json

import pytest

from kollm.evals import gates, report
from kollm.evals.runner import EvalResult
from kollm.evals.scores import SuiteScore
from kollm.publish.card import ScoreRecord, check_gates


def _result(kind, value):
    protocol = {
        "tasks": ["kmmlu"],
        "num_fewshot": 0,
        "chat_template": False,
        "metric": "acc",
        "aggregation": "micro",
        "dataset": "HAERAE-HUB/KMMLU",
        "revision": "main",
        "mode": "hub",
    }
    return EvalResult(model=kind, kind=kind, scores={"kmmlu": SuiteScore("kmmlu", value, 1.5, 100, {}, protocol)})


@pytest.fixture
def evaluated():
    results = {"merged": _result("hf", 0.0), "q4_k_m": _result("gguf", 0.0)}
    parsed = gates.parse_gates(["kmmlu>=0", "q4_k_m.kmmlu>=merged.kmmlu-1.5", "kmmlu<50"])
    scores = {(a, "kmmlu"): (r.scores["kmmlu"].score, 1.5) for a, r in results.items()}
    return results, gates.check(parsed, scores)


def test_score_records_fit_the_publish_stage(evaluated):
    results, outcomes = evaluated
    records = [ScoreRecord.model_validate(r) for r in report.score_records(outcomes, results)]
    assert [r.passed for r in records] == [True, True, True]
    assert records[1].threshold == 0.0  # merged 0 - 1.5 is clamped into the card's 0-100 range
    assert records[2].threshold is None  # an upper bound is not a card threshold
    check_gates(records)  # the publisher agrees that they passed


def test_results_json_and_chart(evaluated, tmp_path):
    results, outcomes = evaluated
    files = report.write(tmp_path, results, outcomes)
    body = json.loads(files.results.read_text(encoding="utf-8"))
    assert body["scale"] == "percent (0-100)"
    assert [g["gate"] for g in body["gates"]] == ["kmmlu>=0", "q4_k_m.kmmlu>=merged.kmmlu-1.5", "kmmlu<50"]
    assert body["artifacts"]["q4_k_m"]["scores"]["kmmlu"]["protocol"]["aggregation"] == "micro"
    assert files.chart is not None and files.chart.read_bytes()[:4] == b"\x89PNG"
