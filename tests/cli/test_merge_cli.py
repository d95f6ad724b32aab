"""`kollm merge` refusals as users meet them: exit code, a message naming the problem, and no output left."""

from __future__ import annotations

import json
import pickle
import shutil

import torch
from safetensors.torch import load_file

from kollm.testing.lora_cases import AdapterCase, BaseCase


def _refused(done, out, *needles: str) -> None:
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "scratch left behind"


def test_adapter_for_a_base_of_other_shapes(kollm_cli, lora_factory, tmp_path):
    wide = lora_factory.base(BaseCase(hidden_size=128, intermediate_size=256))
    adapter = lora_factory.adapter(AdapterCase(), lora_factory.base(BaseCase()))
    out = tmp_path / "m"
    done = kollm_cli("merge", str(wide), str(adapter), "-o", str(out))
    _refused(done, out, "does not fit this base", "in the base but the adapter's B·A is")


def test_adapter_targeting_a_module_the_base_lacks(kollm_cli, lora_factory, tmp_path):
    shallow = lora_factory.base(BaseCase(num_layers=1))
    adapter = lora_factory.adapter(AdapterCase(), lora_factory.base(BaseCase()))
    out = tmp_path / "m"
    done = kollm_cli("merge", str(shallow), str(adapter), "-o", str(out))
    _refused(done, out, "model.layers.1.", "which the base does not have")


def test_4bit_base_is_refused_unless_dequantized_then_merged_with_a_warning(kollm_cli, ko_tiny, ko_tiny_nf4, tmp_path):
    adapter = ko_tiny.adapters["cpt"]
    out = tmp_path / "m"
    done = kollm_cli("merge", str(ko_tiny_nf4), str(adapter), "-o", str(out))
    _refused(done, out, "bitsandbytes 4-bit checkpoint", "--dequantize-base")
    assert "warning:" not in done.stderr
    done = kollm_cli("merge", str(ko_tiny_nf4), str(adapter), "-o", str(out), "--dequantize-base")
    assert done.returncode == 0, done.stderr
    stderr = " ".join(done.stderr.split())  # rich may wrap the paragraph
    assert "warning: Merging onto a dequantized 4-bit base" in stderr
    assert "carries that quantization error" in stderr and "original 16-bit base is preferred" in stderr
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = load_file(out / "model.safetensors")
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert not [k for k in merged if "absmax" in k or "quant_" in k]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_4bit_config_without_4bit_tensors_is_refused_with_dequantize_base(kollm_cli, lora_factory, tmp_path):
    base = tmp_path / "bnb-base"
    shutil.copytree(lora_factory.base(BaseCase()), base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    adapter = lora_factory.adapter(AdapterCase(), lora_factory.base(BaseCase()))
    out = tmp_path / "m"
    done = kollm_cli("merge", str(base), str(adapter), "-o", str(out), "--dequantize-base")
    _refused(done, out, "Cannot dequantize the base", "no tensor carries a 4-bit quant_state", "model.dequantize()")


def test_dora_is_refused(kollm_cli, lora_factory, tmp_path):
    base = lora_factory.base(BaseCase())
    adapter = lora_factory.adapter(AdapterCase(use_dora=True), base)
    out = tmp_path / "m"
    done = kollm_cli("merge", str(base), str(adapter), "-o", str(out))
    _refused(done, out, "DoRA", "merge_and_unload")


def test_pickle_adapter_needs_allow_pickle_and_then_merges_identically(kollm_cli, lora_factory, tmp_path):
    base = lora_factory.base(BaseCase())
    pickled = lora_factory.adapter(AdapterCase(seed=5, pickle=True), base)
    safe = lora_factory.adapter(AdapterCase(seed=5), base)
    out = tmp_path / "m"
    _refused(kollm_cli("merge", str(base), str(pickled), "-o", str(out)), out, "adapter_model.bin", "--allow-pickle")
    assert kollm_cli("merge", str(base), str(pickled), "-o", str(out), "--allow-pickle").returncode == 0
    assert kollm_cli("merge", str(base), str(safe), "-o", str(tmp_path / "ref")).returncode == 0
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "ref"]


def test_pickle_base_needs_allow_pickle_and_then_merges_identically(kollm_cli, lora_factory, tmp_path):
    base = lora_factory.base(BaseCase(tied=False))
    adapter = lora_factory.adapter(AdapterCase(), base)
    pickled = tmp_path / "pickled-base"
    pickled.mkdir()
    shutil.copy2(base / "config.json", pickled / "config.json")
    torch.save(load_file(base / "model.safetensors"), pickled / "pytorch_model.bin")
    out = tmp_path / "m"
    _refused(kollm_cli("merge", str(pickled), str(adapter), "-o", str(out)), out, "pytorch_model.bin", "pickle")
    done = kollm_cli("merge", str(pickled), str(adapter), "-o", str(out), "--allow-pickle")
    assert done.returncode == 0, done.stderr
    assert kollm_cli("merge", str(base), str(adapter), "-o", str(tmp_path / "ref")).returncode == 0
    ours, ref = load_file(out / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)


class _Payload:
    """A pickle that runs code when unpickled: it would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_even_when_allowed(kollm_cli, lora_factory, tmp_path):
    base = lora_factory.base(BaseCase())
    adapter = tmp_path / "evil"
    shutil.copytree(lora_factory.adapter(AdapterCase(), base), adapter)
    (adapter / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with (adapter / "adapter_model.bin").open("wb") as fh:
        pickle.dump({"x": _Payload(str(marker))}, fh)
    out = tmp_path / "m"
    done = kollm_cli("merge", str(base), str(adapter), "-o", str(out), "--allow-pickle")
    _refused(done, out, "could not be read safely", "weights_only")
    assert not marker.exists()
