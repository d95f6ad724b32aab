"""The OpenAI-URL path against a real vLLM server: loglikelihood through /v1/completions (prompt logprobs),
Ko-IFEval through /v1/chat/completions; multiple-choice answers must match the in-process HF run.

Server: ``KOLLM_EVAL_VLLM_URL`` (a running server serving the ko-tiny base) if set; otherwise the test starts
``python -m vllm.entrypoints.openai.api_server`` on a free 127.0.0.1 port with the interpreter in
``KOLLM_VLLM_PYTHON`` (vLLM needs its own environment) or this one, and stops it afterwards. Skipped when
``kollm.serve`` is missing or no interpreter with vllm is found.
"""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kollm.evals import runner

pytestmark = pytest.mark.integration
API_KEY = "kollm-eval-test-key"


def _vllm_python() -> str | None:
    if importlib.util.find_spec("kollm.serve") is None:
        return None
    candidate = os.environ.get("KOLLM_VLLM_PYTHON")
    if candidate:
        return candidate if shutil.which(candidate) or Path(candidate).is_file() else None
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(ko_tiny, tmp_path_factory):
    if os.environ.get("KOLLM_EVAL_VLLM_URL"):
        yield os.environ["KOLLM_EVAL_VLLM_URL"]
        return
    python = _vllm_python()
    if python is None:
        pytest.skip("no vLLM: set KOLLM_VLLM_PYTHON to an interpreter with vllm, or KOLLM_EVAL_VLLM_URL")
    tmp = tmp_path_factory.mktemp("vllm")
    port = _free_port()
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp / "cache"), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(ko_tiny.base), "--served-model-name", "ko-tiny",
        "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY,
        "--enforce-eager", "--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "2048",
    ]  # fmt: skip
    log = (tmp / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM exited with {server.returncode}: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                # /health goes green before the first forward pass: wait for a real completion.
                done = requests.post(
                    f"{url}/v1/completions",
                    json={"model": "ko-tiny", "prompt": "안녕", "max_tokens": 1},
                    headers=headers,
                    timeout=10,
                )
                if done.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vLLM did not answer a completion within 240 s")
            time.sleep(2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


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
