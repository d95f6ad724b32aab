"""The tiny Korean fixture: tokenizer, Qwen2 model and LoRA adapters, built deterministically in seconds.

Used by the tests, ``make demo`` (``base: fixture:ko-tiny``) and the benchmarks, since nothing can be
downloaded from the Hub here. Builds are cached under a key that covers the corpus and every parameter, and
written through a temporary directory so concurrent or killed builds never leave half a fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from kollm.manifest import atomic_path
from kollm.models import SPLIT_REGEXES

FIXTURE_FORMAT = 1  # bump when the build code changes in a way the cache key cannot see

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class AdapterSpec:
    """A random LoRA adapter for the fixture (B is non-zero, so merging changes outputs)."""

    name: str
    seed: int
    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = tuple(ALL_LINEAR)
    use_rslora: bool = False


@dataclass(frozen=True)
class FixtureSpec:
    """Shape of a fixture model. Widths are multiples of 256 (llama.cpp K-quants need it)."""

    name: str = "ko-tiny"
    family: str = "qwen2"  # qwen2 (Qwen2 architecture and split rules) or llama-bpe (Llama 3 architecture and rules)
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    tie_word_embeddings: bool = True
    initializer_range: float = 0.1  # wide enough that logits spread (std ~1.6) and comparisons mean something
    dtype: str = "bfloat16"
    seed: int = 1234
    pretrain_steps: int = 0  # > 0: train the base on the bundled Korean corpus (kollm.testing.pretrain)
    adapters: tuple[AdapterSpec, ...] = field(
        default_factory=lambda: (
            AdapterSpec("cpt", seed=11, r=8, alpha=16),
            AdapterSpec("sft", seed=22, r=16, alpha=16, targets=("q_proj", "v_proj", "o_proj", "down_proj")),
        )
    )


def pretrained_spec() -> FixtureSpec:
    """``ko-tiny-pretrained``: ko-tiny's shapes trained on the bundled Korean corpus, without adapters.

    Quantization error is only meaningful on a model that has learned something; this is the model the
    quality report's figures are measured on.
    """
    return FixtureSpec(name="ko-tiny-pretrained", initializer_range=0.02, pretrain_steps=120, adapters=())


def named_specs() -> dict[str, FixtureSpec]:
    """The fixtures a spec can name as ``fixture:<name>``."""
    return {spec.name: spec for spec in (FixtureSpec(), pretrained_spec())}


@dataclass(frozen=True)
class Fixture:
    """Paths of a built fixture."""

    root: Path
    base: Path
    adapters: dict[str, Path]


def corpus_lines() -> list[str]:
    """The bundled Korean + English corpus, one sentence or paragraph per line."""
    data = resources.files("kollm.testing") / "data"
    lines: list[str] = []
    for name in ("corpus_ko.txt", "corpus_en.txt"):
        text = (data / name).read_text(encoding="utf-8")
        lines.extend(line for line in text.splitlines() if line.strip())
    return lines


def default_cache_dir() -> Path:
    """``$KOLLM_CACHE/fixtures`` or ``~/.cache/kollm/fixtures``."""
    root = os.environ.get("KOLLM_CACHE") or str(Path.home() / ".cache" / "kollm")
    return Path(root) / "fixtures"


def _cache_key(spec: FixtureSpec, lines: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(str(FIXTURE_FORMAT).encode())
    digest.update("\n".join(lines).encode())
    return digest.hexdigest()[:16]


def build_fixture(spec: FixtureSpec | None = None, *, cache_dir: Path | None = None) -> Fixture:
    """Build (or reuse from cache) a fixture tokenizer + model + adapters.

    Args:
        spec: shapes and seeds; the default is the ``ko-tiny`` demo model.
        cache_dir: where built fixtures are kept; default ``default_cache_dir()``.

    Returns:
        The paths of the base model directory and of each adapter directory.
    """
    spec = spec or FixtureSpec()
    lines = corpus_lines()
    root = (cache_dir or default_cache_dir()) / f"{spec.name}-{_cache_key(spec, lines)}"
    fixture = Fixture(
        root=root, base=root / "base", adapters={a.name: root / "adapters" / a.name for a in spec.adapters}
    )
    if (root / "COMPLETE").is_file():
        return fixture
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        _build_tokenizer(spec, lines, tmp / "base")
        _build_model(spec, tmp / "base")
        for adapter in spec.adapters:
            _build_adapter(spec, adapter, tmp / "base", tmp / "adapters" / adapter.name, final_base=fixture.base)
        (tmp / "COMPLETE").write_text(json.dumps(asdict(spec), indent=2), encoding="utf-8")
    return fixture


def _build_tokenizer(spec: FixtureSpec, lines: list[str], out: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEXES[spec.family]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=2048,
        chat_template=CHATML_TEMPLATE,
    )
    fast.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # What the real families ship: Qwen2.5 names its own class, Llama 3 the generic fast tokenizer.
    config["tokenizer_class"] = "Qwen2Tokenizer" if spec.family == "qwen2" else "PreTrainedTokenizerFast"
    # Explicit, so llama.cpp does not prepend a BOS that HF never adds.
    config["add_bos_token"] = False
    config["add_eos_token"] = False
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _build_model(spec: FixtureSpec, out: Path) -> None:
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config_class, model_class = (
        (Qwen2Config, Qwen2ForCausalLM) if spec.family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    )
    config = config_class(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=2048,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    torch.manual_seed(spec.seed)
    model = model_class(config)
    with torch.no_grad():
        # Norm weights start at 1 and biases at 0; perturb them so a merge that drops them shows up.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.05)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.02)
    if spec.pretrain_steps:
        from kollm.testing.pretrain import pretrain

        pretrain(model, tokenizer, steps=spec.pretrain_steps, seed=spec.seed)
    model = model.to(getattr(torch, spec.dtype))
    model.config.dtype = spec.dtype
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot).save_pretrained(out)


def _build_adapter(spec: FixtureSpec, adapter: AdapterSpec, base_dir: Path, out: Path, *, final_base: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        target_modules=list(adapter.targets),
        lora_dropout=0.0,
        use_rslora=adapter.use_rslora,
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A and B: a real, non-identity update
    )
    torch.manual_seed(adapter.seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)  # keep the update a perturbation, not a rewrite
    peft_model.save_pretrained(out)
    adapter_config = out / "adapter_config.json"
    data = json.loads(adapter_config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(final_base)
    adapter_config.write_text(json.dumps(data, indent=2), encoding="utf-8")
