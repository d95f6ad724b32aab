"""Merging onto a bitsandbytes 4-bit base with ``dequantize_base``: the dequantized weights are bitsandbytes'
own (bit for bit what transformers' ``model.dequantize()`` gives), and the merge onto them is as exact as
onto a 16-bit base (bit-identical to peft merging a float32 copy and rounding once).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from kollm.errors import DequantizeError
from kollm.manifest import sha256_file
from kollm.release import bnb, merge
from kollm.release.dequantize import dequantize_bnb_4bit
from kollm.release.merge_plan import check_base

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tensors(model_dir) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def _transformers_dequantized(model_dir, dtype: torch.dtype | None = None):
    """transformers' own route: load the 4-bit checkpoint, ``model.dequantize()``."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu", **kwargs)
    return model.dequantize(dtype=dtype)


@pytest.fixture(scope="module")
def fp4_base(ko_tiny, tmp_path_factory):
    """The other bnb layout: FP4 without double quantization (absmax stays float32)."""
    out = tmp_path_factory.mktemp("ko-tiny-fp4") / "base"
    cfg = bnb.BnbConfig(quant_type="fp4", double_quant=False)
    bnb.run(cfg, model_dir=ko_tiny.base, out_dir=out, probe_texts=["한국어 모델을 병합합니다."])
    return out


@pytest.fixture(scope="module")
def sharded_nf4(ko_tiny, tmp_path_factory):
    """NF4 saved by transformers in small shards (with model.safetensors.index.json)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path_factory.mktemp("ko-tiny-nf4-sharded") / "base"
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(
        ko_tiny.base, dtype=torch.bfloat16, quantization_config=config, device_map="cpu"
    )
    model.save_pretrained(out, max_shard_size="300KB")
    assert len(list(out.glob("*.safetensors"))) > 2
    return out


LAYOUTS = {"nf4-double-quant": "ko_tiny_nf4", "fp4": "fp4_base", "nf4-sharded": "sharded_nf4"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dequantized_weights_are_bit_identical_to_transformers_dequantize(layout, ko_tiny, request, tmp_path):
    quantized = request.getfixturevalue(LAYOUTS[layout])
    packed = _tensors(quantized)
    assert packed["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8  # really 4-bit on disk
    assert ("model.layers.0.self_attn.q_proj.weight.nested_absmax" in packed) == layout.startswith("nf4")
    done = dequantize_bnb_4bit(quantized, tmp_path / "d")
    ours = _tensors(tmp_path / "d")
    assert len(list((tmp_path / "d").glob("*.safetensors"))) == len(list(quantized.glob("*.safetensors")))
    reference = {k: v.detach() for k, v in _transformers_dequantized(quantized).state_dict().items()}
    assert set(ours) == set(reference) - {"lm_head.weight"}  # tied: lm_head is the embedding, not saved
    for name, value in ours.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, reference[name]), name
    original = load_file(ko_tiny.base / "model.safetensors")
    quantized_names = {n for n in ours if n.endswith(".weight") and n.split(".")[-2] in LINEAR}
    assert len(quantized_names) == done.tensors == 14
    for name in ours:  # bnb keeps embeddings, norms and biases 16-bit: copied as they are
        assert torch.equal(ours[name], original[name]) != (name in quantized_names), name
    assert done.record() == {
        "method": "bitsandbytes-4bit",
        "quant_type": layout[:3],
        "double_quant": layout.startswith("nf4"),
        "dtype": "bfloat16",
        "tensors": 14,
    }


def test_merge_onto_dequantized_base_is_bit_identical_to_peft_float32_merge(ko_tiny, ko_tiny_nf4, tmp_path, caplog):
    from peft import PeftModel

    adapter = ko_tiny.adapters["cpt"]
    with caplog.at_level(logging.WARNING, logger="kollm"):
        result = merge.run(
            merge.MergeConfig(dequantize_base=True), base=ko_tiny_nf4, adapters=[adapter], out_dir=tmp_path / "m"
        )
    assert "carries that quantization error" in caplog.text and "16-bit base is preferred" in caplog.text
    ours = load_file(tmp_path / "m" / "model.safetensors")
    model = _transformers_dequantized(ko_tiny_nf4, torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    assert set(ours) == set(reference) - {"lm_head.weight"}
    for name, value in ours.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, reference[name].to(torch.bfloat16)), name
    assert result.merged_tensors == 14
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert result.dequantized_base == {
        "method": "bitsandbytes-4bit",
        "quant_type": "nf4",
        "double_quant": True,
        "dtype": "bfloat16",
        "tensors": 14,
    }
    assert result.base_files == {"model.safetensors": sha256_file(ko_tiny_nf4 / "model.safetensors")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the dequantized scratch copy is gone


def _with_quantization_config(src, dst, quantization_config: dict):
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    return dst


def test_8bit_and_inconsistent_bases_are_refused_even_with_dequantize_base(ko_tiny, tmp_path):
    eight = _with_quantization_config(
        ko_tiny.base, tmp_path / "8bit", {"quant_method": "bitsandbytes", "load_in_8bit": True}
    )
    with pytest.raises(DequantizeError, match="8-bit"):
        check_base(eight, pickle_dir=None, dequantize_dir=tmp_path / "scratch")
    # config.json says 4-bit, but the tensors are the 16-bit ones: nothing to dequantize, so no guessing.
    claims = _with_quantization_config(
        ko_tiny.base, tmp_path / "claims", {"quant_method": "bitsandbytes", "load_in_4bit": True}
    )
    with pytest.raises(DequantizeError, match="no tensor carries a 4-bit quant_state"):
        check_base(claims, pickle_dir=None, dequantize_dir=tmp_path / "scratch")


def test_release_spec_dequantize_base_reaches_the_merge_and_the_manifest(ko_tiny, ko_tiny_nf4, tmp_path):
    from kollm.config import ReleaseSpec
    from kollm.errors import QuantizedBaseError
    from kollm.release.pipeline import run_release

    def spec(**extra) -> ReleaseSpec:
        fields = {"name": "ko-dq", "base": str(ko_tiny_nf4), "adapters": [str(ko_tiny.adapters["cpt"])]}
        fields |= {"exports": {"safetensors": True, "gguf": []}, "output_dir": str(tmp_path / "out"), **extra}
        return ReleaseSpec.model_validate(fields)

    with pytest.raises(QuantizedBaseError):
        run_release(spec(), show_progress=False)
    result = run_release(spec(dequantize_base=True), show_progress=False)
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert manifest["merge"]["dequantized_base"]["quant_type"] == "nf4"
    assert manifest["base"]["files_sha256"] == {"model.safetensors": sha256_file(ko_tiny_nf4 / "model.safetensors")}
