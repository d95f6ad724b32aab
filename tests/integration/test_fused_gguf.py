"""The fused GGUF path: merged tensors streamed into llama.cpp's converter give the checkpoint route's bytes.

Every comparison is against the real converter reading a merged safetensors checkpoint. For the demo's
stacked adapters (cpt + sft) the fused side is a whole release without safetensors, SIGKILLed inside the
fused step and resumed; a resized, untied, sharded case is converted both ways directly. A converter run is
mostly imports, so the checkpoint-route conversions share one converter process (``_convert_jobs.py``).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kollm.config import DEFAULT_VERIFY_PROMPTS
from kollm.release import merge, merged_model, verify_gguf
from kollm.release.converter import ensure_converter
from kollm.release.steps import STATE_NAME
from kollm.testing.lora_cases import AdapterCase, BaseCase

pytestmark = pytest.mark.integration

NEW_TOKENS = ("김치찌개", "된장찌개", "비빔밥")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_killed_release(root: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A fused release (no safetensors, f16) that SIGKILLs itself inside the fused step."""
    out = root / "out"
    spec = root / "spec.yaml"
    spec.write_text(
        "name: ko-fused\nbase: fixture:ko-tiny\nadapters: [fixture:ko-tiny/cpt, fixture:ko-tiny/sft]\n"
        f"exports: {{safetensors: false, gguf: [f16]}}\noutput_dir: {out}\n"
    )
    # mid = the fused converter finished and its temp file is about to be renamed into place.
    with (root / "stderr.txt").open("w") as stderr:  # a file, not a pipe: nobody reads it while it runs
        killed = subprocess.Popen(
            [sys.executable, "-c", "from kollm.cli import main; main()", "release", str(spec), "--json"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "KOLLM_TEST_KILL_AT": "gguf-f16:mid"},
            start_new_session=True,  # the kill hook takes down its own process group, never pytest's
        )
    return killed, spec, out


