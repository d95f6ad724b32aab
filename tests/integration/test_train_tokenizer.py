"""Korean vocabulary extension: better compression, and the extended base trains, merges and exports to GGUF."""

from pathlib import Path

import pytest

from kollm.train.spec import TrainSpec
from kollm.train.stages import run_stage
from kollm.train.tokenizer import TokenizerConfig, extend_tokenizer

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "kollm" / "testing" / "data"


def test_extended_tokenizer_trains_merges_and_exports(ko_tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kollm.config import ReleaseSpec
    from kollm.release.pipeline import run_release

    ext = extend_tokenizer(
        TokenizerConfig(new_tokens=128), base_dir=ko_tiny.base, corpus=DATA / "corpus_ko.txt", out_dir=tmp_path / "ext"
    )
    assert len(ext.added) == 128
    assert ext.chars_per_token_after > ext.chars_per_token_before
    tok = AutoTokenizer.from_pretrained(ext.out_dir)
    base_tok = AutoTokenizer.from_pretrained(ko_tiny.base)
    assert len(tok) == len(base_tok) + 128
    model = AutoModelForCausalLM.from_pretrained(ext.out_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    text = "사람들이 함께 이야기를 나누었다"
    assert tok.decode(tok(text)["input_ids"]) == text  # still lossless

    cpt = TrainSpec(
        name="ext-cpt",
        stage="cpt",
        base=str(ext.out_dir),
        data=[DATA / "train_cpt_ko.txt"],
        output_dir=tmp_path / "cpt",
        lora={"r": 4, "alpha": 8, "modules_to_save": ["embed_tokens"]},
        training={"max_steps": 2, "batch_size": 4, "max_length": 32},
    )
    stage = run_stage(cpt)
    assert stage.losses
    release = ReleaseSpec(
        name="ext",
        base=str(ext.out_dir),
        adapters=[str(stage.adapter_dir)],
        exports={"safetensors": True, "gguf": ["f16"]},
        output_dir=tmp_path / "out",
    )
    result = run_release(release, show_progress=False)
    rows = {row.artifact: row for row in result.rows}
    assert "ok" in rows["gguf f16"].check  # HF vs llama.cpp logits and tokenization parity on Korean prompts
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
