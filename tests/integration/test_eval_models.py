"""All three suites end to end with lm-eval on the tiny fixture, as a HF directory and as an f16 GGUF.

The fixture is random-init, so scores sit near chance; what is asserted is deterministic: the same model gives
the same answers through both backends, and kollm's score equals a recomputation from lm-eval's samples.
"""

from pathlib import Path

import pytest

from kollm.evals import runner
from kollm.release import gguf

pytestmark = pytest.mark.integration
SUITES = ["kmmlu", "click", "ko_ifeval"]


@pytest.fixture(scope="module")
def base_f16(ko_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-gguf")
    result = gguf.run(
        gguf.GgufConfig(name="ko-tiny-base", types=["f16"]), model_dir=ko_tiny.base, out_dir=out, work_dir=out / ".work"
    )
    return result.files[0].path


@pytest.fixture(scope="module")
def offline(monkeypatch_module):
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _cfg() -> runner.EvalConfig:
    return runner.EvalConfig(suites=SUITES, offline=True, max_gen_toks=24)


@pytest.fixture(scope="module")
def hf_result(ko_tiny, offline) -> runner.EvalResult:
    return runner.run(_cfg(), model=str(ko_tiny.base))


@pytest.fixture(scope="module")
def gguf_result(base_f16, offline) -> runner.EvalResult:
    return runner.run(_cfg(), model=str(base_f16))


def _samples(result: runner.EvalResult, task: str) -> list[dict]:
    return next(raw["samples"][task] for raw in result.raw if task in raw.get("samples", {}))


def test_every_suite_scores_on_every_bundled_question(hf_result, gguf_result):
    for result in (hf_result, gguf_result):
        assert list(result.scores) == SUITES
        for name, score in result.scores.items():
            assert 0.0 <= score.score <= 100.0, name
            assert score.n_samples == 12, name
    assert hf_result.kind == "hf" and gguf_result.kind == "gguf"


def test_hf_and_f16_gguf_pick_the_same_answers(hf_result, gguf_result):
    for task in ("kmmlu_kollm_sample", "click_kollm_sample"):
        hf = _samples(hf_result, task)
        gg = _samples(gguf_result, task)
        hf_choice = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) for s in hf]
        gg_choice = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) for s in gg]
        assert hf_choice == gg_choice, task
        # Loglikelihoods agree to f16 rounding, far below the gaps between choices.
        for a, b in zip(hf, gg, strict=True):
            for (la, _), (lb, _) in zip(a["filtered_resps"], b["filtered_resps"], strict=True):
                assert abs(la - lb) < 0.05
    assert hf_result.scores["kmmlu"].score == gguf_result.scores["kmmlu"].score
    assert hf_result.scores["click"].score == gguf_result.scores["click"].score


def test_scores_equal_a_recomputation_from_the_samples(hf_result, gguf_result):
    from kollm.evals.ko_ifeval import score as ifeval_score

    for result in (hf_result, gguf_result):
        kmmlu = _samples(result, "kmmlu_kollm_sample")
        correct = [max(range(4), key=lambda i: s["filtered_resps"][i][0]) == int(s["target"]) for s in kmmlu]
        assert result.scores["kmmlu"].score == pytest.approx(100.0 * sum(correct) / len(correct))
        ifeval = _samples(result, "ko_ifeval_kollm_sample")
        passed = [
            ifeval_score(s["doc"]["instruction_id_list"], s["doc"]["kwargs"], s["filtered_resps"][0]).prompt_strict
            for s in ifeval
        ]
        assert result.scores["ko_ifeval"].score == pytest.approx(100.0 * sum(passed) / len(passed))


def test_ko_ifeval_prompts_went_through_the_chat_template(hf_result, gguf_result):
    for result in (hf_result, gguf_result):
        prompt = _samples(result, "ko_ifeval_kollm_sample")[0]["arguments"][0][0]
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    kmmlu_prompt = _samples(hf_result, "kmmlu_kollm_sample")[0]["arguments"][0][0]
    assert kmmlu_prompt.endswith("정답：") and "<|im_start|>" not in kmmlu_prompt


def test_limit_scores_only_the_first_questions(base_f16, gguf_result, offline):
    limited = runner.run(runner.EvalConfig(suites=["kmmlu"], offline=True, limit=3), model=str(base_f16))
    assert limited.scores["kmmlu"].n_samples == 3
    first = _samples(gguf_result, "kmmlu_kollm_sample")[:3]
    ours = _samples(limited, "kmmlu_kollm_sample")
    assert [s["doc"] for s in ours] == [s["doc"] for s in first]
    correct = sum(max(range(4), key=lambda i: s["filtered_resps"][i][0]) == int(s["target"]) for s in first)
    assert limited.scores["kmmlu"].score == pytest.approx(100.0 * correct / 3)
