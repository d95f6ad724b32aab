"""The model card: metadata and gate scores survive a round trip through huggingface_hub's ModelCard."""

import pytest
from huggingface_hub import ModelCard

from kollm.errors import GateFailedError
from kollm.publish.card import CardInputs, ScoreRecord, build_card, check_gates

SCORES = [
    ScoreRecord(
        gate="kmmlu",
        task="kmmlu_direct",
        metric="acc",
        value=49.37,
        stderr=0.26,
        dataset_id="HAERAE-HUB/KMMLU",
        dataset_revision="7c0f2bd1a9e0d9a4d5b1c7f8e2a3b4c5d6e7f809",
        n_shot=5,
        protocol="no chat template, micro average",
        threshold=45,
        passed=True,
    ),
    ScoreRecord(
        gate="click",
        task="click",
        metric="acc_norm",
        value=61.2,
        stderr=1.1,
        dataset_id="EunsuKim/CLIcK",
        dataset_revision="2f1e3d4c5b6a79880a1b2c3d4e5f60718293a4b5",
        n_shot=0,
        protocol="chat template",
    ),
]
FILES = [{"path": "ko-tiny-Q4_K_M.gguf", "size": 1735584, "sha256": "e9" * 32}]


def _card(**overrides):
    inputs = {
        "repo_id": "my-org/ko-tiny-GGUF",
        "model_name": "ko-tiny-GGUF",
        "license": "apache-2.0",
        "version": "v1.2.0",
        "base_model": "my-org/ko-tiny",
        "base_model_relation": "quantized",
        "kind": "gguf",
        "files": FILES,
        "scores": SCORES,
        "gguf_files": ["ko-tiny-Q4_K_M.gguf"],
        "safetensors_repo": "my-org/ko-tiny",
    }
    return ModelCard(build_card(CardInputs(**{**inputs, **overrides})))


def test_metadata_parses_back():
    data = _card().data
    assert data.license == "apache-2.0"
    assert data.language == ["ko"]
    assert data.base_model == "my-org/ko-tiny"
    assert data.to_dict()["base_model_relation"] == "quantized"
    assert {"korean", "gguf", "llama.cpp"} <= set(data.tags)


def test_scores_round_trip_as_model_index():
    card = _card()
    results = card.data.eval_results
    assert [r.task_name for r in results] == ["kmmlu", "click"]
    assert [r.metric_value for r in results] == [49.37, 61.2]
    assert [r.dataset_revision for r in results] == [s.dataset_revision for s in SCORES]
    assert results[0].dataset_name == "HAERAE-HUB/KMMLU"
    assert results[0].dataset_args["num_fewshot"] == 5
    assert results[0].metric_args["protocol"] == "no chat template, micro average"
    assert "model-index" in card.content
    # The human-readable table carries the same numbers, shots and protocol.
    assert "| kmmlu | `kmmlu_direct` | acc | 49.37 ± 0.26 | ≥ 45 | 5 |" in card.text


def test_card_says_how_to_run_and_lists_checksums():
    text = _card().text
    assert "llama-cli -hf my-org/ko-tiny-GGUF:Q4_K_M" in text
    assert "ollama run hf.co/my-org/ko-tiny-GGUF:Q4_K_M" in text
    assert "from openai import OpenAI" in text
    assert f"`{'e9' * 32}`" in text


def test_safetensors_card_has_vllm_and_no_model_index_without_scores():
    card = _card(repo_id="my-org/ko-tiny", kind="safetensors", gguf_files=[], scores=[], base_model="Qwen/Qwen2.5-0.5B")
    assert "vllm serve my-org/ko-tiny --revision v1.2.0" in card.text
    assert "model-index" not in card.content
    assert card.data.to_dict()["base_model_relation"] == "quantized"  # as passed; plan.py picks merge for this repo


def test_failed_gate_stops_the_release():
    with pytest.raises(GateFailedError) as e:
        check_gates([*SCORES, SCORES[0].model_copy(update={"gate": "ko_ifeval", "value": 31.0, "passed": False})])
    assert e.value.gate == "ko_ifeval"
    assert e.value.exit_code != 0


def test_score_below_threshold_fails_even_without_a_verdict():
    with pytest.raises(GateFailedError):
        check_gates([SCORES[0].model_copy(update={"value": 44.9, "passed": None})])
    check_gates(SCORES)  # both pass: no exception


def test_score_outside_percent_is_rejected():
    with pytest.raises(ValueError):
        ScoreRecord.model_validate({**SCORES[0].model_dump(), "value": 0.49 * 1000})


def test_local_registry_card_points_at_kollm_pull_not_the_hub():
    text = _card(repo_id="ko-tiny-GGUF", pull_from="--registry local:/srv/registry").text
    assert "kollm pull ko-tiny-GGUF:Q4_K_M --registry local:/srv/registry --to ./models" in text
    assert "llama-server -m ./models/ko-tiny-Q4_K_M.gguf" in text
    assert "-hf " not in text and "hf.co/" not in text
