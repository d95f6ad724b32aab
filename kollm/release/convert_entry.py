"""Subprocess entry point that runs llama.cpp's converter with kollm's pre-tokenizer choice.

Usage: python -m kollm.release.convert_entry CONVERTER_DIR PRE_TOKENIZER -- <convert_hf_to_gguf.py args>

The converter identifies BPE pre-tokenizers by hashing a probe string's token ids and refuses any vocabulary
it has not seen. kollm has already resolved the pre-tokenizer from tokenizer.json's split rules (and proves
it afterwards with a tokenization-parity check), so it hands that name to the converter here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType


def load_converter(root: Path, pre_tokenizer: str) -> ModuleType:
    """Import the converter's ``conversion.base`` from ``root`` with kollm's pre-tokenizer answer installed."""
    # The converter must use its own gguf-py: PyPI's gguf of the same version label is older code.
    sys.path[:0] = [str(root / "gguf-py"), str(root)]
    from conversion import base  # the converter's own package

    def resolved_pre(self: object, tokenizer: object) -> str:
        return pre_tokenizer

    base.TextModel.get_vocab_base_pre = resolved_pre
    return base


def run_converter(args: list[str]) -> None:
    """Run convert_hf_to_gguf.py's own ``main`` with ``args`` (after ``load_converter``)."""
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", *args]
    convert_hf_to_gguf.main()


def main(argv: list[str]) -> None:
    converter_dir, pre_tokenizer, sep, *rest = argv
    if sep != "--":
        raise SystemExit("usage: convert_entry CONVERTER_DIR PRE_TOKENIZER -- ARGS...")
    load_converter(Path(converter_dir), pre_tokenizer)
    run_converter(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
