from pathlib import Path

import pytest

from kollm.config import load_release_spec
from kollm.errors import SpecError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_spec_defaults(tmp_path):
    spec = load_release_spec(_write(tmp_path, "name: ko-7b\nbase: Qwen/Qwen2.5-7B\n"))
    assert spec.exports.safetensors is True
    assert spec.exports.gguf == []
    assert spec.trust_remote_code is False and spec.allow_pickle is False
    assert spec.out_dir == Path("out/ko-7b")


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(SpecError) as e:
        load_release_spec(_write(tmp_path, "name: a\nbase: b\nadaptors: [x]\n"))
    assert "unknown key 'adaptors'" in str(e.value)
    assert str(tmp_path / "spec.yaml") in str(e.value)


def test_unknown_quant_suggests_the_close_one(tmp_path):
    with pytest.raises(SpecError) as e:
        load_release_spec(_write(tmp_path, "name: a\nbase: b\nexports: {gguf: [q4_km]}\n"))
    assert "exports.gguf" in str(e.value)
    assert "Did you mean 'q4_k_m'?" in str(e.value)


def test_every_problem_reported_at_once(tmp_path):
    with pytest.raises(SpecError) as e:
        load_release_spec(_write(tmp_path, "name: 'bad name!'\nexports: {gguf: [f17]}\nextra: 1\n"))
    problems = e.value.problems
    assert len(problems) == 4, problems  # name, missing base, gguf type, unknown key
    assert any("'base' is required" in p for p in problems)


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(SpecError) as e:
        load_release_spec(_write(tmp_path, "name: a\nbase: [unclosed\n"))
    assert "line 3" in str(e.value) or "line 2" in str(e.value)


def test_publish_target_must_be_known(tmp_path):
    with pytest.raises(SpecError) as e:
        load_release_spec(_write(tmp_path, "name: a\nbase: b\npublish: s3://bucket\n"))
    assert "publish" in str(e.value)


def test_cli_overrides_replace_fields(tmp_path):
    spec = load_release_spec(_write(tmp_path, "name: a\nbase: b\n"), {"output_dir": tmp_path / "o", "publish": None})
    assert spec.out_dir == tmp_path / "o"
