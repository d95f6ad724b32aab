"""Every train spec shipped in release/train/ validates, and its data files parse in the stage's format."""

from pathlib import Path

import pytest
import yaml

from kollm.train.data import read_for_stage
from kollm.train.spec import load_train_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "release" / "train").glob("ko-tiny-*.yaml"))
TRAIN_SPECS = [p for p in SPECS if "stage" in yaml.safe_load(p.read_text(encoding="utf-8"))]


def test_there_are_three_stages():
    assert sorted(load_train_spec(p).stage for p in TRAIN_SPECS) == ["cpt", "dpo", "sft"]


@pytest.mark.parametrize("path", TRAIN_SPECS, ids=lambda p: p.name)
def test_train_spec_and_its_data_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_train_spec(path)
    assert len(read_for_stage(spec.stage, spec.data)) >= 20


def test_release_of_trained_stages_validates():
    from kollm.config import load_release_spec

    spec = load_release_spec(REPO / "release" / "train" / "ko-tiny-trained.yaml")
    assert [Path(a).name for a in spec.adapters] == ["ko-tiny-cpt", "ko-tiny-sft", "ko-tiny-dpo"]


@pytest.mark.parametrize("name", ["fsdp.yaml", "zero3.yaml"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "release" / "train" / "accelerate" / name))
    assert config.distributed_type.value in ("FSDP", "DEEPSPEED")
    assert config.mixed_precision == "bf16"


def test_unknown_key_is_reported(tmp_path):
    from kollm.errors import SpecError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstage: sft\nbase: b\ndata: [d.jsonl]\noutput_dir: o\nlora: {rank: 8}\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"unknown key 'lora.rank'"):
        load_train_spec(bad)
