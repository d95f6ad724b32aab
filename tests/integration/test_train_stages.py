"""Real training on CPU with the tiny fixture: CPT → SFT → DPO, each on a repeated batch, then a release.

Every stage uses a batch at least as large as its data, so each step sees the same batch and the loss must fall.
"""

import json
from pathlib import Path

import pytest

from kollm.train.spec import TrainSpec
from kollm.train.stages import STAGE_MANIFEST, run_stage

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "kollm" / "testing" / "data"


def _subset(src: Path, dst: Path, n: int) -> Path:
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def stages(ko_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    common = {"base": str(ko_tiny.base)}
    specs = {
        "cpt": TrainSpec(
            name="t-cpt",
            stage="cpt",
            data=[_subset(DATA / "train_cpt_ko.txt", root / "cpt.txt", 4)],
            output_dir=root / "cpt",
            lora={"r": 8, "alpha": 16},
            training={"max_steps": 6, "learning_rate": 3e-3, "batch_size": 16, "max_length": 32},
            **common,
        ),
        "sft": TrainSpec(
            name="t-sft",
            stage="sft",
            start_from=str(root / "cpt"),
            data=[_subset(DATA / "train_sft_ko.jsonl", root / "sft.jsonl", 4)],
            output_dir=root / "sft",
            lora={"r": 8, "alpha": 16, "use_rslora": True, "targets": ["q_proj", "v_proj", "o_proj", "down_proj"]},
            training={"max_steps": 6, "learning_rate": 3e-3, "batch_size": 4, "max_length": 96},
            **common,
        ),
        "dpo": TrainSpec(
            name="t-dpo",
            stage="dpo",
            start_from=str(root / "sft"),
            data=[_subset(DATA / "train_dpo_ko.jsonl", root / "dpo.jsonl", 4)],
            output_dir=root / "dpo",
            lora={"r": 4, "alpha": 8},
            training={"max_steps": 5, "learning_rate": 3e-3, "batch_size": 4, "max_length": 64},
            **common,
        ),
    }
    results = {name: run_stage(spec) for name, spec in specs.items()}
    return root, specs, results


@pytest.mark.parametrize("stage", ["cpt", "sft", "dpo"])
def test_loss_falls_on_a_repeated_batch(stages, stage):
    _, specs, results = stages
    result = results[stage]
    assert result.backend == "hf"
    assert len(result.losses) == specs[stage].training.max_steps
    assert result.losses[-1] < result.losses[0] - 0.01, result.losses
    assert result.tokens_seen > 0


def test_stage_manifest_records_provenance(stages, ko_tiny):
    root, _, results = stages
    record = json.loads(results["dpo"].manifest_path.read_text(encoding="utf-8"))
    assert record["stage"] == "dpo" and record["backend"] == "hf"
    assert record["base"]["path"] == str(ko_tiny.base)
    assert [Path(p["path"]).name for p in record["parents"]] == ["cpt", "sft"]
    assert record["data"][0]["path"].endswith("dpo.jsonl") and len(record["data"][0]["sha256"]) == 64
    assert record["final_loss"] == record["losses"][-1]
    assert record["hyperparameters"]["lora"]["r"] == 4
    assert record["tool_versions"]["trl"] and record["wall_seconds"] > 0
    adapter_files = sorted(p.name for p in (root / "dpo").iterdir())
    assert "adapter_model.safetensors" in adapter_files and STAGE_MANIFEST in adapter_files
    assert not (root / "dpo" / "ref").exists()


def test_trained_adapters_stack_and_merge_through_release(stages, ko_tiny, tmp_path):
    """`kollm release` merges the three adapters; the result equals peft applying them in training order."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kollm.config import ReleaseSpec
    from kollm.release.pipeline import run_release

    root, _, _ = stages
    spec = ReleaseSpec(
        name="trained",
        base=str(ko_tiny.base),
        adapters=[str(root / "cpt"), str(root / "sft"), str(root / "dpo")],
        exports={"safetensors": True, "gguf": ["f16"]},
        output_dir=tmp_path / "out",
    )
    result = run_release(spec, show_progress=False)
    assert any("f16" in row.artifact for row in result.rows)
    manifest = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert [a["training"]["stage"] for a in manifest["adapters"]] == ["cpt", "sft", "dpo"]
    assert manifest["adapters"][2]["training"]["final_loss"] == stages[2]["dpo"].final_loss
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(ko_tiny.base, dtype=torch.float32)
    base_only = AutoModelForCausalLM.from_pretrained(ko_tiny.base, dtype=torch.float32)
    for name in ("cpt", "sft", "dpo"):
        ref = PeftModel.from_pretrained(ref, str(root / name)).merge_and_unload()
    ref = ref.to(torch.bfloat16).to(torch.float32)  # the release stores bf16 like the base: round the same way
    ids = torch.tensor([[5, 77, 301, 1200, 42, 9]])
    with torch.no_grad():
        got, want, base = (m(ids).logits.numpy() for m in (merged, ref, base_only))
    assert np.abs(got - want).max() < 0.01
    assert np.abs(got - base).max() > 0.05  # training changed the model
