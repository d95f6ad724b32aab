"""GGUF importance matrix in a real release: llama.cpp's llama-imatrix and llama-quantize built from the installed
llama-cpp-python's sources (once, then cached), an imatrix computed on the bundled Korean text, and the K-quants
quantized with it. One release of the pretrained fixture per module; the tool build is the only slow part and
happens in `make setup` (`kollm doctor --prepare`) before the tests run.
"""

import json
import subprocess

import pytest

from kollm.config import ReleaseSpec
from kollm.manifest import FileRecord, verify_files
from kollm.release import gguf, imatrix, llama_tools
from kollm.release.pipeline import run_release

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tools() -> llama_tools.LlamaTools:
    return llama_tools.ensure_tools()


@pytest.fixture(scope="module")
def imatrix_release(tools, ko_tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("imatrix-release") / "out"
    spec = ReleaseSpec.model_validate(
        {
            "name": "ko-pt",
            "base": str(ko_tiny_pretrained.base),
            # 16 chunks of 512 tokens: enough to touch every weight, a few seconds on 2 cores
            "exports": {
                "safetensors": False,
                "gguf": ["q8_0", "q4_k_m"],
                "gguf_imatrix": True,
                "gguf_imatrix_chunks": 16,
            },
            "output_dir": str(out),
        }
    )
    result = run_release(spec, show_progress=False)
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    return spec, result, manifest


def _artifact(manifest, name):
    (found,) = [a for a in manifest["artifacts"] if a["name"] == name]
    return found


def test_the_tools_come_from_the_installed_llama_cpp_python_and_run(tools):
    assert tools.origin.startswith(f"llama-cpp-python {llama_tools.llama_cpp_python_version()} sdist")
    for binary in (tools.imatrix, tools.quantize):
        done = subprocess.run([str(binary), "--help"], capture_output=True, text=True)
        assert "usage" in (done.stdout + done.stderr).lower(), binary
    # Linked against the install's own libllama, copied beside the binaries: same llama.cpp as the runtime.
    assert any((tools.quantize.parent.parent / "lib").glob("libllama.*"))
    assert llama_tools.ensure_tools() == tools  # cached: no second build


def test_the_imatrix_covers_every_matmul_weight_of_the_model(imatrix_release):
    _, result, manifest = imatrix_release
    path = result.out_dir / _artifact(manifest, "gguf-imatrix")["path"]
    reference = result.out_dir / ".work" / "ko-pt-F16.gguf"
    summary = imatrix.read_imatrix(path)
    assert summary["type"] == "imatrix"
    assert summary["datasets"] == [imatrix.DEFAULT_DATASET]
    assert summary["chunks"] == 16 and summary["chunk_size"] == 512
    weights = imatrix.matmul_weights(reference)
    assert any(".attn_q." in w for w in weights) and any(".ffn_down." in w for w in weights)
    assert imatrix.check_coverage(path, reference) == []
    assert summary["entries"] == len(weights)


def test_a_k_quant_made_with_the_imatrix_differs_and_records_it(imatrix_release, tmp_path):
    from gguf import GGUFReader

    _, result, manifest = imatrix_release
    q4 = result.out_dir / _artifact(manifest, "gguf-q4_k_m")["path"]
    fields = GGUFReader(q4).fields
    assert fields["quantize.imatrix.file"].contents() == "ko-pt.imatrix"  # no output-dir path baked in
    assert fields["quantize.imatrix.dataset"].contents() == imatrix.DEFAULT_DATASET
    assert fields["quantize.imatrix.entries_count"].contents() > 0
    assert fields["quantize.imatrix.chunks_count"].contents() > 0
    details = _artifact(manifest, "gguf-q4_k_m")["details"]
    assert details["imatrix"]["file"] == "ko-pt.imatrix" and details["tensor_types"].get("Q4_K", 0) > 0
    assert "imatrix" not in _artifact(manifest, "gguf-q8_0")["details"]  # not a K-quant: made as before
    assert gguf.imatrix_metadata(result.out_dir / _artifact(manifest, "gguf-q8_0")["path"]) is None

    plain = gguf.quantize_one(result.out_dir / ".work" / "ko-pt-F16.gguf", tmp_path / "plain.gguf", "q4_k_m")
    assert plain.imatrix is None and plain.tensor_types == details["tensor_types"]
    changed = [
        a.name
        for a, b in zip(GGUFReader(q4).tensors, GGUFReader(plain.path).tensors, strict=True)
        if a.tensor_type.name == "Q4_K" and a.data.tobytes() != b.data.tobytes()
    ]
    assert changed, "the importance matrix changed no Q4_K tensor"


def test_the_imatrix_is_an_artifact_with_its_sha256_and_provenance(imatrix_release):
    from kollm.publish.plan import PublishConfig, build_plans

    _, result, manifest = imatrix_release
    artifact = _artifact(manifest, "gguf-imatrix")
    assert artifact["kind"] == "imatrix" and artifact["path"] == "gguf/ko-pt.imatrix"
    assert verify_files(result.out_dir, [FileRecord(**f) for f in artifact["files"]]) == []
    assert artifact["details"]["used_by"] == ["gguf-q4_k_m"]
    provenance = manifest["gguf"]["imatrix"]
    assert provenance["types"] == ["q4_k_m"] and provenance["dataset"] == imatrix.DEFAULT_DATASET
    assert "llama-cpp-python" in provenance["tools"]
    # Published beside the GGUF files it made, and named in the card.
    plans = build_plans(
        PublishConfig(target="hf://org/ko-pt", name="ko-pt", version="v1.0.0"),
        manifest=manifest,
        out_dir=result.out_dir,
        scores=[],
    )
    (gguf_repo,) = [p for p in plans if p.repo_id == "org/ko-pt-GGUF"]
    assert "ko-pt.imatrix" in gguf_repo.files
    assert "quantized with the importance matrix `ko-pt.imatrix`" in gguf_repo.generated["README.md"].decode()


def test_a_second_run_reuses_the_imatrix(imatrix_release):
    spec, _, _ = imatrix_release
    again = run_release(spec, show_progress=False)
    assert again.ran == []
