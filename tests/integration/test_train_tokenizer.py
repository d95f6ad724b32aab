"""Korean vocabulary extension: better compression, and the extended base trains, merges, exports to GGUF and
serves on vLLM."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from kollm.train.spec import TrainSpec
from kollm.train.stages import run_stage
from kollm.train.tokenizer import TokenizerConfig, extend_tokenizer

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "kollm" / "testing" / "data"
NEW_TOKENS = 128


@dataclass
class ExtendedRelease:
    ext: object  # kollm.train.tokenizer's result
    losses: list[float]
    rows: dict  # artifact -> release summary row
    out: Path


@pytest.fixture(scope="module")
def extended(ko_tiny, tmp_path_factory) -> ExtendedRelease:
    """Extend the fixture's vocabulary, train a CPT stage that learns the new embeddings, and release it."""
    from kollm.config import ReleaseSpec
    from kollm.release.pipeline import run_release

    tmp_path = tmp_path_factory.mktemp("ext-tokenizer")
    ext = extend_tokenizer(
        TokenizerConfig(new_tokens=NEW_TOKENS),
        base_dir=ko_tiny.base,
        corpus=DATA / "corpus_ko.txt",
        out_dir=tmp_path / "ext",
    )
    cpt = TrainSpec(
        name="ext-cpt",
        stage="cpt",
        base=str(ext.out_dir),
        data=[DATA / "train_cpt_ko.txt"],
        output_dir=tmp_path / "cpt",
        lora={"r": 4, "alpha": 8, "modules_to_save": ["embed_tokens"]},
        training={"max_steps": 2, "batch_size": 4, "max_length": 32},
    )
    stage = run_stage(cpt)
    release = ReleaseSpec(
        name="ext",
        base=str(ext.out_dir),
        adapters=[str(stage.adapter_dir)],
        exports={"safetensors": True, "gguf": ["f16"]},
        output_dir=tmp_path / "out",
    )
    result = run_release(release, show_progress=False)
    return ExtendedRelease(ext, stage.losses, {row.artifact: row for row in result.rows}, tmp_path / "out")


def test_extended_tokenizer_trains_merges_and_exports(extended, ko_tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ext = extended.ext
    assert len(ext.added) == NEW_TOKENS
    assert ext.chars_per_token_after > ext.chars_per_token_before
    tok = AutoTokenizer.from_pretrained(ext.out_dir)
    assert len(tok) == len(AutoTokenizer.from_pretrained(ko_tiny.base)) + NEW_TOKENS
    assert AutoModelForCausalLM.from_pretrained(ext.out_dir).get_input_embeddings().weight.shape[0] == len(tok)
    text = "사람들이 함께 이야기를 나누었다"
    assert tok.decode(tok(text)["input_ids"]) == text  # still lossless
    assert extended.losses
    assert "ok" in extended.rows["gguf f16"].check  # HF vs llama.cpp logits and tokenization parity on Korean
    merged = AutoModelForCausalLM.from_pretrained(extended.out / "merged")
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)


def test_vllm_serves_the_extended_vocabulary(extended):
    """vLLM loads the resized merge, tokenizes Korean with the new tokens exactly as HF does, and scores like HF."""
    import httpx
    import numpy as np
    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kollm.serve.environment import find_vllm
    from kollm.serve.launch import ServeConfig, serve
    from kollm.serve.process import stop

    if find_vllm() is None:
        pytest.fail("no vLLM runtime: `make setup` runs `kollm serve --setup-env`")
    merged = extended.out / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    prompt = "인천에서 비가 와서 인터넷으로 비밀번호를 같이 바꾸었다"
    expected = tok(prompt)["input_ids"]
    assert max(expected) >= len(tok) - NEW_TOKENS  # the prompt uses added tokens, so the check below means something
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
        hf_logprobs = torch.log_softmax(model(torch.tensor([expected])).logits[0, -1], -1).numpy()

    key = "sk-test-ext"
    cfg = ServeConfig(
        served_model_name="ko-ext",
        api_key=key,
        max_model_len=256,
        dtype="bfloat16",
        kv_cache_bytes=64 * 1024**2,
        startup_timeout=600,
    )
    handle = serve(merged, cfg, log_dir=extended.out / "vllm-log")
    try:
        root = handle.base_url.removesuffix("/v1")
        reply = httpx.post(
            f"{root}/tokenize",
            json={"model": "ko-ext", "prompt": prompt},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["tokens"] == expected
        client = openai.OpenAI(base_url=handle.base_url, api_key=key, max_retries=0, timeout=120)
        out = client.completions.create(model="ko-ext", prompt=prompt, max_tokens=1, temperature=0, logprobs=1)
    finally:
        stop(handle)
    # Greedy takes the argmax, so the served logprob is the maximum of HF's distribution (bf16 weights in vLLM).
    assert abs(out.choices[0].logprobs.token_logprobs[0] - float(np.max(hf_logprobs))) < 0.05
