"""Ollama files come from the tokenizer, not from hand-typed strings."""

import json

from kollm.publish import ollama

LLAMA3_TEMPLATE = (
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
)


def test_stops_come_from_the_fixture_tokenizer(ko_tiny):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(ko_tiny.base)
    expected = {tokenizer.eos_token}
    generation = GenerationConfig.from_pretrained(ko_tiny.base)
    ids = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    expected |= {tokenizer.convert_ids_to_tokens(i) for i in ids}
    stops, template = ollama.tokenizer_stops(ko_tiny.base)
    assert set(stops) == expected
    assert len(stops) == len(set(stops))
    assert template == tokenizer.chat_template


def test_chatml_becomes_a_go_template_others_are_left_to_ollama():
    from kollm.testing.fixture import CHATML_TEMPLATE

    assert ollama.go_template(CHATML_TEMPLATE) == ollama.CHATML_GO_TEMPLATE
    assert ollama.go_template(LLAMA3_TEMPLATE) is None
    assert ollama.go_template(None) is None


def test_stop_tokens_keep_order_and_drop_duplicates_and_unknown_ids():
    assert ollama.stop_tokens([5, 9, 5], {5: "<|im_end|>", 7: "x"}, ["<|im_end|>", "<|endoftext|>"]) == [
        "<|im_end|>",
        "<|endoftext|>",
    ]


def test_modelfile_and_params(tmp_path):
    text = ollama.modelfile(tmp_path / "m-Q4_K_M.gguf", stops=["<|im_end|>"], template=ollama.CHATML_GO_TEMPLATE)
    assert text.startswith("FROM ./m-Q4_K_M.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'TEMPLATE """{{- range .Messages }}' in text
    no_template = ollama.modelfile(tmp_path / "m.gguf", stops=[], template=None)
    assert "TEMPLATE" not in no_template.replace("No TEMPLATE", "")
    assert json.loads(ollama.params_json(["<|im_end|>"])) == {"stop": ["<|im_end|>"]}
