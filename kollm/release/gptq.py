"""GPTQ W4A16 export through llm-compressor, in the compressed-tensors format vLLM loads natively.

4-bit weights, group size 128, activations in 16 bit; lm_head stays unquantized. The calibration text is
Korean (kollm's bundled sample by default, or the release's own SFT data), since GPTQ's error correction
is only as good as the activations it sees. vLLM reads ``quantization_config`` from config.json, so the
server needs no ``--quantization`` flag (vllm#10848). auto-gptq is not used: it is archived, fails to import
on transformers 5 and needs CUDA to quantize.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import QuantizationError, ToolMissingError, VerificationError
from kollm.manifest import atomic_path
from kollm.release import calibration

log = logging.getLogger(__name__)

SCHEME = "W4A16"
GROUP_SIZE = 128  # fixed by llm-compressor's W4A16 preset


class GptqConfig(BaseModel):
    """How to quantize."""

    model_config = ConfigDict(extra="forbid")

    calibration: Path | None = Field(None, description="Calibration .txt/.jsonl; None: kollm's Korean sample.")
    num_samples: int = Field(128, gt=0, description="Calibration samples.")
    lines_per_sample: int = Field(4, gt=0, description="Consecutive texts joined into one sample.")
    max_seq_length: int = Field(512, gt=0, description="Tokens per calibration sample at most.")
    dampening_frac: float = Field(0.01, gt=0, description="GPTQ's Hessian dampening.")


@dataclass
class GptqResult:
    """The written checkpoint and what was checked."""

    out_dir: Path
    seconds: float
    calibration: str
    samples: int
    quantization_config: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)


def _require() -> None:
    try:
        import compressed_tensors  # noqa: F401
        import llmcompressor  # noqa: F401
    except ImportError as e:
        raise ToolMissingError("llm-compressor", install="pip install 'kollm[quant]'") from e


def _dataset(cfg: GptqConfig, tokenizer: Any) -> tuple[Any, str]:
    from datasets import Dataset

    if cfg.calibration is None:
        texts, source = calibration.training_korean_lines(), "kollm bundled Korean sample"
    else:
        texts, source = calibration.read_texts(cfg.calibration, tokenizer=tokenizer), str(cfg.calibration)
    samples = calibration.pack_texts(texts, per_sample=cfg.lines_per_sample, limit=cfg.num_samples)
    encoded = tokenizer(samples, truncation=True, max_length=cfg.max_seq_length, add_special_tokens=False)
    data = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    return data, source


def check_config(out_dir: Path) -> dict[str, Any]:
    """Check that config.json carries the compressed-tensors W4A16 block vLLM detects; return it.

    Raises:
        VerificationError: the block is missing or describes another scheme.
    """
    import json

    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    qc = config.get("quantization_config") or {}
    weights = [g.get("weights") or {} for g in (qc.get("config_groups") or {}).values()]
    problems = []
    if qc.get("quant_method") != "compressed-tensors":
        problems.append(f"quant_method is {qc.get('quant_method')!r}, not 'compressed-tensors'")
    if qc.get("format") != "pack-quantized":
        problems.append(f"format is {qc.get('format')!r}, not 'pack-quantized'")
    if not weights or any(w.get("num_bits") != 4 or w.get("group_size") != GROUP_SIZE for w in weights):
        problems.append(f"weights are not 4-bit with group size {GROUP_SIZE}: {weights}")
    if problems:
        raise VerificationError(out_dir / "config.json", "gptq-config", "; ".join(problems))
    return qc


def run(cfg: GptqConfig, *, model_dir: Path, out_dir: Path) -> GptqResult:
    """Quantize a merged HF checkpoint to GPTQ W4A16 (compressed-tensors) and save it with its tokenizer.

    Args:
        cfg: calibration source and GPTQ parameters.
        model_dir: the merged 16-bit checkpoint.
        out_dir: the directory to write (replaced atomically).

    Returns:
        The output directory, time taken, calibration source and the written quantization_config.

    Raises:
        ToolMissingError: llm-compressor is not installed.
        CalibrationDataError: the calibration file cannot be used.
        QuantizationError: llm-compressor failed on this model.
        VerificationError: the saved config is not what vLLM expects.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Calibration problems surface before llm-compressor's slow import and the quantization itself.
    data, source = _dataset(cfg, tokenizer)
    _require()
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    # bf16 halves memory and time against fp32 on CPU (FIELD-NOTES: 0.5 B took 376 s and 3.4 GB in fp32).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    recipe = GPTQModifier(targets="Linear", scheme=SCHEME, ignore=["lm_head"], dampening_frac=cfg.dampening_frac)
    with atomic_path(out_dir) as tmp:
        try:
            oneshot(
                model=model,
                dataset=data,
                recipe=recipe,
                max_seq_length=cfg.max_seq_length,
                num_calibration_samples=len(data),
                shuffle_calibration_samples=False,
                log_dir=None,
                pipeline="basic",
            )
        except (RuntimeError, ValueError) as e:
            raise QuantizationError(
                "GPTQ (llm-compressor)", str(e).splitlines()[0] if str(e) else type(e).__name__
            ) from e
        model.save_pretrained(tmp, save_compressed=True)
        tokenizer.save_pretrained(tmp)
        for extra in ("generation_config.json",):
            if (model_dir / extra).is_file() and not (tmp / extra).is_file():
                (tmp / extra).write_bytes((model_dir / extra).read_bytes())
        qc = check_config(tmp)
    log.info("GPTQ W4A16 written to %s (calibration: %s, %d samples)", out_dir, source, len(data))
    return GptqResult(out_dir, time.perf_counter() - started, source, len(data), qc)


def verify(out_dir: Path, prompts: list[str]) -> dict[str, Any]:
    """Reload the checkpoint with transformers + compressed-tensors and generate from each prompt.

    Returns:
        Checks for the manifest: loads, generates, and the prompt count.

    Raises:
        VerificationError: it does not load, or generates nothing.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
    except (OSError, RuntimeError, ValueError) as e:
        raise VerificationError(out_dir, "reload", f"transformers could not load it ({e})") from e
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            if out.shape[1] <= ids["input_ids"].shape[1]:
                raise VerificationError(out_dir, "generate", f"no tokens generated for {prompt!r}")
    return {"reloads": True, "generates": len(prompts), "config": "compressed-tensors pack-quantized W4A16"}
