"""Score extraction from lm-eval results: percent scale, micro vs macro, and tied choices."""

import pytest

from kollm.errors import EvalRunError
from kollm.evals import scores, suites


def _sample(acc, lls):
    return {"acc": acc, "filtered_resps": [(ll, False) for ll in lls]}


def _raw(group_value):
    samples = {
        "sub_a": [_sample(1.0, [-1.0, -2.0]), _sample(1.0, [-1.0, -3.0]), _sample(0.0, [-2.0, -1.0])],
        "sub_b": [_sample(0.0, [-2.0, -1.5])],
    }
    return {
        "results": {"grp": {"acc,none": group_value, "acc_stderr,none": 0.1}},
        "group_subtasks": {"grp": ["sub_a", "sub_b"]},
        "configs": {"sub_a": {"output_type": "multiple_choice"}, "sub_b": {"output_type": "multiple_choice"}},
        "samples": samples,
    }


def _suite(aggregation):
    spec = suites.load_suites()["kmmlu"].model_copy(update={"aggregation": aggregation})
    return suites.PlannedSuite("kmmlu", spec, ["grp"], "offline", "x", None)


def test_micro_takes_lm_evals_group_value_in_percent():
    result = scores.suite_score(_suite("micro"), _raw(0.5))
    assert result.score == pytest.approx(50.0)
    assert result.stderr == pytest.approx(10.0)
    assert result.n_samples == 4
    assert result.per_task == {"sub_a": pytest.approx(200 / 3), "sub_b": 0.0}


def test_macro_is_the_mean_of_subtask_means():
    result = scores.suite_score(_suite("macro"), _raw(0.5))
    assert result.score == pytest.approx((200 / 3 + 0.0) / 2)


def test_all_choices_scoring_the_same_fails_loudly():
    raw = _raw(0.5)
    raw["samples"]["sub_b"] = [_sample(1.0, [0.0, 0.0])]  # what llama.cpp's server echo produces
    with pytest.raises(EvalRunError, match="scored every choice the same"):
        scores.suite_score(_suite("micro"), raw)
