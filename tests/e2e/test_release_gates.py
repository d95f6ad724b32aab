"""A release whose gate cannot pass stops after evaluation: non-zero exit, a report, nothing published."""

import json
import os

import pytest
import yaml

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def failed_release(kollm_cli, tmp_path_factory):
    root = tmp_path_factory.mktemp("gated")
    spec = {
        "name": "ko-tiny-gated",
        "base": "fixture:ko-tiny",
        "adapters": ["fixture:ko-tiny/sft"],
        "exports": {"safetensors": True, "gguf": ["f16"]},
        "publish": f"local:{root / 'registry'}",
        "version": "v0.0.1",
        "output_dir": str(root / "out"),
        # Passes: the f16 GGUF answers like the merged model it came from.
        "gates": ["f16.kmmlu>=merged.kmmlu-0.01"],
        "eval": {"offline": True},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = kollm_cli("release", str(path), "--gate", "kmmlu>=99", env=env)
    return root, done


def test_exit_code_and_message_name_the_failed_gate(failed_release):
    _, done = failed_release
    assert done.returncode == 7, done.stderr[-3000:]  # GateFailedError.exit_code
    assert "Gate 'kmmlu>=99' failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_nothing_was_published(failed_release):
    root, _ = failed_release
    registry = root / "registry"
    assert not registry.exists() or not any(registry.iterdir())


def test_report_and_manifest_record_every_gate(failed_release):
    root, _ = failed_release
    out = root / "out"
    results = json.loads((out / "eval" / "results.json").read_text(encoding="utf-8"))
    verdicts = {g["gate"]: g["passed"] for g in results["gates"]}
    assert verdicts == {"f16.kmmlu>=merged.kmmlu-0.01": True, "kmmlu>=99": False}
    merged, f16 = results["artifacts"]["merged"], results["artifacts"]["f16"]
    assert merged["kind"] == "hf" and f16["kind"] == "gguf"
    assert merged["scores"]["kmmlu"]["score"] == f16["scores"]["kmmlu"]["score"]
    assert "kmmlu_kollm_sample" in results["lm_eval_raw"]["merged"][0]["results"]
    assert (out / "eval" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "kollm-manifest.json").read_text(encoding="utf-8"))
    assert [g["passed"] for g in manifest["evals"]["gates"]] == [True, False]
