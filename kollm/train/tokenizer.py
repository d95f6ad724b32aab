"""Optional stage: extend a base tokenizer with Korean tokens learned from a corpus, and resize the model.

A byte-level BPE is trained on the corpus with ``tokenizers``; its most frequent multi-syllable Hangul pieces
that the base tokenizer splits are added to the base tokenizer as added tokens. The embedding matrix grows by
the same number of rows, each new row initialised to the mean of the rows of the pieces the base tokenizer used
for that string (so the model starts where it was). The result is a new base directory: train CPT on it with
``lora.modules_to_save: [embed_tokens, lm_head]`` (just ``embed_tokens`` when they are tied) so the new rows learn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kollm.errors import DataFormatError
from kollm.manifest import atomic_path, write_json_atomic

_HANGUL = re.compile(r"[\uac00-\ud7a3]")


@dataclass(frozen=True)
class TokenizerConfig:
    """How many tokens to add and how to learn them."""

    new_tokens: int = 256
    bpe_extra_vocab: int = 4096  # how far past the base's size the learner BPE grows (a pool to pick from)
    min_frequency: int = 2


@dataclass
class TokenizerResult:
    """The new base directory and the compression figures before and after."""

    out_dir: Path
    added: list[str]
    chars_per_token_before: float
    chars_per_token_after: float


def korean_chars_per_token(tokenizer: object, lines: list[str]) -> float:
    """Hangul characters per token over ``lines`` (higher means fewer tokens for the same Korean text)."""
    hangul = sum(len(re.findall(r"[\uac00-\ud7a3]", line)) for line in lines)
    tokens = sum(len(tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines)  # type: ignore[operator]
    return hangul / tokens if tokens else 0.0


def _extended_bpe(base_json: dict, lines: list[str], cfg: TokenizerConfig) -> tuple[dict, list[str]]:
    """Append new vocabulary entries and merges learned on ``lines`` to a byte-level BPE ``tokenizer.json``.

    The new BPE is trained with the base's own normaliser and pre-tokenizer, and its merges are appended after the
    base's (lowest priority), each only once both halves exist: base tokenization of text is unchanged wherever
    no new merge applies, and llama.cpp reads the result like any BPE vocabulary (no "added tokens").
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if base_json["model"].get("type") != "BPE":
        raise DataFormatError("tokenizer.json", None, "vocabulary extension supports BPE tokenizers only")
    learner = Tokenizer.from_str(json.dumps(base_json))
    learner.model = models.BPE()
    trainer = trainers.BpeTrainer(
        vocab_size=len(base_json["model"]["vocab"]) + cfg.bpe_extra_vocab,
        min_frequency=cfg.min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    learner.train_from_iterator(lines, trainer)
    learned = json.loads(learner.to_str())["model"]["merges"]
    vocab = dict(base_json["model"]["vocab"])
    merges = [m if isinstance(m, list) else m.split(" ") for m in base_json["model"]["merges"]]
    known = {tuple(m) for m in merges}
    decode = decoders.ByteLevel()
    added: list[str] = []
    next_id = max(max(vocab.values()), *(t["id"] for t in base_json.get("added_tokens", []))) + 1
    for left, right in (m if isinstance(m, list) else m.split(" ") for m in learned):
        merged = left + right
        if len(added) >= cfg.new_tokens:
            break
        if merged in vocab or (left, right) in known or left not in vocab or right not in vocab:
            continue
        if not _HANGUL.search(decode.decode([merged])):
            continue  # only Korean pieces: the point is Korean compression
        vocab[merged] = next_id
        next_id += 1
        merges.append([left, right])
        added.append(merged)
    extended = json.loads(json.dumps(base_json))
    extended["model"]["vocab"] = vocab
    extended["model"]["merges"] = merges
    return extended, added


def extend_tokenizer(cfg: TokenizerConfig, *, base_dir: Path, corpus: Path, out_dir: Path) -> TokenizerResult:
    """Write ``out_dir``: the base model with an extended tokenizer and resized embeddings.

    Args:
        cfg: how many tokens to add.
        base_dir: HF model directory (safetensors) with a fast tokenizer.
        corpus: Korean text, one document a line.
        out_dir: the new base directory (written atomically).

    Returns:
        The added tokens and Korean characters per token before and after, measured on the corpus.

    Raises:
        DataFormatError: the corpus has no Korean pieces to add.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines = [line.strip() for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    before = korean_chars_per_token(base_tok, lines)
    base_json = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    extended, added = _extended_bpe(base_json, lines, cfg)
    if not added:
        raise DataFormatError(corpus, None, "the corpus yields no new Korean tokens to add")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with atomic_path(out_dir) as tmp:
        base_tok.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(extended, ensure_ascii=False), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        from tokenizers import decoders

        decode = decoders.ByteLevel()
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            head = model.get_output_embeddings()
            untied = head is not None and head.weight.data_ptr() != emb.data_ptr()
            for token in added:
                row = extended["model"]["vocab"][token]
                # Start each new token where the model already was: the mean of the pieces it replaces.
                old_ids = base_tok(decode.decode([token]), add_special_tokens=False)["input_ids"]
                emb[row] = emb[old_ids].mean(dim=0)
                if untied:
                    head.weight[row] = head.weight[old_ids].mean(dim=0)
        model.save_pretrained(tmp)
        after = korean_chars_per_token(tokenizer, lines)
        added = [decode.decode([token]) for token in added]  # readable text instead of byte-level symbols
        write_json_atomic(
            tmp / "kollm-tokenizer.json",
            {
                "base": str(base_dir),
                "corpus": str(corpus),
                "added_tokens": added,
                "korean_chars_per_token": {"before": before, "after": after},
            },
        )
    return TokenizerResult(out_dir=out_dir, added=added, chars_per_token_before=before, chars_per_token_after=after)
