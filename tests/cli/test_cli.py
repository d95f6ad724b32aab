"""The CLI as users meet it: help everywhere, and user mistakes end in a clear message, never a traceback."""

from pathlib import Path

import pytest

COMMANDS = ["release", "merge", "export", "doctor"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help_everywhere(kollm_cli, command):
    done = kollm_cli(*command, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout


def _spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def _assert_clean_failure(done, code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_missing_base_names_the_path(kollm_cli, tmp_path):
    spec = _spec(tmp_path, f"name: x\nbase: ./no-such-model\noutput_dir: {tmp_path / 'out'}\n")
    done = kollm_cli("release", str(spec), cwd=tmp_path)
    _assert_clean_failure(done, 3, "no-such-model", "not found")
    assert not (tmp_path / "out" / "merged").exists()


def test_adapter_for_another_base_is_refused_and_nothing_is_left(kollm_cli, tmp_path, ko_tiny, llama_tiny):
    out = tmp_path / "out"
    spec = _spec(
        tmp_path,
        f"name: x\nbase: {ko_tiny.base}\nadapters: [{llama_tiny.adapters['cpt']}]\noutput_dir: {out}\n",
    )
    done = kollm_cli("release", str(spec))
    _assert_clean_failure(done, 3, "does not fit this base", "mlp")
    assert [p.name for p in out.iterdir()] == [] if out.exists() else True


def test_unknown_quant_type_suggests_the_fix(kollm_cli, tmp_path):
    spec = _spec(tmp_path, "name: x\nbase: fixture:ko-tiny\nexports: {gguf: [q4km]}\n")
    done = kollm_cli("release", str(spec))
    _assert_clean_failure(done, 2, "exports.gguf", "Did you mean 'q4_k_m'?")


def test_malformed_spec_is_a_clear_error(kollm_cli, tmp_path):
    spec = _spec(tmp_path, "name: x\nbase: [oops\n")
    done = kollm_cli("release", str(spec))
    _assert_clean_failure(done, 2, "spec.yaml", "YAML syntax error")


def test_missing_spec_file(kollm_cli, tmp_path):
    done = kollm_cli("release", str(tmp_path / "nope.yaml"))
    _assert_clean_failure(done, 2, "nope.yaml", "does not exist")


def test_merge_command_refuses_a_missing_adapter(kollm_cli, tmp_path, ko_tiny):
    done = kollm_cli("merge", str(ko_tiny.base), str(tmp_path / "none"), "-o", str(tmp_path / "m"))
    _assert_clean_failure(done, 3, "adapter_config.json")
    assert not (tmp_path / "m").exists()


def test_doctor_reports_components_as_json(kollm_cli):
    import json

    done = kollm_cli("doctor", "--json")
    assert done.returncode == 0, done.stderr
    names = {row["name"]: row for row in json.loads(done.stdout)["components"]}
    assert names["torch"]["status"] == "ok"
    assert names["llama-cpp-python"]["status"] == "ok"
    assert names["llama-imatrix, llama-quantize"]["status"] in ("ok", "missing")  # never built by a plain doctor
    assert "vLLM" in names
