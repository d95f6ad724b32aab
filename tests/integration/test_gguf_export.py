"""GGUF export through llama.cpp's own converter and quantizer, checked against the merged HF model."""

from pathlib import Path

import pytest

from kollm.config import DEFAULT_VERIFY_PROMPTS
from kollm.errors import VerificationError
from kollm.release import gguf, merge, verify_gguf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def merged_ko(ko_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged-ko") / "merged"
    merge.run(merge.MergeConfig(), base=ko_tiny.base, adapters=list(ko_tiny.adapters.values()), out_dir=out)
    return out


@pytest.fixture(scope="module")
def exported_ko(merged_ko, tmp_path_factory) -> gguf.GgufResult:
    out = tmp_path_factory.mktemp("gguf-ko")
    cfg = gguf.GgufConfig(name="ko-tiny", types=["f16", "q8_0", "q4_k_m"])
    return gguf.run(cfg, model_dir=merged_ko, out_dir=out, work_dir=out / ".work")


def test_files_are_named_for_llama_cpp_and_ollama(exported_ko):
    names = sorted(f.path.name for f in exported_ko.files)
    assert names == ["ko-tiny-F16.gguf", "ko-tiny-Q4_K_M.gguf", "ko-tiny-Q8_0.gguf"]
    assert exported_ko.pre_tokenizer == "qwen2"
    assert "llama-cpp-python" in exported_ko.converter


def test_quantized_files_hold_the_requested_tensor_types(exported_ko):
    by_type = {f.gguf_type: f for f in exported_ko.files}
    assert by_type["f16"].tensor_types.get("F16", 0) > 0
    assert by_type["q8_0"].tensor_types.get("Q8_0", 0) > 0
    assert by_type["q4_k_m"].tensor_types.get("Q4_K", 0) > 0
    # Widths are multiples of 256, so nothing should fall back to another type.
    assert all(not f.fallback_tensors for f in exported_ko.files)
    assert (
        by_type["q4_k_m"].path.stat().st_size < by_type["q8_0"].path.stat().st_size < by_type["f16"].path.stat().st_size
    )


def test_every_file_passes_the_checks_and_f16_matches_hf(merged_ko, exported_ko):
    reference = verify_gguf.hf_reference(merged_ko, DEFAULT_VERIFY_PROMPTS)
    by_type = {f.gguf_type: f for f in exported_ko.files}
    f16 = verify_gguf.check_gguf(by_type["f16"].path, reference, atol=0.05)
    assert f16.max_logit_diff < 0.05
    assert f16.top1_agreement == 1.0
    assert f16.checks["tokenization_parity"] >= 10
    assert f16.checks["chat_template"] is True
    q4 = verify_gguf.check_gguf(by_type["q4_k_m"].path, reference, atol=None)
    # Quantization changes logits measurably, but far less than the logits' own spread (std ~1.6).
    assert f16.max_logit_diff < q4.max_logit_diff < 5.0


def test_chat_template_and_special_tokens_are_embedded(exported_ko, merged_ko):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_ko)
    reader = GGUFReader(exported_ko.files[0].path)
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_a_second_family_converts_and_a_wrong_pre_tokenizer_is_caught(llama_tiny, tmp_path):
    """Llama-3 rules group digits by three; forcing Qwen2's single-digit rule must fail the parity check."""
    merged = tmp_path / "merged"
    merge.run(merge.MergeConfig(), base=llama_tiny.base, adapters=[llama_tiny.adapters["cpt"]], out_dir=merged)
    reference = verify_gguf.hf_reference(merged, DEFAULT_VERIFY_PROMPTS[:1])

    right = gguf.run(
        gguf.GgufConfig(name="ll", types=["f16"]), model_dir=merged, out_dir=tmp_path / "a", work_dir=tmp_path
    )
    assert right.pre_tokenizer == "llama-bpe"
    verify_gguf.check_gguf(right.files[0].path, reference, atol=0.05)

    wrong = gguf.run(
        gguf.GgufConfig(name="ll", types=["f16"], pre_tokenizer="qwen2"),
        model_dir=merged,
        out_dir=tmp_path / "b",
        work_dir=tmp_path,
    )
    with pytest.raises(VerificationError) as e:
        verify_gguf.check_gguf(wrong.files[0].path, reference, atol=0.05)
    assert e.value.check == "tokenization-parity"
