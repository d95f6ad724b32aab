"""Typed specs read from YAML. Every field's description doubles as CLI help.

Relative paths in a spec are resolved against the current working directory, like the CLI's own arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kollm.errors import SpecError

# llama.cpp file types kollm can produce: the converter writes the float ones, llama_model_quantize the rest.
GGUF_FLOAT_TYPES = ("f32", "f16", "bf16")
GGUF_QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k")
GGUF_TYPES = GGUF_FLOAT_TYPES + GGUF_QUANT_TYPES
# The types an importance matrix improves: llama-quantize weights each K-quant block's rounding error by it.
GGUF_K_QUANT_TYPES = tuple(t for t in GGUF_QUANT_TYPES if "_k" in t)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Publish targets: a Hub repo, a directory registry, or a git mirror in olah's layout (tests, air-gapped sites).
PUBLISH_SCHEMES = ("hf://", "local:", "mirror:")
_HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Semantic versions with an optional leading v: the tag a release is published under (never overwritten).
_VERSION_RE = re.compile(r"^v?\d+\.\d+\.\d+([-+.][0-9A-Za-z.-]+)?$")

DEFAULT_VERIFY_PROMPTS = [
    "대한민국의 수도는",
    "오늘 날씨가 좋아서 공원에 산책을 나갔다.",
    "인공지능 모델을 배포할 때 가장 중요한 것은",
    "김치찌개를 맛있게 끓이는 방법을 알려 주세요.",
]


class ExportsSpec(BaseModel):
    """Which artifacts a release produces."""

    model_config = ConfigDict(extra="forbid")

    safetensors: bool = Field(True, description="Write the merged model as HF safetensors shards.")
    gguf: list[str] = Field(
        default_factory=list,
        description=f"GGUF file types for llama.cpp/Ollama, any of: {', '.join(GGUF_TYPES)}.",
    )
    gguf_imatrix: bool = Field(
        False,
        description="Quantize the GGUF K-quants (q4_k_m, q5_k_m, ...) with an importance matrix that llama.cpp's "
        "llama-imatrix computes on Korean calibration text; other types are unchanged.",
    )
    gguf_imatrix_calibration: Path | None = Field(
        None,
        description="Importance-matrix calibration text: a .txt (one text per line) or .jsonl (text / messages / "
        "prompt+completion). Default: kollm's bundled Korean sample (the GPTQ default).",
    )
    gguf_imatrix_chunks: int = Field(
        128, gt=0, description="Most chunks of calibration text (512 tokens each) llama-imatrix processes."
    )
    fused_gguf: bool = Field(
        True,
        description="With safetensors: false, stream merged tensors straight into llama.cpp's converter (no merged "
        "checkpoint written and read back) when nothing else needs one; false forces merge → checkpoint → convert. "
        "The GGUF bytes are the same either way.",
    )

    gptq: bool = Field(
        False,
        description="GPTQ W4A16 (group size 128) via llm-compressor, in the compressed-tensors format vLLM loads.",
    )
    gptq_calibration: Path | None = Field(
        None,
        description="GPTQ calibration text: a .txt (one text per line) or .jsonl (text / messages / prompt+completion, "
        "e.g. the release's SFT data). Default: kollm's bundled Korean sample.",
    )
    gptq_samples: int = Field(128, gt=0, description="GPTQ calibration samples.")
    bnb_4bit: bool = Field(False, description="bitsandbytes NF4 with double quantization, reloadable by transformers.")
    quality_report: bool = Field(
        False,
        description="Measure every export: held-out Korean perplexity, top-1 agreement with the merge, size, time "
        "(quality.json + quality.png).",
    )

    @field_validator("gguf")
    @classmethod
    def _known_gguf_types(cls, value: list[str]) -> list[str]:
        normalised = [v.lower() for v in value]
        for name in normalised:
            if name not in GGUF_TYPES:
                raise ValueError(_unknown_choice(name, GGUF_TYPES, "GGUF type"))
        if len(set(normalised)) != len(normalised):
            raise ValueError("a GGUF type is listed twice")
        return normalised

    @field_validator("gguf_imatrix_calibration")
    @classmethod
    def _calibration_file(cls, value: Path | None) -> Path | None:
        # Checked when the spec is read, not minutes later when the importance matrix step starts.
        if value is not None and not value.is_file():
            raise ValueError(
                f"the calibration file {value} does not exist (relative paths start at the current directory)"
            )
        if value is not None and value.suffix not in (".txt", ".jsonl"):
            raise ValueError(f"the calibration file {value} must be .txt or .jsonl")
        return value

    @model_validator(mode="after")
    def _imatrix_needs_k_quants(self) -> ExportsSpec:
        if self.gguf_imatrix and not any(t in GGUF_K_QUANT_TYPES for t in self.gguf):
            raise ValueError(
                "gguf_imatrix applies to K-quants only; add one to 'gguf' "
                f"({', '.join(GGUF_K_QUANT_TYPES)}) or drop gguf_imatrix"
            )
        if self.gguf_imatrix_calibration is not None and not self.gguf_imatrix:
            raise ValueError("gguf_imatrix_calibration is set but gguf_imatrix is not; set gguf_imatrix: true")
        return self


class VerifySpec(BaseModel):
    """How exported artifacts are checked against the merged model."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_VERIFY_PROMPTS),
        description="Korean prompts whose next-token logits are compared between HF and the f16 GGUF.",
        min_length=1,
    )
    f16_logits_atol: float = Field(
        0.05,
        gt=0,
        description="Largest allowed |logit difference| between the merged HF model and the f16 GGUF. "
        "f16 rounding of weights and activations gives ~0.01 on small models.",
    )


