"""Calibration and held-out text: disjoint splits, SFT files in every supported shape, clear errors."""

import json

import pytest

from kollm.errors import CalibrationDataError
from kollm.release import calibration


def test_heldout_lines_are_disjoint_from_training_lines_and_korean():
    heldout, training = calibration.heldout_korean_lines(), calibration.training_korean_lines()
    assert len(heldout) > 100
    assert len(training) > 8 * len(heldout)
    assert not set(heldout) & set(training)
    assert all(any("가" <= ch <= "힣" for ch in line) for line in heldout[:20])


def test_txt_and_jsonl_records_are_read_in_order(tmp_path):
    txt = tmp_path / "cal.txt"
    txt.write_text("첫째 줄\n\n둘째 줄\n", encoding="utf-8")
    assert calibration.read_texts(txt) == ["첫째 줄", "둘째 줄"]
    jsonl = tmp_path / "sft.jsonl"
    records = [{"text": "가나다"}, {"prompt": "질문: ", "completion": "답"}]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    assert calibration.read_texts(jsonl) == ["가나다", "질문: 답"]


def test_messages_are_rendered_with_the_chat_template(tmp_path, ko_tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ko_tiny.base)
    jsonl = tmp_path / "sft.jsonl"
    messages = [{"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "반갑습니다"}]
    jsonl.write_text(json.dumps({"messages": messages}, ensure_ascii=False), encoding="utf-8")
    (text,) = calibration.read_texts(jsonl, tokenizer=tokenizer)
    assert text == tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|im_start|>assistant\n반갑습니다<|im_end|>" in text


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.txt", None, "does not exist"),
        ("data.csv", "a,b", "unknown file kind '.csv'"),
        ("bad.jsonl", '{"text": "ok"}\n{oops', "line 2 is not JSON"),
        ("shape.jsonl", '{"question": "q"}', "line 1 has none of"),
        ("empty.txt", "\n\n", "holds no text"),
    ],
)
def test_unusable_files_name_the_file_and_the_problem(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CalibrationDataError) as e:
        calibration.read_texts(path)
    assert needle in str(e.value)
    assert str(path) in str(e.value)
    assert e.value.exit_code == 2


def test_pack_texts_joins_and_limits():
    assert calibration.pack_texts(["a", "b", "c", "d", "e"], per_sample=2, limit=2) == ["a\nb", "c\nd"]
