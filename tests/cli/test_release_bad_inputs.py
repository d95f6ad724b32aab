"""Bad inputs to `kollm release`, each through the real CLI: its exit code, its message, no traceback, and
nothing half-written in the output directory."""

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

GOOD = "name: ko-bad\nbase: {base}\nadapters: [{cpt}, {sft}]\nexports: {{safetensors: true, gguf: [q8_0]}}\n"


@dataclass
class Case:
    id: str
    spec: str | None  # None: the spec file is not written
    code: int
    message: str
    args: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None


def _copy_base(tmp: Path, paths: dict) -> Path:
    base = tmp / "mybase"
    shutil.copytree(paths["base"], base)
    paths["base"] = str(base)
    return base


def _no_config(tmp, paths):
    (_copy_base(tmp, paths) / "config.json").unlink()


def _pickle_only(tmp, paths):
    base = _copy_base(tmp, paths)
    (base / "model.safetensors").rename(base / "pytorch_model.bin")


def _four_bit(tmp, paths):
    base = _copy_base(tmp, paths)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))


def _empty_adapter(tmp, paths):
    (tmp / "empty").mkdir()
    paths["sft"] = str(tmp / "empty")


def _foreign_adapter(tmp, paths):
    paths["sft"] = paths["llama_sft"]


def _adapter_without_weights(tmp, paths):
    adapter = tmp / "noweights"
    shutil.copytree(paths["sft"], adapter)
    (adapter / "adapter_model.safetensors").unlink()
    paths["sft"] = str(adapter)


def _file_as_base(tmp, paths):
    (tmp / "base.txt").write_text("not a model")
    paths["base"] = str(tmp / "base.txt")


def _out_is_file(tmp, paths):
    (tmp / "out").write_text("a file")


def _gguf_symlink_outside(tmp, paths):
    (tmp / "out").mkdir()
    (tmp / "elsewhere").mkdir()
    (tmp / "out" / "gguf").symlink_to(tmp / "elsewhere")


def _corrupt_state(tmp, paths):
    (tmp / "out").mkdir()
    (tmp / "out" / "kollm-state.json").write_text('{"version": 1, "steps": {"merge": 42}}')


CASES = [
    Case("spec-missing", None, 2, "does not exist"),
    Case("yaml-syntax", "name: [unclosed\n", 2, "YAML syntax error"),
    Case("top-level-list", "- name: x\n", 2, "top level must be a mapping"),
    Case("unknown-key", GOOD + "adapter: x\n", 2, "unknown key 'adapter'"),
    Case("missing-name", "base: {base}\n", 2, "'name' is required"),
    Case("name-with-path", GOOD.replace("ko-bad", "../evil"), 2, "'name': use letters, digits"),
    Case("gguf-typo", GOOD.replace("q8_0", "q4_km"), 2, "unknown GGUF type 'q4_km'. Did you mean 'q4_k_m'?"),
    Case("gguf-twice", GOOD.replace("[q8_0]", "[q8_0, Q8_0]"), 2, "listed twice"),
    Case("publish-scheme", GOOD + "publish: s3://bucket\n", 2, "local:<dir>"),
    Case("publish-empty", GOOD + "publish: 'local:'\n", 2, "local: needs a directory"),
    Case("atol-negative", GOOD + "verify: {{f16_logits_atol: -1}}\n", 2, "'verify.f16_logits_atol'"),
    Case("no-verify-prompts", GOOD + "verify: {{prompts: []}}\n", 2, "'verify.prompts'"),
    Case("trust-not-bool", GOOD + "trust_remote_code: maybe\n", 2, "'trust_remote_code'"),
    Case("base-missing", GOOD.replace("{base}", "./no/such/model"), 3, "base model not found: ./no/such/model"),
    Case("base-is-file", GOOD, 3, "Expected a directory", setup=_file_as_base),
    Case("base-no-config", GOOD, 3, "config.json", setup=_no_config),
    Case("base-pickle-only", GOOD, 3, "pickle weights", setup=_pickle_only),
    Case("base-4bit", GOOD, 3, "bitsandbytes 4-bit checkpoint", setup=_four_bit),
    Case("unknown-fixture", GOOD.replace("{base}", "fixture:ko-huge"), 3, "fixture:ko-tiny"),
    Case("adapter-missing", GOOD.replace("{sft}", "./no/adapter"), 3, "adapter not found"),
    Case("adapter-empty-dir", GOOD, 3, "adapter", setup=_empty_adapter),
    Case("adapter-no-weights", GOOD, 3, "adapter weights not found", setup=_adapter_without_weights),
    Case("adapter-other-base", GOOD, 3, "does not fit this base", setup=_foreign_adapter),
    Case("output-is-file", GOOD, 1, "exists and is not a directory", setup=_out_is_file),
    Case("gguf-dir-escapes", GOOD, 2, "points outside the output directory", setup=_gguf_symlink_outside),
    Case("corrupt-state", GOOD, 2, "kollm-state.json cannot be read", setup=_corrupt_state),
    Case("force-unknown-step", GOOD, 2, "Did you mean 'merge'", args=("--force", "merg")),
    Case("jobs-zero", GOOD, 2, "--jobs", args=("--jobs", "0")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_message(case, tmp_path, ko_tiny, llama_tiny, kollm_cli):
    paths = {
        "base": str(ko_tiny.base),
        "cpt": str(ko_tiny.adapters["cpt"]),
        "sft": str(ko_tiny.adapters["sft"]),
        "llama_sft": str(llama_tiny.adapters["sft"]),
    }
    if case.setup:
        case.setup(tmp_path, paths)
    spec = tmp_path / "spec.yaml"
    if case.spec is not None:
        spec.write_text(case.spec.format(**paths))
    done = kollm_cli("release", str(spec), "--output-dir", str(tmp_path / "out"), *case.args)
    message = " ".join(done.stderr.split())
    assert done.returncode == case.code, message
    assert case.message in message
    assert "Traceback" not in done.stderr
    out = tmp_path / "out"
    if out.is_dir():
        assert not list(out.rglob("*.tmp-*"))
        assert not (out / "merged").exists() and not (out / "kollm-manifest.json").exists()


def test_a_second_release_into_the_same_dir_is_refused(tmp_path, ko_tiny, kollm_cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD.format(base=ko_tiny.base, cpt=ko_tiny.adapters["cpt"], sft=ko_tiny.adapters["sft"]))
    (tmp_path / "out").mkdir()
    held = os.open(tmp_path / "out", os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = kollm_cli("release", str(spec), "--output-dir", str(tmp_path / "out"))
    finally:
        os.close(held)
    assert done.returncode == 8
    assert "Another kollm release is running" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "merged").exists()


def test_dry_run_writes_nothing(tmp_path, ko_tiny, kollm_cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD.format(base=ko_tiny.base, cpt=ko_tiny.adapters["cpt"], sft=ko_tiny.adapters["sft"]))
    done = kollm_cli("release", str(spec), "--output-dir", str(tmp_path / "out"), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [p["step"] for p in plan][:2] == ["merge", "hf-reference"]
    assert {p["action"] for p in plan} == {"run"} and plan[0]["reason"] == "not done yet"
    assert not (tmp_path / "out").exists()