class EvalSpec(BaseModel):
    """How a release evaluates its gates (lm-eval through kollm.evals)."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, gt=0, description="Questions per task (smoke runs on CPU); none = the full sets.")
    data_dir: Path | None = Field(
        None,
        description="Offline data folder (see evalsuites/suites.yaml); none = the Hub, or the bundled samples offline.",
    )
    offline: bool | None = Field(None, description="Force the bundled/offline data (true) or the Hub (false).")
    max_gen_toks: int | None = Field(None, gt=0, description="Cap on generated tokens for generation suites.")


class ReleaseSpec(BaseModel):
    """A release: which base and adapters, what to export, where to publish."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Release name; used for file and repo names (letters, digits, . _ -).")
    base: str = Field(description="Base model: a local HF directory, a Hub id, or fixture:ko-tiny (the demo model).")
    base_revision: str | None = Field(None, description="Hub revision (commit or tag) of the base; pin it.")
    adapters: list[str] = Field(
        default_factory=list,
        description="LoRA adapter directories, merged in this order (e.g. CPT, then SFT, then DPO).",
    )
    exports: ExportsSpec = Field(default_factory=ExportsSpec, description="Artifacts to produce.")
    gguf_pre_tokenizer: str | None = Field(
        None,
        description="llama.cpp pre-tokenizer name; by default kollm derives it from tokenizer.json.",
    )
    publish: str | None = Field(
        None,
        description="Where to publish: hf://org/name (Hugging Face Hub), local:<dir> (directory registry) or "
        "mirror:<dir> (git + git-lfs repos in olah's layout). Leave empty to only build.",
    )
    version: str | None = Field(
        None, description="Release version, e.g. v1.2.0: the tag every published repo gets (never overwritten)."
    )
    private: bool = Field(True, description="Create Hub repos as private (only on first creation).")
    repo_layout: Literal["per-format", "single"] = Field(
        "per-format",
        description="per-format: org/name (safetensors) and org/name-GGUF; single: every artifact in org/name.",
    )
    license: str = Field("apache-2.0", description="License id for the model card (Hub license identifier).")
    output_dir: Path | None = Field(None, description="Where artifacts go; default out/<name>.")
    trust_remote_code: bool = Field(False, description="Allow model code from the base repo to run. Off by default.")
    allow_pickle: bool = Field(False, description="Accept pickle (.bin) checkpoints. Off: safetensors only.")
    dequantize_base: bool = Field(
        False,
        description="Accept a bitsandbytes 4-bit base: merge onto its dequantized weights (warns: the quantization "
        "error stays in the merged model; the original 16-bit base is better). Off: such a base is refused.",
    )
    verify: VerifySpec = Field(default_factory=VerifySpec, description="Checks run on every export.")
    gates: list[str] = Field(
        default_factory=list,
        description="Eval gates in percent, checked before publishing: kmmlu>=78, q4_k_m.kmmlu>=bf16.kmmlu-1.5.",
    )
    eval: EvalSpec = Field(default_factory=EvalSpec, description="How gates are evaluated.")

    @field_validator("gates")
    @classmethod
    def _valid_gates(cls, value: list[str]) -> list[str]:
        from kollm.errors import GateSyntaxError
        from kollm.evals.gates import parse_gate

        for text in value:
            try:
                parse_gate(text)
            except GateSyntaxError as e:
                raise ValueError(str(e).rstrip(".")) from e
        return value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 96 characters)")
        return value

    @field_validator("publish")
    @classmethod
    def _valid_target(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(PUBLISH_SCHEMES):
            raise ValueError("publish target must look like hf://org/name, local:<dir> or mirror:<dir>")
        if value in ("local:", "mirror:"):
            raise ValueError(f"{value} needs a directory, e.g. {value}./registry")
        if value.startswith("hf://") and not _HUB_REPO_RE.match(value.removeprefix("hf://")):
            raise ValueError("hf:// needs a repo id, e.g. hf://my-org/ko-model")
        return value

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION_RE.match(value):
            raise ValueError("use a semantic version such as v1.2.0")
        return value

    @model_validator(mode="after")
    def _version_when_publishing(self) -> ReleaseSpec:
        if self.publish and self.version is None:
            raise ValueError("'version' is required when 'publish' is set (every release is tagged), e.g. v1.0.0")
        return self

    @property
    def out_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("out") / self.name


def _unknown_choice(name: str, known: tuple[str, ...], what: str) -> str:
    from difflib import get_close_matches

    close = get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{name}'.{hint} Known: {', '.join(known)}"


def format_validation_errors(err: ValidationError) -> list[str]:
    """Turn pydantic's errors into 'field.path: message' strings (extra keys named as unknown)."""
    problems = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        elif item["type"] == "missing":
            problems.append(f"'{where}' is required")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            problems.append(f"'{where}': {msg}")
    return problems


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning syntax errors and non-mappings into a SpecError naming the line."""
    if not path.is_file():
        raise SpecError(path, ["the file does not exist"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(path, [f"{where}YAML syntax error ({problem})"]) from e
    if not isinstance(data, dict):
        raise SpecError(path, ["the top level must be a mapping of field: value"])
    return data


def load_release_spec(path: Path, overrides: dict[str, Any] | None = None) -> ReleaseSpec:
    """Load and validate a release spec; ``overrides`` (from CLI flags) replace top-level fields.

    Raises:
        SpecError: listing every problem in the file at once.
    """
    data = read_yaml(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ReleaseSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(path, format_validation_errors(e)) from e
