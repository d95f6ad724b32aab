"""Tiny bases and PEFT adapters for the merge edge cases: seconds to build, written with the real libraries.

Each helper writes one directory with transformers or peft exactly as a user's training run would, so the
merge tests exercise the files kollm meets in practice (sharded bases, rsLoRA, rank/alpha patterns,
modules_to_save, resized vocabularies, tied embeddings, DoRA, pickle checkpoints).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

TINY_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BaseCase:
    """A tiny Qwen2 base: dtype, tying and sharding are what the merge cases vary."""

    dtype: str = "bfloat16"
    tied: bool = True
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    max_shard_size: str | None = None  # e.g. "100KB" to force several shards
    seed: int = 0
    initializer_range: float = 0.1  # 0.02 keeps deep, wide bases' logits small enough for f16 GGUF checks


@dataclass(frozen=True)
class AdapterCase:
    """A random (non-identity) LoRA adapter trained on nothing: what matters is that B·A is non-zero."""

    seed: int = 1
    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = TINY_LINEAR
    use_rslora: bool = False
    use_dora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, int] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    new_tokens: tuple[str, ...] = ()  # added to the tokenizer; the embeddings grow to match
    pickle: bool = False  # save adapter_model.bin instead of safetensors
    save_embedding_layers: bool | str = "auto"  # peft's switch; False drops the resized lm_head from the adapter


def make_base(case: BaseCase, out: Path, *, tokenizer_from: Path | None = None) -> Path:
    """Write a random tiny Qwen2 model directory (config.json + safetensors, sharded if asked).

    Args:
        case: shapes, dtype, tying, sharding.
        out: directory to create.
        tokenizer_from: a model directory whose tokenizer files are copied alongside (its vocabulary must
            not exceed ``case.vocab_size``).

    Returns:
        ``out``.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=case.vocab_size,
        hidden_size=case.hidden_size,
        intermediate_size=case.intermediate_size,
        num_hidden_layers=case.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=case.tied,
        initializer_range=case.initializer_range,
    )
    torch.manual_seed(case.seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, case.dtype))
    model.config.dtype = case.dtype
    kwargs = {"max_shard_size": case.max_shard_size} if case.max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    if tokenizer_from is not None:
        _copy_tokenizer(tokenizer_from, out)
    return out


def make_adapter(case: AdapterCase, base: Path, out: Path) -> Path:
    """Write a PEFT LoRA adapter for ``base`` with random A and B (and random modules_to_save copies).

    Args:
        case: LoRA settings.
        base: a directory written by ``make_base`` (or any small HF causal LM).
        out: adapter directory to create.

    Returns:
        ``out``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if case.new_tokens:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
        tokenizer.add_tokens(list(case.new_tokens))
        model.resize_token_embeddings(len(tokenizer))
        tokenizer.save_pretrained(out)
    config = LoraConfig(
        r=case.r,
        lora_alpha=case.alpha,
        target_modules=list(case.targets),
        lora_dropout=0.0,
        use_rslora=case.use_rslora,
        use_dora=case.use_dora,
        rank_pattern=dict(case.rank_pattern),
        alpha_pattern=dict(case.alpha_pattern),
        modules_to_save=list(case.modules_to_save) or None,
        init_lora_weights=False,  # random A and B: a real update
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(case.seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
            elif "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.01)  # a replaced module must differ from the base
    peft_model.save_pretrained(
        out, safe_serialization=not case.pickle, save_embedding_layers=case.save_embedding_layers
    )
    config_path = out / "adapter_config.json"
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return out


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for path in src.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy2(path, dst / path.name)


class LoraFactory:
    """Builds each distinct base / adapter once under ``root`` and hands back its path afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def base(self, case: BaseCase, *, tokenizer_from: Path | None = None) -> Path:
        """The directory of a base built from ``case`` (built on first use)."""
        key = f"base-{abs(hash((case, tokenizer_from))):x}"
        if key not in self._built:
            self._built[key] = make_base(case, self.root / key, tokenizer_from=tokenizer_from)
        return self._built[key]

    def adapter(self, case: AdapterCase, base: Path) -> Path:
        """The directory of an adapter built from ``case`` for ``base`` (built on first use)."""
        key = f"adapter-{abs(hash((repr(case), base))):x}"
        if key not in self._built:
            self._built[key] = make_adapter(case, base, self.root / key)
        return self._built[key]
