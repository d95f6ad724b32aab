"""Train specs: one schema for the cpt, sft and dpo stages (YAML in, validated ``TrainSpec`` out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kollm.config import format_validation_errors, read_yaml
from kollm.errors import SpecError

Stage = Literal["cpt", "sft", "dpo"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSpec(BaseModel):
    """LoRA / QLoRA settings; the same for every backend, so adapters look the same whichever trained them."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    targets: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR), min_length=1, description="Module names that get LoRA matrices."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved whole (e.g. embed_tokens, lm_head after a vocabulary "
        "extension). vLLM cannot serve such adapters as LoRA: merge them with `kollm release`.",
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base in NF4 (bitsandbytes, CUDA). Merge is onto 16-bit."
    )


class TrainingSpec(BaseModel):
    """Optimiser and loop settings."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(100, ge=1, description="Optimiser steps.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Sequences per device per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(1024, ge=8, description="Tokens per sequence (CPT packs text into blocks of this size).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, description="Seed for LoRA init, data order and dropout.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (long context).")
    dpo_beta: float = Field(0.1, gt=0, description="DPO: strength of the KL penalty against the reference.")
    logging_steps: int = Field(1, ge=1)


class TrainSpec(BaseModel):
    """One training stage: base (+ earlier stages), data, LoRA settings, loop settings, output."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Stage name; the adapter is written to output_dir.")
    stage: Stage = Field(description="cpt (raw text), sft (chat or instruction data), dpo (preference pairs).")
    base: str = Field(description="Base model: a local HF directory, a Hub id, or fixture:ko-tiny.")
    base_revision: str | None = Field(None, description="Hub revision of the base; pin it.")
    start_from: str | None = Field(
        None,
        description="Output dir of the previous stage (e.g. the CPT adapter for SFT). Its adapters are merged "
        "into the base in memory and this stage trains a new adapter on top; release lists them in order.",
    )
    data: list[Path] = Field(min_length=1, description="Data files in the stage's format (JSONL, or .txt for CPT).")
    output_dir: Path = Field(description="Where the adapter dir and stage manifest go.")
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto", description="auto: Unsloth on a CUDA GPU when installed, else transformers + peft + trl."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    trust_remote_code: bool = Field(False, description="Allow model code from the base repo to run. Off by default.")

    @model_validator(mode="after")
    def _checks(self) -> TrainSpec:
        if self.lora.load_in_4bit and self.lora.modules_to_save:
            raise ValueError("lora.modules_to_save cannot be combined with load_in_4bit (full modules stay 16-bit)")
        return self


def load_train_spec(path: Path, overrides: dict[str, Any] | None = None) -> TrainSpec:
    """Load and validate a train spec; relative data/output paths resolve against the current directory.

    Args:
        path: the YAML file.
        overrides: top-level fields from CLI flags (None values are ignored).

    Returns:
        The validated spec.

    Raises:
        SpecError: listing every problem in the file at once.
    """
    data = read_yaml(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(path, format_validation_errors(e)) from e
