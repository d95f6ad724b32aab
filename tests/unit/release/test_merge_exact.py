"""kollm's streaming merge against peft's merge_and_unload, case by case, element by element.

The bound under test: kollm adds ``(B @ A) * scale`` with the same torch float32 operations as peft, in
adapter order, and rounds once to the base dtype. So it is bit-identical to peft merging on a float32 copy of
the base and rounding the result once; against peft merging directly in bf16 it can differ only by peft's own
intermediate roundings (half an ulp of every intermediate value).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kollm.manifest import sha256_file
from kollm.release import merge
from kollm.testing.lora_cases import TINY_LINEAR, AdapterCase, BaseCase

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
NEW_TOKENS = ("카카오뱅크", "네이버클라우드", "국민건강보험공단", "과학기술정보통신부", "한국어모델")

# name -> (base, adapters in order); each checked bit for bit against peft in float32, rounded once.
EXACT_CASES = {
    "lora": (BaseCase(), [AdapterCase()]),
    "rslora": (BaseCase(), [AdapterCase(use_rslora=True, r=4, alpha=8)]),
    "rank_alpha_pattern": (
        BaseCase(),
        [AdapterCase(rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2}, alpha_pattern={"v_proj": 32})],
    ),
    "fp16_base": (BaseCase(dtype="float16"), [AdapterCase()]),
    "fp32_base": (BaseCase(dtype="float32"), [AdapterCase()]),
    "stacked": (BaseCase(), [AdapterCase(seed=1), AdapterCase(seed=2, r=4, targets=("q_proj", "v_proj", "down_proj"))]),
    "modules_to_save": (BaseCase(tied=False), [AdapterCase(modules_to_save=("lm_head", "embed_tokens"))]),
    "lora_then_replaced": (
        BaseCase(tied=False),
        [AdapterCase(targets=(*TINY_LINEAR, "lm_head")), AdapterCase(seed=3, modules_to_save=("lm_head",))],
    ),
    "embedding_lora": (BaseCase(tied=False), [AdapterCase(targets=("embed_tokens", "q_proj"))]),
    "sharded_base": (BaseCase(max_shard_size="100KB"), [AdapterCase()]),
}


def _tensors(model_dir) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def _peft_merge(base, adapters, *, dtype, vocab: int | None = None) -> dict[str, torch.Tensor]:
    """What a peft user gets: load the base in ``dtype``, merge_and_unload each adapter in order."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if vocab:
        model.resize_token_embeddings(vocab)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Integers in the order of the floats, so neighbouring floats differ by 1 (±0 both map to 0)."""
    bits = torch.int32 if t.dtype == torch.float32 else torch.int16
    i = t.view(bits).long()
    return torch.where(i < 0, -(i + (1 << (torch.iinfo(bits).bits - 1))), i)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_ordered(a) - _ordered(b)).abs()


def _assert_bit_identical(ours: dict, reference: dict, dtype: torch.dtype) -> None:
    for name, value in ours.items():
        expected = reference[name].to(dtype)
        assert value.dtype == dtype and value.shape == expected.shape, name
        assert int(_ulps(value, expected).max()) == 0, f"{name}: differs from peft's float32 merge"


@pytest.mark.parametrize("case", EXACT_CASES)
def test_bit_identical_to_peft_float32_merge_rounded_once(case, lora_factory, tmp_path):
    base_case, adapter_cases = EXACT_CASES[case]
    base = lora_factory.base(base_case)
    adapters = [lora_factory.adapter(a, base) for a in adapter_cases]
    dtype = DTYPES[base_case.dtype]
    merge.run(merge.MergeConfig(), base=base, adapters=adapters, out_dir=tmp_path / "m")
    ours = _tensors(tmp_path / "m")
    reference = _peft_merge(base, adapters, dtype=torch.float32)
    expected_names = set(reference) - ({"lm_head.weight"} if base_case.tied else set())
    assert set(ours) == expected_names
    _assert_bit_identical(ours, reference, dtype)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["tie_word_embeddings"] == base_case.tied


def test_single_adapter_matches_peft_bf16_merge_bit_for_bit(lora_factory, tmp_path):
    # peft upcasts the adapter to float32 on CPU and adds the float32 delta into the bf16 weight: one rounding.
    base = lora_factory.base(BaseCase())
    adapter = lora_factory.adapter(AdapterCase(), base)
    merge.run(merge.MergeConfig(), base=base, adapters=[adapter], out_dir=tmp_path / "m")
    _assert_bit_identical(_tensors(tmp_path / "m"), _peft_merge(base, [adapter], dtype=torch.bfloat16), torch.bfloat16)


def _half_ulp(x: torch.Tensor) -> torch.Tensor:
    """Half the bf16 spacing at |x| (8 significant bits), in float32."""
    _, exponent = torch.frexp(x.float().abs().clamp_min(2.0**-126))
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent - 9)


def test_stacked_vs_peft_bf16_merge_differs_only_by_peft_intermediate_rounding(lora_factory, tmp_path):
    base = lora_factory.base(BaseCase())
    first, second = (lora_factory.adapter(a, base) for a in EXACT_CASES["stacked"][1])
    merge.run(merge.MergeConfig(), base=base, adapters=[first, second], out_dir=tmp_path / "m")
    ours = _tensors(tmp_path / "m")
    after_first = _peft_merge(base, [first], dtype=torch.bfloat16)
    peft_bf16 = _peft_merge(base, [first, second], dtype=torch.bfloat16)
    worst = 0
    for name, value in ours.items():
        theirs = peft_bf16[name]
        gap = (value.float() - theirs.float()).abs()
        # peft rounds after each adapter, kollm once: |peft - kollm| <= ½ulp(W1) + ½ulp(W2) + ½ulp(kollm)
        bound = _half_ulp(after_first[name]) + _half_ulp(theirs) + _half_ulp(value)
        assert bool((gap <= bound).all()), name
        worst = max(worst, int(_ulps(value, theirs).max()))
    # The double rounding is real: with cancellation the difference exceeds one ulp of the result.
    assert worst > 1


def test_sharded_output_has_a_complete_index_and_loads(lora_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    base = lora_factory.base(BaseCase(max_shard_size="100KB"))
    adapter = lora_factory.adapter(AdapterCase(), base)
    out = tmp_path / "m"
    result = merge.run(merge.MergeConfig(max_shard_bytes=60_000), base=base, adapters=[adapter], out_dir=out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    ours = _tensors(out)
    assert set(index["weight_map"]) == set(ours)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.values())
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ours.items())
    base_shards = sorted(p for p in base.glob("*.safetensors"))
    assert len(base_shards) > 1
    assert result.base_files == {p.name: sha256_file(p) for p in base_shards}
    # shard digests are taken while writing: they must be the digests of the files on disk
    assert {f.path: f.sha256 for f in result.files} == {p.name: sha256_file(p) for p in out.iterdir()}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# Tied bases (float32 so the comparison is about meaning, not rounding): the merged model must compute what
# the unmerged peft model computed during training, where the adapted side of the tie had its own weight.
TIED_CASES = {
    "lora_on_tied_lm_head": AdapterCase(targets=("q_proj", "lm_head")),
    "embed_tokens_saved_on_tied_base": AdapterCase(modules_to_save=("embed_tokens",)),
    "lora_on_tied_embeddings": AdapterCase(targets=("embed_tokens", "v_proj")),
}


@pytest.mark.parametrize("case", TIED_CASES)
def test_adapter_on_tied_embeddings_unties_and_keeps_the_trained_function(case, lora_factory, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = lora_factory.base(BaseCase(dtype="float32"))
    adapter = lora_factory.adapter(TIED_CASES[case], base)
    merge.run(merge.MergeConfig(), base=base, adapters=[adapter], out_dir=tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is False
    ids = torch.arange(0, 512, 7).reshape(1, -1)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert float((_logits(trained, ids) - _logits(merged, ids)).abs().max()) < 1e-4


@pytest.fixture(scope="module")
def vocab_base(lora_factory, ko_tiny):
    """A base carrying the Korean fixture tokenizer (4096 tokens), untied like Llama-family models."""
    return lora_factory.base(BaseCase(vocab_size=4096, tied=False), tokenizer_from=ko_tiny.base)


def test_vocab_extension_resizes_config_copies_tokenizer_and_is_exact(lora_factory, vocab_base, tmp_path):
    from transformers import AutoTokenizer

    adapter = lora_factory.adapter(
        AdapterCase(new_tokens=NEW_TOKENS, modules_to_save=("embed_tokens", "lm_head")), vocab_base
    )
    out = tmp_path / "m"
    result = merge.run(merge.MergeConfig(), base=vocab_base, adapters=[adapter], out_dir=out)
    vocab = 4096 + len(NEW_TOKENS)
    assert result.config_changes == {"vocab_size": vocab}
    assert json.loads((out / "config.json").read_text())["vocab_size"] == vocab
    assert (out / "tokenizer.json").read_bytes() == (adapter / "tokenizer.json").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == vocab and tokenizer.convert_tokens_to_ids(NEW_TOKENS[0]) >= 4096
    _assert_bit_identical(
        _tensors(out), _peft_merge(vocab_base, [adapter], dtype=torch.float32, vocab=vocab), torch.bfloat16
    )


def test_vocab_extension_on_tied_base_unties_and_keeps_the_trained_function(lora_factory, ko_tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = lora_factory.base(BaseCase(vocab_size=4096, dtype="float32"), tokenizer_from=ko_tiny.base)
    adapter = lora_factory.adapter(
        AdapterCase(new_tokens=NEW_TOKENS, modules_to_save=("embed_tokens", "lm_head")), base
    )
    merge.run(merge.MergeConfig(), base=base, adapters=[adapter], out_dir=tmp_path / "m")
    vocab = 4096 + len(NEW_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(vocab)
    trained = PeftModel.from_pretrained(model, adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert merged.config.vocab_size == vocab and merged.config.tie_word_embeddings is False
    ids = torch.tensor([[5, 300, 4096, 4100, 17, 4098]])
    assert float((_logits(trained, ids) - _logits(merged, ids)).abs().max()) < 1e-4


def test_vocab_extension_training_only_embeddings_is_exact(lora_factory, vocab_base, tmp_path):
    # peft saves the resized (untrained) lm_head too, so the adapter is complete and the merge must use it.
    adapter = lora_factory.adapter(AdapterCase(new_tokens=NEW_TOKENS, modules_to_save=("embed_tokens",)), vocab_base)
    merge.run(merge.MergeConfig(), base=vocab_base, adapters=[adapter], out_dir=tmp_path / "m")
    vocab = 4096 + len(NEW_TOKENS)
    reference = _peft_merge(vocab_base, [adapter], dtype=torch.float32, vocab=vocab)
    _assert_bit_identical(_tensors(tmp_path / "m"), reference, torch.bfloat16)


def test_vocab_grown_without_the_resized_lm_head_is_refused(lora_factory, vocab_base, tmp_path):
    from kollm.errors import AdapterMismatchError

    case = AdapterCase(new_tokens=NEW_TOKENS, modules_to_save=("embed_tokens",), save_embedding_layers=False)
    adapter = lora_factory.adapter(case, vocab_base)
    with pytest.raises(AdapterMismatchError, match="lm_head in modules_to_save"):
        merge.run(merge.MergeConfig(), base=vocab_base, adapters=[adapter], out_dir=tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
