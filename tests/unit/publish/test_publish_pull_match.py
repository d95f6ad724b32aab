"""GGUF selection for `kollm pull REPO[:QUANT]` follows llama.cpp's `-hf repo:QUANT` rules."""

import pytest

from kollm.errors import PullError
from kollm.publish.pull import match_quant, split_ref

FILES = [
    "README.md",
    "kollm-manifest.json",
    "ko-tiny-F16.gguf",
    "ko-tiny-IQ4_XS.gguf",
    "ko-tiny-Q4_K_M.gguf",
    "ko-tiny-Q8_0.gguf",
    "mmproj-ko-tiny-Q8_0.gguf",
]


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        (None, "ko-tiny-Q4_K_M.gguf"),  # the default, like llama.cpp and Ollama
        ("Q8_0", "ko-tiny-Q8_0.gguf"),
        ("q8_0", "ko-tiny-Q8_0.gguf"),  # case-insensitive
        ("f16", "ko-tiny-F16.gguf"),
        ("Q4_XS", "ko-tiny-IQ4_XS.gguf"),  # llama.cpp matches the tag anywhere in the name
    ],
)
def test_quant_tag_matching(quant, expected):
    assert match_quant(FILES, quant) == expected


def test_default_falls_back_to_q8_0():
    assert match_quant(["a-F16.gguf", "a-Q8_0.gguf"], None) == "a-Q8_0.gguf"


def test_tag_must_end_at_a_separator():
    with pytest.raises(PullError) as e:
        match_quant(FILES, "Q8", repo="org/x-GGUF")
    assert "Available: F16, IQ4_XS, Q4_K_M, Q8_0" in str(e.value)
    assert e.value.repo == "org/x-GGUF"


def test_split_files_resolve_to_the_first_part():
    files = ["m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf"]
    assert match_quant(files, "Q4_K_M") == "m-Q4_K_M-00001-of-00002.gguf"


def test_repo_without_gguf():
    with pytest.raises(PullError, match=r"no \.gguf"):
        match_quant(["model.safetensors"], None)


def test_split_ref():
    assert split_ref("org/name-GGUF:Q4_K_M") == ("org/name-GGUF", "Q4_K_M")
    assert split_ref("org/name-GGUF") == ("org/name-GGUF", None)
    with pytest.raises(PullError):
        split_ref(":Q4_K_M")
