"""Shared, session-scoped fixtures: the tiny Korean model is built once per run (and cached across runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kollm.testing.fixture import Fixture, FixtureSpec, build_fixture, pretrained_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ko_tiny() -> Fixture:
    """The demo fixture: Qwen2 tokenizer rules, tied embeddings, adapters 'cpt' and 'sft'."""
    return build_fixture(FixtureSpec())


@pytest.fixture(scope="session")
def llama_tiny() -> Fixture:
    """A second family (Llama 3 split rules and architecture, wider MLP): parity tests and adapter mismatches."""
    return build_fixture(
        FixtureSpec(name="llama-tiny", family="llama-bpe", tie_word_embeddings=False, intermediate_size=768)
    )


@pytest.fixture(scope="session")
def lora_factory(tmp_path_factory):
    """Merge cases: tiny bases and PEFT adapters (kollm.testing.lora_cases), each built once per run."""
    from kollm.testing.lora_cases import LoraFactory

    return LoraFactory(tmp_path_factory.mktemp("lora-cases"))


@pytest.fixture(scope="session")
def ko_tiny_nf4(ko_tiny, tmp_path_factory) -> Path:
    """ko-tiny's base as kollm's bnb export writes it (NF4, double quantization): a 4-bit base to merge onto."""
    from kollm.release import bnb

    out = tmp_path_factory.mktemp("ko-tiny-nf4") / "base"
    bnb.run(bnb.BnbConfig(), model_dir=ko_tiny.base, out_dir=out, probe_texts=["한국어 모델을 병합합니다."])
    return out


@pytest.fixture(scope="session")
def ko_tiny_pretrained() -> Fixture:
    """Quantization quality: ko-tiny's shapes trained on the bundled Korean corpus (cached; ~2 min to build)."""
    return build_fixture(pretrained_spec())


@pytest.fixture(scope="session")
def kollm_cli():
    """Run the real `kollm` entry point in a subprocess, as a user would; returns the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from kollm.cli import main; main()", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            timeout=900,
        )

    return run


@pytest.fixture(scope="session")
def publish_release(tmp_path_factory, ko_tiny) -> Path:
    """A small built release (merged + Q8_0 + Q4_K_M, not yet published) for the publish/pull tests."""
    from kollm.config import ReleaseSpec
    from kollm.release.pipeline import run_release

    out = tmp_path_factory.mktemp("publish-release") / "out"
    spec = ReleaseSpec(
        name="ko-tiny",
        base="fixture:ko-tiny",
        adapters=["fixture:ko-tiny/cpt", "fixture:ko-tiny/sft"],
        exports={"safetensors": True, "gguf": ["q8_0", "q4_k_m"]},
        output_dir=out,
    )
    run_release(spec, show_progress=False)
    return out
