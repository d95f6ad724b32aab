"""Suite planning: names, offline data, and the include dir handed to lm-eval."""

import json

import pytest

from kollm.errors import EvalDataMissingError, UnknownSuiteError
from kollm.evals import suites


def test_unknown_suite_suggests_the_closest_name():
    with pytest.raises(UnknownSuiteError) as info:
        suites.plan(["kmmlu", "clik"], offline=True)
    assert "Did you mean 'click'?" in info.value.message


def test_hub_and_offline_plans_name_their_protocol():
    hub = suites.plan(["kmmlu", "click"], offline=False)
    assert [p.tasks for p in hub] == [["kmmlu"], ["click"]]
    assert hub[0].protocol["dataset"] == "HAERAE-HUB/KMMLU"
    assert hub[0].protocol["aggregation"] == "micro"
    offline = suites.plan(["ko_ifeval"], offline=True)
    assert offline[0].tasks == ["ko_ifeval_kollm_sample"]
    assert offline[0].protocol["chat_template"] is True


def test_offline_is_implied_by_a_data_dir_or_hf_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not suites.offline_requested(None)
    assert suites.offline_requested(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert suites.offline_requested(None)


def test_missing_offline_data_is_named_before_any_model_loads(tmp_path):
    with pytest.raises(EvalDataMissingError) as info:
        suites.plan(["click"], data_dir=tmp_path)
    assert "click_sample.jsonl" in info.value.message and "does not exist" in info.value.message


def test_unknown_ifeval_instruction_in_data_is_rejected(tmp_path):
    item = {"key": 1, "prompt": "안녕", "instruction_id_list": ["ko:made_up"], "kwargs": [{}]}
    (tmp_path / "ko_ifeval_sample.jsonl").write_text(json.dumps(item, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(EvalDataMissingError, match="ko:made_up"):
        suites.plan(["ko_ifeval"], data_dir=tmp_path)


def test_include_dir_points_tasks_at_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    planned = suites.plan(["kmmlu"], offline=True)
    include = suites.render_include_dir(planned, tmp_path / "include", data_dir=data)
    text = (include / "kmmlu" / "kmmlu_kollm_sample.yaml").read_text(encoding="utf-8")
    assert f"{data.resolve()}/kmmlu_sample.jsonl" in text and "{data_dir}" not in text
