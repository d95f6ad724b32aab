"""When the release takes the fused GGUF path, and what its steps then depend on."""

import pytest

from kollm.config import ReleaseSpec
from kollm.release.pipeline import build_steps, fused_gguf


def _spec(tmp_path, **exports) -> ReleaseSpec:
    gates = exports.pop("gates", [])
    return ReleaseSpec(
        name="ko",
        base="fixture:ko-tiny",
        adapters=["fixture:ko-tiny/cpt"],
        exports={"safetensors": False, "gguf": ["f16", "q8_0"], **exports},
        gates=gates,
        output_dir=tmp_path / "out",
    )


@pytest.fixture
def base(tmp_path):
    directory = tmp_path / "base"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def test_gguf_only_without_safetensors_is_fused(tmp_path, base):
    assert fused_gguf(_spec(tmp_path), base)
    assert fused_gguf(_spec(tmp_path, gates=["f16.kmmlu>=q8_0.kmmlu-1"]), base)  # gates on GGUF files only


@pytest.mark.parametrize(
    "exports",
    [
        {"safetensors": True},
        {"gguf": []},
        {"fused_gguf": False},
        {"gptq": True},
        {"bnb_4bit": True},
        {"quality_report": True},
        {"gates": ["kmmlu>=10"]},  # no artifact named: the merged model
        {"gates": ["f16.kmmlu>=merged.kmmlu-1"]},
        {"gates": ["bf16.kmmlu>=10"]},  # bf16 without a bf16 GGUF is the merged checkpoint
    ],
)
def test_anything_that_loads_the_merged_checkpoint_keeps_it(tmp_path, base, exports):
    assert not fused_gguf(_spec(tmp_path, **exports), base)


def test_a_pickle_base_takes_the_checkpoint_route(tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"")
    assert not fused_gguf(_spec(tmp_path), pickled)


def test_fused_steps_record_the_route_so_switching_reruns_the_merge(tmp_path, ko_tiny):
    fused = {s.name: s for s in build_steps(_spec(tmp_path))}
    plain = {s.name: s for s in build_steps(_spec(tmp_path, fused_gguf=False))}
    assert fused["merge"].config["fused"] is True and "fused" not in plain["merge"].config
    assert fused["merge"].config["dir"] == plain["merge"].config["dir"] == ".work/merged"
    assert fused["merge"].disk_bytes < plain["merge"].disk_bytes  # no weights written
    assert fused["gguf-f16"].inputs == fused["hf-reference"].inputs == ("merge",)
