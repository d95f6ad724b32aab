"""bitsandbytes 4-bit export: NF4 with double quantization, saved so transformers reloads it as is.

transformers applies bitsandbytes at load time and serializes the packed 4-bit weights plus their
quantization state; a reload must give exactly the same logits, which ``run`` checks before keeping the
output. vLLM serves such a checkpoint with the bitsandbytes load format. bitsandbytes' CPU path needs
matrix widths divisible by 64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import QuantizationError, ToolMissingError, VerificationError
from kollm.manifest import atomic_path


class BnbConfig(BaseModel):
    """How to quantize."""

    model_config = ConfigDict(extra="forbid")

    quant_type: str = Field("nf4", pattern="^(nf4|fp4)$", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (~0.4 bit/param saved).")
    compute_dtype: str = Field("bfloat16", pattern="^(bfloat16|float16|float32)$", description="Matmul dtype.")


@dataclass
class BnbResult:
    """The written checkpoint and what was checked."""

    out_dir: Path
    seconds: float
    quantization_config: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)


def _quantization_config(cfg: BnbConfig) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
    )


def _logits(model: Any, ids: list[list[int]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0].float() for row in ids]


def run(cfg: BnbConfig, *, model_dir: Path, out_dir: Path, probe_texts: list[str]) -> BnbResult:
    """Quantize a merged checkpoint to bitsandbytes 4-bit, save it, reload it and compare logits.

    Args:
        cfg: data type, double quantization, compute dtype.
        model_dir: the merged 16-bit checkpoint.
        out_dir: the directory to write (replaced atomically).
        probe_texts: texts whose logits must be identical before saving and after reloading.

    Returns:
        The output directory, the time taken, the saved quantization_config and the reload check.

    Raises:
        ToolMissingError: bitsandbytes is not installed.
        QuantizationError: bitsandbytes failed on this model (e.g. a width not divisible by 64 on CPU).
        VerificationError: the reloaded model's logits differ from the quantized model's.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ToolMissingError("bitsandbytes", install="pip install 'kollm[quant]'") from e
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer(text)["input_ids"] for text in probe_texts]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, quantization_config=_quantization_config(cfg), device_map="cpu"
        )
        before = _logits(model, ids)
    except (RuntimeError, ValueError) as e:
        raise QuantizationError(
            "bitsandbytes 4-bit",
            str(e).splitlines()[0] if str(e) else type(e).__name__,
            hint="On CPU every linear layer's width must be divisible by 64.",
        ) from e
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (model_dir / "generation_config.json").is_file() and not (tmp / "generation_config.json").is_file():
            (tmp / "generation_config.json").write_bytes((model_dir / "generation_config.json").read_bytes())
        del model
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, device_map="cpu")
        after = _logits(reloaded, ids)
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))
        if diff != 0.0:
            raise VerificationError(out_dir, "reload-logits", f"logits changed by up to {diff} after save + reload")
        qc = json.loads((tmp / "config.json").read_text(encoding="utf-8")).get("quantization_config") or {}
        if not qc.get("load_in_4bit") or qc.get("bnb_4bit_quant_type") != cfg.quant_type:
            raise VerificationError(out_dir, "bnb-config", f"config.json quantization_config is {qc}")
    checks = {"reloads": True, "reload_logits_identical": True, "probe_texts": len(probe_texts)}
    return BnbResult(out_dir, time.perf_counter() - started, qc, checks)