def _convert_both_ways(root: Path, ko_tiny, lora_factory) -> dict:
    """Checkpoint-route F16 files to match, and the resized case converted both ways, in one converter process.

    Every model directory is named ``merged``: the converter takes the GGUF's general.name from it.
    """
    stacked = [ko_tiny.adapters["cpt"], ko_tiny.adapters["sft"]]
    merge.run(merge.MergeConfig(), base=ko_tiny.base, adapters=stacked, out_dir=root / "stacked" / "merged")
    merge.run(merge.MergeConfig(), base=ko_tiny.base, adapters=stacked, out_dir=root / "side" / "merged", weights=False)
    # A tied base whose adapter adds tokens and saves both embeddings: the merge unties and grows the vocabulary.
    base = lora_factory.base(BaseCase(vocab_size=4096, max_shard_size="400KB"), tokenizer_from=ko_tiny.base)
    adapter = lora_factory.adapter(
        AdapterCase(new_tokens=NEW_TOKENS, modules_to_save=("embed_tokens", "lm_head")), base
    )
    resized, fused_dir = root / "resized" / "merged", root / "fused" / "merged"
    merge.run(merge.MergeConfig(max_shard_bytes=300_000), base=base, adapters=[adapter], out_dir=resized)
    fused = merge.run(merge.MergeConfig(), base=base, adapters=[adapter], out_dir=fused_dir, weights=False)
    jobs = [
        {"model_dir": str(root / "stacked" / "merged"), "outfile": str(root / "stacked.gguf")},
        {"model_dir": str(resized), "outfile": str(root / "resized-checkpoint.gguf")},
        {
            "model_dir": str(fused_dir),
            "outfile": str(root / "resized-fused.gguf"),
            "base": str(base),
            "adapters": [str(adapter)],
        },
    ]
    (root / "jobs.json").write_text(json.dumps(jobs))
    driver = Path(__file__).with_name("_convert_jobs.py")
    done = subprocess.run(
        [sys.executable, str(driver), str(ensure_converter().root), str(root / "jobs.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_LOCAL_GGUF": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "stacked": stacked, "base": base, "adapter": adapter, "changes": fused.config_changes}


@pytest.fixture(scope="module")
def cases(ko_tiny, lora_factory, tmp_path_factory) -> dict:
    """The killed fused release runs while the checkpoint-route conversions are made; then it is resumed."""
    from kollm.config import load_release_spec
    from kollm.release.pipeline import run_release

    killed, spec_path, out = _start_killed_release(tmp_path_factory.mktemp("fused-release"))
    try:
        conversions = _convert_both_ways(tmp_path_factory.mktemp("conversions"), ko_tiny, lora_factory)
        killed.wait(timeout=600)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
    assert killed.returncode == -9, (spec_path.parent / "stderr.txt").read_text()[-2000:]
    after_kill = {
        "state": json.loads((out / STATE_NAME).read_text()),
        "finished": (out / "gguf" / "ko-fused-F16.gguf").exists(),
        "temps": [_sha(p) for p in (out / "gguf").glob(".*.tmp-*")],
    }
    spec = load_release_spec(spec_path)
    resumed = run_release(spec, show_progress=False)
    again = run_release(spec, show_progress=False)
    return conversions | {"out": out, "after_kill": after_kill, "resumed": resumed.ran, "again": again.ran}


def test_stacked_adapters_fused_f16_is_byte_identical(cases):
    out = cases["out"]
    assert not list((out / ".work" / "merged").glob("*.safetensors"))  # no merged weights were written
    assert _sha(out / "gguf" / "ko-fused-F16.gguf") == _sha(cases["root"] / "stacked.gguf")
    manifest = json.loads((out / "kollm-manifest.json").read_text())
    assert manifest["merge"]["fused_gguf"] is True
    assert manifest["artifacts"][0]["checks"]["logits_atol"] == 0.05  # verified against the in-memory merge


def test_killed_inside_the_fused_step_resumes_it_alone_and_then_skips(cases):
    after_kill = cases["after_kill"]
    assert after_kill["state"]["steps"]["merge"]["record"]["fused"] is True
    assert "gguf-f16" not in after_kill["state"]["steps"] and not after_kill["finished"]
    # What the kill left is a complete temporary that was never renamed into place.
    assert after_kill["temps"] == [_sha(cases["root"] / "stacked.gguf")]
    assert "merge" not in cases["resumed"] and "gguf-f16" in cases["resumed"]
    assert not list(cases["out"].rglob("*.tmp-*"))
    assert cases["again"] == []


def test_in_memory_reference_equals_the_checkpoint_reference(cases, ko_tiny):
    prompts = DEFAULT_VERIFY_PROMPTS[:2]
    from_disk = verify_gguf.hf_reference(cases["root"] / "stacked" / "merged", prompts)
    side = cases["root"] / "side" / "merged"
    model = merged_model.load_merged(merge.MergeConfig(), base=ko_tiny.base, adapters=cases["stacked"], config_dir=side)
    in_memory = verify_gguf.hf_reference(side, prompts, model=model)
    assert all(np.array_equal(a, b) for a, b in zip(from_disk.logits, in_memory.logits, strict=True))
    assert (from_disk.prompt_ids, from_disk.chat_ids) == (in_memory.prompt_ids, in_memory.chat_ids)


def test_resized_vocab_untied_and_sharded_is_byte_identical(cases):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    root = cases["root"]
    vocab = 4096 + len(NEW_TOKENS)
    assert cases["changes"] == {"tie_word_embeddings": False, "vocab_size": vocab}
    assert (root / "resized" / "merged" / "model.safetensors.index.json").is_file()  # the converter read shards
    assert _sha(root / "resized-checkpoint.gguf") == _sha(root / "resized-fused.gguf")
    shapes = {t.name: list(t.shape) for t in GGUFReader(root / "resized-fused.gguf").tensors}
    assert shapes["output.weight"] == shapes["token_embd.weight"] == [64, vocab]
    # The in-memory model (the fused path's verification reference) holds the checkpoint's weights exactly.
    model = merged_model.load_merged(
        merge.MergeConfig(),
        base=cases["base"],
        adapters=[cases["adapter"]],
        config_dir=root / "fused" / "merged",
    )
    loaded = AutoModelForCausalLM.from_pretrained(root / "resized" / "merged", dtype=torch.float32).state_dict()
    assert model.state_dict().keys() == loaded.keys()
    assert all(torch.equal(t, loaded[name]) for name, t in model.state_dict().items())
