"""The model card (README.md) of a published repo, built with huggingface_hub's ModelCard / ModelCardData.

Everything in the card comes from records: the release manifest (files, sha256, provenance) and the gate
score records. Scores become ``model-index`` eval results so the Hub and ``ModelCard.load`` read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import GateFailedError

LANGUAGE = "ko"


class ScoreRecord(BaseModel):
    """One gate score as the eval stage reports it (percent, 0–100), with everything needed to reproduce it."""

    model_config = ConfigDict(extra="forbid")

    gate: str = Field(description="Gate name from evalsuites/suites.yaml, e.g. kmmlu.")
    task: str = Field(description="lm-eval task (variant) that produced the score, e.g. kmmlu_direct.")
    metric: str = Field(description="Metric name, e.g. acc or prompt_level_strict_acc.")
    value: float = Field(ge=0, le=100, description="Score in percent.")
    stderr: float | None = Field(None, ge=0, description="Standard error in percentage points.")
    dataset_id: str = Field(description="Hub dataset id, e.g. HAERAE-HUB/KMMLU.")
    dataset_revision: str | None = Field(None, description="Dataset commit the score was measured on.")
    n_shot: int = Field(0, ge=0, description="Few-shot examples.")
    protocol: str = Field("", description="Chat template use, aggregation, generation settings …")
    threshold: float | None = Field(None, ge=0, le=100, description="The gate's minimum, when it has one.")
    passed: bool | None = Field(None, description="Whether the gate passed; None when the record is informative.")


def check_gates(scores: list[ScoreRecord]) -> None:
    """Refuse to go on when any gate failed.

    Raises:
        GateFailedError: naming the first failed gate, its threshold and its score.
    """
    for score in scores:
        failed = score.passed is False or (score.threshold is not None and score.value < score.threshold)
        if failed:
            raise GateFailedError(score.gate, score.threshold, score.value)


@dataclass(frozen=True)
class CardInputs:
    """What a card says about one repo."""

    repo_id: str
    model_name: str
    license: str
    version: str
    base_model: str | None
    base_model_relation: str | None
    kind: str  # "safetensors", "gguf" or "single"
    files: list[dict[str, Any]]  # manifest file records: path, size, sha256
    scores: list[ScoreRecord] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    gguf_files: list[str] = field(default_factory=list)
    safetensors_repo: str | None = None
    pull_from: str | None = None  # kollm pull's source option for a non-Hub target, e.g. "--registry local:DIR"


def eval_results(scores: list[ScoreRecord]) -> list[Any]:
    """Turn score records into huggingface_hub ``EvalResult`` objects (one per gate)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-generation",
            task_name=s.gate,
            dataset_type=s.dataset_id,
            dataset_name=s.dataset_id,
            dataset_revision=s.dataset_revision,
            dataset_args={"num_fewshot": s.n_shot, "lm_eval_task": s.task},
            metric_type=s.metric,
            metric_name=f"{s.metric} ({s.n_shot}-shot)",
            metric_value=round(s.value, 2),
            metric_args={"protocol": s.protocol, "stderr": s.stderr},
        )
        for s in scores
    ]


