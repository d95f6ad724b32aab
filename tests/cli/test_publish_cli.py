"""`kollm publish` and `kollm pull` as users meet them: help, and clean failures with the right exit codes."""

from pathlib import Path

import pytest


@pytest.mark.parametrize("command", ["publish", "pull"])
def test_help(kollm_cli, command):
    done = kollm_cli(command, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout


def _clean_failure(done, code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def test_publish_before_release_says_what_to_run(kollm_cli, tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: ko\nbase: b\noutput_dir: {tmp_path / 'out'}\nversion: v1.0.0\n", encoding="utf-8")
    done = kollm_cli("publish", str(spec), "--to", f"local:{tmp_path / 'registry'}")
    _clean_failure(done, 3, "kollm-manifest.json", "kollm release")


def test_publish_without_target(kollm_cli, tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: ko\nbase: b\n", encoding="utf-8")
    _clean_failure(kollm_cli("publish", str(spec)), 2, "--to")


def test_publish_rejects_a_bad_version(kollm_cli, tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: ko\nbase: b\n", encoding="utf-8")
    _clean_failure(kollm_cli("publish", str(spec), "--to", "hf://org/ko", "--version", "latest"), 2, "version")


def test_pull_from_an_empty_registry(kollm_cli, tmp_path: Path):
    done = kollm_cli("pull", "ko-GGUF:Q4_K_M", "--registry", f"local:{tmp_path}", "--to", str(tmp_path / "m"))
    _clean_failure(done, 9, "ko-GGUF", "published repos: none")


def test_pull_registry_must_be_local(kollm_cli, tmp_path: Path):
    _clean_failure(kollm_cli("pull", "ko-GGUF", "--registry", str(tmp_path)), 1, "local:DIR")
