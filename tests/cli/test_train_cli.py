"""`kollm train` and `kollm data prep` through the real entry point: help, exit codes, messages."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["train", "--help"], ["train", "sft", "--help"], ["data", "prep", "--help"]])
def test_help(kollm_cli, args):
    done = kollm_cli(*args)
    assert done.returncode == 0
    assert "Usage" in done.stdout


def test_bad_data_line_is_named_without_traceback(kollm_cli, tmp_path, ko_tiny):
    data = tmp_path / "sft.jsonl"
    good = {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워요"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n", encoding="utf-8")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\nstage: sft\nbase: {ko_tiny.base}\ndata: [{data}]\noutput_dir: {tmp_path / 'o'}\n", encoding="utf-8"
    )
    done = kollm_cli("train", "sft", str(spec))
    assert done.returncode == 2
    assert f"{data}, line 2" in done.stderr and "'role' and 'content'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_stage_mismatch_is_a_spec_error(kollm_cli):
    done = kollm_cli("train", "dpo", str(REPO / "release" / "train" / "ko-tiny-sft.yaml"))
    assert done.returncode == 2
    assert "'stage' is sft, but this is `kollm train dpo`" in done.stderr


def test_unsloth_on_cpu_is_refused(kollm_cli, tmp_path):
    done = kollm_cli("train", "cpt", str(REPO / "release" / "train" / "ko-tiny-cpt.yaml"), "--backend", "unsloth")
    assert done.returncode == 4
    assert "needs a CUDA GPU" in done.stderr


def test_data_prep_writes_output_and_report(kollm_cli, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_text(
        "전화는 010-1234-5678 로 해 주세요. 감사합니다.\n전화는 010-1234-5678 로 해 주세요. 감사합니다.\nEnglish only line here.\n",
        encoding="utf-8",
    )
    done = kollm_cli("data", "prep", str(src), "-o", str(tmp_path / "clean.txt"), "--report", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clean.txt").read_text(encoding="utf-8") == "전화는 [전화번호] 로 해 주세요. 감사합니다.\n"
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["dropped"] == {"exact_duplicate": 1, "low_korean_ratio": 1}
    assert "kept 1 of 3" in done.stdout