def build_card(inputs: CardInputs) -> str:
    """Render README.md for one repo: YAML metadata (license, language, base_model, tags, model-index) + body.

    Returns:
        The card text, which ``huggingface_hub.ModelCard`` parses back.
    """
    from huggingface_hub import ModelCard, ModelCardData

    tags = ["korean", "kollm"]
    if inputs.kind in ("gguf", "single") and inputs.gguf_files:
        tags += ["gguf", "llama.cpp", "ollama"]
    data = ModelCardData(
        model_name=inputs.model_name,
        license=inputs.license,
        language=[LANGUAGE],
        library_name="gguf" if inputs.kind == "gguf" else "transformers",
        pipeline_tag="text-generation",
        base_model=inputs.base_model,
        base_model_relation=inputs.base_model_relation if inputs.base_model else None,
        tags=tags,
        eval_results=eval_results(inputs.scores) or None,
    )
    body = "\n".join(
        [
            f"# {inputs.model_name} ({inputs.version})",
            "",
            f'Released with kollm as `{inputs.repo_id}`, tag `{inputs.version}`. Pin the tag: `revision="{inputs.version}"`.',
            "",
            *_scores_section(inputs.scores),
            *_usage_section(inputs),
            *_provenance_section(inputs.provenance),
            "## Files and sha256",
            "",
            "| file | size | sha256 |",
            "| --- | ---: | --- |",
            *[f"| `{f['path']}` | {f['size']:,} | `{f['sha256']}` |" for f in inputs.files],
            "",
            "`kollm-manifest.json` in this repo holds the same table plus the full provenance; "
            "`kollm pull` checks every download against it.",
            "",
        ]
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _scores_section(scores: list[ScoreRecord]) -> list[str]:
    if not scores:
        return ["No evaluation gates were recorded for this release.", ""]
    rows = [
        f"| {s.gate} | `{s.task}` | {s.metric} | {s.value:.2f}"
        + (f" ± {s.stderr:.2f}" if s.stderr is not None else "")
        + f" | {'' if s.threshold is None else f'≥ {s.threshold:g}'} | {s.n_shot} | {s.protocol} "
        f"| `{s.dataset_id}`@{(s.dataset_revision or 'unpinned')[:12]} |"
        for s in scores
    ]
    return [
        "## Evaluation gates",
        "",
        "| gate | task | metric | score (%) | gate | shots | protocol | dataset@revision |",
        "| --- | --- | --- | ---: | --- | ---: | --- | --- |",
        *rows,
        "",
    ]


def _usage_section(inputs: CardInputs) -> list[str]:
    lines = ["## How to run", ""]
    if inputs.gguf_files and inputs.pull_from:
        name = _default_file(inputs.gguf_files)
        quant = _quant_of(name)
        lines += [
            "This repo is not on the Hub: pull the GGUF with kollm (verifies the sha256, writes an Ollama Modelfile "
            "with the chat template and stop tokens), then run it with llama.cpp or Ollama:",
            "",
            "```sh",
            f"kollm pull {inputs.repo_id}:{quant} {inputs.pull_from} --to ./models",
            f"llama-server -m ./models/{name} --port 8080",
            f"ollama create {inputs.repo_id.split('/')[-1].lower()} -f ./models/{name.removesuffix('.gguf')}.Modelfile",
            "```",
            "",
        ]
    elif inputs.gguf_files:
        quant = _quant_of(_default_file(inputs.gguf_files))
        lines += [
            "llama.cpp (downloads the file and serves an OpenAI-compatible API):",
            "",
            "```sh",
            f"llama-cli -hf {inputs.repo_id}:{quant}",
            f"llama-server -hf {inputs.repo_id}:{quant} --port 8080",
            "```",
            "",
            "Ollama:",
            "",
            "```sh",
            f"ollama run hf.co/{inputs.repo_id}:{quant}",
            "```",
            "",
            "kollm (verifies the sha256 and writes an Ollama Modelfile with the chat template and stop tokens):",
            "",
            "```sh",
            f"kollm pull {inputs.repo_id}:{quant} --to ./models",
            "```",
            "",
        ]
    served = inputs.safetensors_repo if inputs.kind != "gguf" else None
    if served:
        lines += [
            "vLLM (OpenAI-compatible server):",
            "",
            "```sh",
            f"vllm serve {served} --revision {inputs.version} --api-key $API_KEY",
            "```",
            "",
        ]
    lines += [
        "Any OpenAI client against either server:",
        "",
        "```python",
        "from openai import OpenAI",
        "",
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="$API_KEY")',
        f'reply = client.chat.completions.create(model="{served or inputs.repo_id}", '
        'messages=[{"role": "user", "content": "안녕하세요"}])',
        "print(reply.choices[0].message.content)",
        "```",
        "",
    ]
    return lines


def _provenance_section(provenance: dict[str, Any]) -> list[str]:
    if not provenance:
        return []
    base = provenance.get("base") or {}
    lines = ["## Provenance", "", f"- base: `{base.get('source')}` (revision `{base.get('revision') or 'n/a'}`)"]
    for adapter in provenance.get("adapters") or []:
        lines.append(f"- adapter: `{adapter.get('source')}` sha256 `{adapter.get('sha256', '')}`")
    imatrix = (provenance.get("gguf") or {}).get("imatrix")
    if imatrix:
        lines.append(
            f"- GGUF {', '.join(t.upper() for t in imatrix['types'])}: quantized with the importance matrix "
            f"`{imatrix['file'].rsplit('/', 1)[-1]}` (llama.cpp llama-imatrix on `{imatrix['dataset']}`, "
            f"{imatrix['chunks']} chunks of {imatrix['chunk_tokens']} tokens)"
        )
    tools = provenance.get("tools") or {}
    if tools:
        lines.append("- tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())))
    return [*lines, ""]


def _default_file(gguf_files: list[str]) -> str:
    """The file llama.cpp and Ollama pick without a tag: Q4_K_M, then Q8_0, else the first GGUF."""
    for quant in ("Q4_K_M", "Q8_0"):
        for name in gguf_files:
            if f"-{quant}." in name.upper():
                return name
    return gguf_files[0]


def _quant_of(name: str) -> str:
    """``ko-tiny-Q4_K_M.gguf`` -> ``Q4_K_M``."""
    return name.rsplit(".", 1)[0].rsplit("-", 1)[-1].upper()
