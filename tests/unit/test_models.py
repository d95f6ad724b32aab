import json

import pytest

from kollm.errors import PreTokenizerError
from kollm.models import SPLIT_REGEXES, resolve_pre_tokenizer


def _tokenizer(tmp_path, pre_tokenizer, model_type="BPE"):
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"type": model_type}, "pre_tokenizer": pre_tokenizer}), encoding="utf-8"
    )
    return tmp_path


def _split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


BYTELEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


@pytest.mark.parametrize("family", ["qwen2", "llama-bpe"])
def test_split_rules_map_to_llama_cpp_names(tmp_path, family):
    pre = {"type": "Sequence", "pretokenizers": [_split(SPLIT_REGEXES[family]), BYTELEVEL_NO_REGEX]}
    assert resolve_pre_tokenizer(_tokenizer(tmp_path, pre)) == family


def test_plain_bytelevel_is_gpt2(tmp_path):
    pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert resolve_pre_tokenizer(_tokenizer(tmp_path, pre)) == "gpt2"


def test_digits_then_bytelevel_is_exaone(tmp_path):
    pre = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}],
    }
    assert resolve_pre_tokenizer(_tokenizer(tmp_path, pre)) == "exaone"


def test_unknown_rules_give_a_clear_error(tmp_path):
    pre = {"type": "Sequence", "pretokenizers": [_split(r"\p{L}+"), BYTELEVEL_NO_REGEX]}
    with pytest.raises(PreTokenizerError) as e:
        resolve_pre_tokenizer(_tokenizer(tmp_path, pre))
    assert "gguf_pre_tokenizer" in str(e.value)


def test_sentencepiece_unigram_is_not_bpe(tmp_path):
    with pytest.raises(PreTokenizerError):
        resolve_pre_tokenizer(_tokenizer(tmp_path, None, model_type="Unigram"))


def test_the_fixtures_resolve_to_their_family(ko_tiny, llama_tiny):
    assert resolve_pre_tokenizer(ko_tiny.base) == "qwen2"
    assert resolve_pre_tokenizer(llama_tiny.base) == "llama-bpe"
