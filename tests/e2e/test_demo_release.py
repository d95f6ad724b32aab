"""The demo release end to end through the CLI, checked against reality rather than against itself."""

import json
from pathlib import Path

import numpy as np
import pytest

from kollm.manifest import MANIFEST_NAME, sha256_file

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(kollm_cli, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    done = kollm_cli(
        "release",
        str(REPO / "release" / "ko-tiny.yaml"),
        "--output-dir",
        str(root / "out"),
        "--publish",
        f"local:{root / 'registry'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_summary_lists_every_artifact(demo):
    _, done = demo
    for expected in ("merged (safetensors)", "gguf f16", "gguf q8_0", "gguf q5_k_m", "gguf q4_k_m", "manifest:"):
        assert expected in done.stdout


def test_manifest_checksums_match_the_files(demo):
    root, _ = demo
    manifest = json.loads((root / "out" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert [a["name"] for a in manifest["artifacts"]] == [
        "merged",
        "gguf-f16",
        "gguf-q8_0",
        "gguf-q5_k_m",
        "gguf-q4_k_m",
    ]
    for artifact in manifest["artifacts"]:
        for record in artifact["files"]:
            path = root / "out" / record["path"]
            assert path.stat().st_size == record["size"]
            assert sha256_file(path) == record["sha256"], record["path"]


def test_manifest_records_provenance(demo, ko_tiny):
    root, _ = demo
    manifest = json.loads((root / "out" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["base"]["source"] == "fixture:ko-tiny"
    assert manifest["base"]["files_sha256"] == {"model.safetensors": sha256_file(ko_tiny.base / "model.safetensors")}
    assert [a["source"] for a in manifest["adapters"]] == ["fixture:ko-tiny/cpt", "fixture:ko-tiny/sft"]
    for entry, name in zip(manifest["adapters"], ["cpt", "sft"], strict=True):
        assert entry["sha256"] == sha256_file(ko_tiny.adapters[name] / "adapter_model.safetensors")
    assert manifest["gguf"]["pre_tokenizer"] == "qwen2"
    for tool in ("kollm", "torch", "transformers", "llama-cpp-python", "gguf"):
        assert manifest["tools"][tool] not in ("", "missing")
    assert manifest["spec"]["name"] == "ko-tiny"


def test_f16_gguf_logits_match_the_merged_model(demo):
    """Recompute independently of kollm's own verifier: HF float32 vs llama.cpp on a Korean prompt."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = demo
    merged = root / "out" / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    ids = tokenizer("한국어 모델을 배포하는 가장 쉬운 방법은")["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(str(root / "out" / "gguf" / "ko-tiny-F16.gguf"), n_ctx=128, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])[:, : expected.shape[1]]
    llm.close()
    assert np.max(np.abs(got - expected)) < 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_merge_changed_the_model(demo, ko_tiny):
    """The adapters have non-zero B: the merged weights must differ from the base."""
    from safetensors import safe_open

    root, _ = demo
    key = "model.layers.0.self_attn.q_proj.weight"
    with (
        safe_open(ko_tiny.base / "model.safetensors", "pt") as b,
        safe_open(root / "out/merged/model.safetensors", "pt") as m,
    ):
        assert not np.array_equal(b.get_tensor(key).float().numpy(), m.get_tensor(key).float().numpy())
        norm = "model.norm.weight"
        assert np.array_equal(b.get_tensor(norm).float().numpy(), m.get_tensor(norm).float().numpy())


def test_registry_holds_verified_copies(demo):
    root, _ = demo
    registry = root / "registry"
    assert sorted(p.name for p in registry.iterdir()) == ["ko-tiny", "ko-tiny-GGUF"]
    gguf_repo = json.loads((registry / "ko-tiny-GGUF" / MANIFEST_NAME).read_text(encoding="utf-8"))
    names = sorted(f["path"] for f in gguf_repo["files"])
    assert names == ["ko-tiny-F16.gguf", "ko-tiny-Q4_K_M.gguf", "ko-tiny-Q5_K_M.gguf", "ko-tiny-Q8_0.gguf"]
    for record in gguf_repo["files"]:
        assert sha256_file(registry / "ko-tiny-GGUF" / record["path"]) == record["sha256"]


def test_every_gguf_loads_and_chats(demo):
    import llama_cpp

    root, _ = demo
    for path in sorted((root / "out" / "gguf").glob("*.gguf")):
        llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": "안녕하세요"}], max_tokens=4)
        llm.close()
        assert llm.chat_format == "chat_template.default"
        assert reply["usage"]["completion_tokens"] >= 1
