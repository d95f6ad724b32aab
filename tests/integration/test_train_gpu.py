"""The Unsloth backend on a CUDA GPU: same spec, same adapter format as the hf backend. Skipped without one."""

import importlib.util
import json
from pathlib import Path

import pytest

from kollm.train.spec import TrainSpec
from kollm.train.stages import run_stage

DATA = Path(__file__).resolve().parents[2] / "kollm" / "testing" / "data"


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda() or importlib.util.find_spec("unsloth") is None, reason="needs CUDA and unsloth"),
]


def test_unsloth_and_hf_write_the_same_adapter_format(ko_tiny, tmp_path):
    from safetensors import safe_open

    results = {}
    for backend in ("unsloth", "hf"):
        spec = TrainSpec(
            name=f"gpu-{backend}",
            stage="cpt",
            base=str(ko_tiny.base),
            data=[DATA / "train_cpt_ko.txt"],
            output_dir=tmp_path / backend,
            backend=backend,
            lora={"r": 8, "alpha": 16},
            training={"max_steps": 10, "learning_rate": 1e-3, "batch_size": 16, "max_length": 32},
        )
        results[backend] = run_stage(spec)
        assert results[backend].backend == backend
        assert results[backend].losses[-1] < results[backend].losses[0]
    keys = {}
    for backend, result in results.items():
        with safe_open(result.adapter_dir / "adapter_model.safetensors", "pt") as fh:
            keys[backend] = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        config = json.loads((result.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        assert config["r"] == 8 and config["lora_alpha"] == 16
    assert keys["unsloth"] == keys["hf"]
