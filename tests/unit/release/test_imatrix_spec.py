"""The GGUF importance-matrix option: spec fields, the release plan it adds, tool lookup, the report's rows."""

from pathlib import Path

import pytest

from kollm.config import ReleaseSpec, load_release_spec
from kollm.errors import LlamaToolsError, SpecError
from kollm.release import imatrix, llama_tools


def _spec(tmp_path: Path, exports: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: ko\nbase: fixture:ko-tiny\nexports: {exports}\n", encoding="utf-8")
    return path


def test_imatrix_is_off_by_default_and_takes_a_calibration_file(tmp_path):
    spec = load_release_spec(_spec(tmp_path, "{gguf: [q4_k_m]}"))
    assert spec.exports.gguf_imatrix is False and spec.exports.gguf_imatrix_calibration is None
    data = tmp_path / "sft.jsonl"
    data.write_text('{"text": "안녕하세요"}\n', encoding="utf-8")
    spec = load_release_spec(
        _spec(tmp_path, f"{{gguf: [q8_0, q4_k_m], gguf_imatrix: true, gguf_imatrix_calibration: {data}}}")
    )
    assert spec.exports.gguf_imatrix and spec.exports.gguf_imatrix_calibration == data


@pytest.mark.parametrize(
    ("exports", "named", "says"),
    [
        (
            "{gguf: [q4_k_m], gguf_imatrix: true, gguf_imatrix_calibration: no/such.txt}",
            "exports.gguf_imatrix_calibration",
            "does not exist",
        ),
        (
            "{gguf: [q4_k_m], gguf_imatrix: true, gguf_imatrix_calibration: spec.yaml}",
            "exports.gguf_imatrix_calibration",
            ".txt or .jsonl",
        ),
        ("{gguf: [f16, q8_0], gguf_imatrix: true}", "gguf_imatrix", "K-quants only"),
        ("{gguf: [q4_k_m], gguf_imatrix_calibration: cal.txt}", "gguf_imatrix", "set gguf_imatrix: true"),
        ("{gguf: [q4_k_m], gguf_imatrix: true, gguf_imatrix_chunks: 0}", "exports.gguf_imatrix_chunks", ""),
    ],
)
def test_bad_imatrix_fields_are_named(tmp_path, monkeypatch, exports, named, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cal.txt").write_text("한국어 문장\n", encoding="utf-8")
    with pytest.raises(SpecError) as e:
        load_release_spec(_spec(tmp_path, exports))
    assert named in str(e.value) and says in str(e.value)


def test_chunks_shrink_to_fit_short_text_and_refuse_too_little():
    assert imatrix.chunk_size(100_000, 4096, 512) == 512
    assert imatrix.chunk_size(700, 4096, 512) == 350  # two chunks at least
    assert imatrix.chunk_size(100_000, 256, 512) == 256  # never beyond the trained context
    with pytest.raises(ValueError, match="at least 128"):
        imatrix.chunk_size(100, 4096, 512)


def test_a_user_build_dir_is_used_and_one_without_binaries_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("KOLLM_LLAMA_CPP_DIR", raising=False)
    bin_dir = tmp_path / "llama.cpp" / "build" / "bin"
    bin_dir.mkdir(parents=True)
    for name in llama_tools.TOOLS:
        (bin_dir / name).write_text("#!/bin/sh\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    found = llama_tools.find_tools(tmp_path / "llama.cpp")
    assert found is not None and found.quantize == bin_dir / "llama-quantize"
    assert found.origin == f"build {bin_dir.resolve()}"
    monkeypatch.setenv("KOLLM_LLAMA_CPP_DIR", str(bin_dir))  # the build dir itself works too
    assert llama_tools.find_tools().imatrix == bin_dir / "." / "llama-imatrix"
    with pytest.raises(LlamaToolsError) as e:
        llama_tools.find_tools(tmp_path)
    assert str(tmp_path) in e.value.message and "--target llama-imatrix llama-quantize" in str(e.value.hint)


def test_a_build_dir_also_names_its_checkout_for_the_converter(tmp_path):
    from kollm.release.converter import checkout_of

    checkout, build = tmp_path / "llama.cpp", tmp_path / "llama.cpp" / "build"
    build.mkdir(parents=True)
    (checkout / "convert_hf_to_gguf.py").write_text("", encoding="utf-8")
    (build / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={checkout}\n", encoding="utf-8")
    assert checkout_of(build) == checkout
    assert checkout_of(checkout) == checkout


def test_without_a_compiler_an_imatrix_request_says_what_to_install(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(llama_tools, "_program", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(llama_tools.shutil, "which", lambda name: None)
    with pytest.raises(LlamaToolsError) as e:
        llama_tools.build_programs()
    assert "c++ not found" in e.value.message
    assert "apt-get install g++" in str(e.value.hint) and "gguf_imatrix: false" in str(e.value.hint)
    assert e.value.exit_code == 4


def test_the_plan_adds_the_imatrix_step_and_unreleased_comparisons(tmp_path, monkeypatch):
    from kollm.release.inputs import ResolvedInput
    from kollm.release.pipeline import _Inputs, build_steps

    monkeypatch.setattr(llama_tools, "find_tools", lambda *a: llama_tools.LlamaTools(Path("i"), Path("q"), "test"))
    spec = ReleaseSpec.model_validate(
        {
            "name": "ko",
            "base": "fixture:ko-tiny",
            "exports": {"gguf": ["f16", "q8_0", "q4_k_m"], "gguf_imatrix": True, "quality_report": True},
            "output_dir": str(tmp_path / "out"),
        }
    )
    inputs = _Inputs(ResolvedInput(tmp_path, "fixture:ko-tiny", "fixture"), [], 1)
    steps = {s.name: s for s in build_steps(spec, inputs=inputs)}
    assert steps["gguf-imatrix"].inputs == ("gguf-f16", "merge")
    assert "gguf-imatrix" in steps["gguf-q4_k_m"].inputs
    assert "gguf-imatrix" not in steps["gguf-q8_0"].inputs  # not a K-quant: quantized as before
    assert steps["gguf-q4_k_m-no-imatrix"].inputs == ("gguf-f16",)
    assert "gguf-q4_k_m-no-imatrix" in steps["quality"].inputs
    assert "gguf-q4_k_m-no-imatrix" not in steps["manifest"].inputs  # measured, never released
    assert "gguf-imatrix" in steps["manifest"].inputs


def test_without_tools_or_compiler_the_release_stops_at_planning(tmp_path, monkeypatch):
    from kollm.release.inputs import ResolvedInput
    from kollm.release.pipeline import _Inputs, build_steps

    monkeypatch.setattr(llama_tools, "find_tools", lambda *a: None)
    monkeypatch.setattr(llama_tools, "_program", lambda name: None)
    spec = ReleaseSpec.model_validate(
        {
            "name": "ko",
            "base": "fixture:ko-tiny",
            "exports": {"gguf": ["q4_k_m"], "gguf_imatrix": True},
            "output_dir": str(tmp_path / "out"),
        }
    )
    with pytest.raises(LlamaToolsError, match="cannot be built here"):
        build_steps(spec, inputs=_Inputs(ResolvedInput(tmp_path, "fixture:ko-tiny", "fixture"), [], 1))
    assert not (tmp_path / "out").exists()


def test_the_report_names_imatrix_rows_and_puts_the_plain_twin_first(tmp_path, monkeypatch):
    from kollm.manifest import ArtifactRecord, FileRecord
    from kollm.release import quality, quantized

    seen = {}

    def fake_run(*, reference, artifacts, out_dir, on_artifact, not_released):
        seen["names"] = [a.name for a in artifacts]
        seen["not_released"] = not_released

    monkeypatch.setattr(quality, "run", fake_run)

    def record(name, kind, imatrix=None):
        files = [FileRecord(path=f"{name}.bin", size=1, sha256="0" * 64)]
        details = {"imatrix": imatrix} if imatrix else {}
        return ArtifactRecord(name=name, kind=kind, path=f"{name}.bin", files=files, seconds=1.0, details=details)

    records = [
        record("gguf-q8_0", "gguf"),
        record("gguf-q4_k_m", "gguf", {"file": "ko.imatrix"}),
        record("gguf-imatrix", "imatrix"),
        record("bnb-nf4", "bnb-4bit"),
    ]
    plain = quality.QualityInput("gguf-q4_k_m", "gguf", tmp_path / "plain.gguf", 1, 0.5)
    merged = quality.QualityInput("merged", "hf", tmp_path, 2, 0.1)
    quantized.run_report(merged=merged, records=records, out=tmp_path, comparisons={"gguf-q4_k_m": plain})
    assert seen["names"] == ["gguf-q8_0", "gguf-q4_k_m", "gguf-q4_k_m-imatrix", "bnb-nf4"]
    assert seen["not_released"] == ["gguf-q4_k_m"]
