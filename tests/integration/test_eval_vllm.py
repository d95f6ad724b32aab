"""The OpenAI-URL path against a real vLLM server: loglikelihood through /v1/completions (prompt logprobs),
Ko-IFEval through /v1/chat/completions; multiple-choice answers must match the in-process HF run.

Server: ``KOLLM_EVAL_VLLM_URL`` (a running server serving the ko-tiny base) if set; otherwise the test starts
vLLM through ``kollm.serve.launch.serve`` (the runtime ``kollm.serve.environment.find_vllm`` picks: this
environment, ``KOLLM_VLLM_PYTHON``, or the managed env from ``kollm serve --setup-env``) on a free 127.0.0.1 port
with an API key, and stops it afterwards. Skipped when ``kollm.serve`` or a vLLM runtime is missing.
"""

import importlib.util
import os

import pytest

from kollm.evals import runner

pytestmark = pytest.mark.integration
API_KEY = "kollm-eval-test-key"


@pytest.fixture(scope="module")
def vllm_url(ko_tiny, tmp_path_factory):
    if os.environ.get("KOLLM_EVAL_VLLM_URL"):
        yield os.environ["KOLLM_EVAL_VLLM_URL"]
        return
    if importlib.util.find_spec("kollm.serve.launch") is None:
        pytest.skip("kollm.serve is not available")
    from kollm.serve import launch, process
    from kollm.serve.environment import find_vllm

    if find_vllm() is None:
        pytest.skip("no vLLM runtime: run `kollm serve --setup-env` (make setup does) or set KOLLM_VLLM_PYTHON")
    cfg = launch.ServeConfig(
        served_model_name="ko-tiny", api_key=API_KEY, kv_cache_bytes=64 * 1024**2, max_model_len=2048
    )
    # serve() returns once the server has answered a real completion, not just /health.
    handle = launch.serve(ko_tiny.base, cfg, log_dir=tmp_path_factory.mktemp("vllm"))
    try:
        yield handle.base_url
    finally:
        process.stop(handle)


def test_server_scores_match_the_hf_model(vllm_url, ko_tiny, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("KOLLM_EVAL_VLLM_KEY", API_KEY))
    cfg = runner.EvalConfig(
        suites=["kmmlu", "click", "ko_ifeval"], offline=True, max_gen_toks=24, tokenizer=str(ko_tiny.base)
    )
    served = runner.run(cfg, model=vllm_url)
    local = runner.run(runner.EvalConfig(suites=["kmmlu", "click"], offline=True), model=str(ko_tiny.base))
    assert served.kind == "openai"
    assert served.scores["kmmlu"].score == local.scores["kmmlu"].score
    assert served.scores["click"].score == local.scores["click"].score
    assert served.scores["ko_ifeval"].n_samples == 12
