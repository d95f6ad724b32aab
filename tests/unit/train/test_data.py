"""Training data formats: every error names the file and line; SFT labels cover assistant tokens only."""

import json

import pytest

from kollm.errors import DataFormatError
from kollm.train import data


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sft_reads_chat_and_instruction_records(tmp_path):
    path = _write(
        tmp_path,
        "sft.jsonl",
        [
            json.dumps(
                {"messages": [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "안녕하세요."}]}
            ),
            "",
            json.dumps({"instruction": "번역하세요.", "input": "고맙습니다", "output": "Thank you"}),
        ],
    )
    conversations = data.read_sft(path)
    assert len(conversations) == 2
    assert conversations[1] == [
        {"role": "user", "content": "번역하세요.\n\n고맙습니다"},
        {"role": "assistant", "content": "Thank you"},
    ]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"messages": [{"role": "user", "content": "질문"}]', "not valid JSON"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role 'robot'"),
        ('{"messages": [{"role": "user", "content": "질문만"}]}', "no assistant message"),
        ('{"instruction": "지시", "output": ""}', "'output' must be a non-empty string"),
        ('{"prompt": "p", "answer": "a"}', "needs 'messages'"),
        ('["not", "an", "object"]', "must be a JSON object"),
    ],
)
def test_bad_sft_line_is_named(tmp_path, line, needle):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    path = _write(tmp_path, "bad.jsonl", [good, good, line])
    with pytest.raises(DataFormatError) as info:
        data.read_sft(path)
    assert info.value.line == 3
    assert f"{path}, line 3" in str(info.value)
    assert needle in str(info.value)


def test_dpo_rejects_identical_pair_and_unknown_keys(tmp_path):
    path = _write(tmp_path, "dpo.jsonl", [json.dumps({"prompt": "p", "chosen": "같다", "rejected": "같다"})])
    with pytest.raises(DataFormatError, match="line 1: 'chosen' and 'rejected' are identical"):
        data.read_dpo(path)
    path = _write(tmp_path, "dpo2.jsonl", [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "score": 1})])
    with pytest.raises(DataFormatError, match="unknown field"):
        data.read_dpo(path)


def test_cpt_txt_and_jsonl(tmp_path):
    assert data.read_cpt(_write(tmp_path, "c.txt", ["첫 문서", "", "둘째 문서"])) == ["첫 문서", "둘째 문서"]
    with pytest.raises(DataFormatError, match="line 2"):
        data.read_cpt(_write(tmp_path, "c.jsonl", ['{"text": "좋아요"}', '{"text": 3}']))


def test_sft_labels_cover_only_assistant_turns(ko_tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ko_tiny.base)
    conversation = [
        {"role": "system", "content": "도우미입니다."},
        {"role": "user", "content": "수도는?"},
        {"role": "assistant", "content": "서울입니다."},
        {"role": "user", "content": "부산은?"},
        {"role": "assistant", "content": "항구 도시입니다."},
    ]
    [example] = data.tokenize_sft([conversation], tok, max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    full = tok.apply_chat_template(conversation, tokenize=True)["input_ids"]
    assert ids == list(full)
    assert len(labels) == len(ids)
    trained = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert all(label in (-100, i) for i, label in zip(ids, labels, strict=True))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = (
        tok("서울입니다.", add_special_tokens=False)["input_ids"]
        + [im_end]
        + tok.encode("\n", add_special_tokens=False)
        + tok("항구 도시입니다.", add_special_tokens=False)["input_ids"]
        + [im_end]
        + tok.encode("\n", add_special_tokens=False)
    )
    assert trained == expected
    assert tok.decode(trained).startswith("서울입니다.<|im_end|>")
    assert "수도는" not in tok.decode(trained) and "도우미" not in tok.decode(trained)
