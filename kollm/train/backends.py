"""Training backends: Unsloth (FastLanguageModel, CUDA only) and hf (transformers + peft).

Both return a peft model whose ``save_pretrained`` writes the same adapter format, and both train with trl's
trainers, so a spec runs unchanged on either. Earlier stages' adapters are merged into the base in memory first.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from kollm.errors import BackendUnavailableError
from kollm.train.spec import TrainSpec

log = logging.getLogger(__name__)


def choose_backend(requested: str) -> str:
    """Resolve ``auto`` and check that the requested backend can run here.

    Args:
        requested: "auto", "hf" or "unsloth".

    Returns:
        "hf" or "unsloth".

    Raises:
        BackendUnavailableError: Unsloth was asked for without a CUDA GPU or without the package.
    """
    import torch

    cuda = torch.cuda.is_available()
    # `import unsloth` raises NotImplementedError (not ImportError) without an accelerator: look before importing.
    installed = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        return "unsloth" if cuda and installed else "hf"
    if requested == "unsloth" and not cuda:
        raise BackendUnavailableError(
            "unsloth", "it needs a CUDA GPU and none is visible", hint="Use `backend: hf` (or auto) on this machine."
        )
    if requested == "unsloth" and not installed:
        raise BackendUnavailableError(
            "unsloth", "the unsloth package is not installed", hint="pip install 'kollm[gpu]' on the GPU host."
        )
    return requested


def _lora_kwargs(spec: TrainSpec) -> dict[str, Any]:
    lora = spec.lora
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(lora.targets),
        "use_rslora": lora.use_rslora,
        "modules_to_save": list(lora.modules_to_save) or None,
    }


def load_for_training(spec: TrainSpec, backend: str, *, base_dir: Path, parents: list[Path]) -> tuple[Any, Any]:
    """Load base + merged parent adapters, attach a fresh LoRA, and return (peft model, tokenizer).

    Args:
        spec: the stage spec (LoRA settings, seed, max length, 4-bit).
        backend: "hf" or "unsloth" (from ``choose_backend``).
        base_dir: local base model directory.
        parents: earlier stages' adapter dirs, merged in this order before the new LoRA is attached.
    """
    import torch

    torch.manual_seed(spec.training.seed)
    if backend == "unsloth":
        return _load_unsloth(spec, base_dir, parents)
    return _load_hf(spec, base_dir, parents)


def _merge_parents(model: Any, parents: list[Path]) -> Any:
    from peft import PeftModel

    for parent in parents:
        log.info("merging earlier stage %s into the base", parent)
        model = PeftModel.from_pretrained(model, str(parent)).merge_and_unload()
    return model


def _load_hf(spec: TrainSpec, base_dir: Path, parents: list[Path]) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.lora.load_in_4bit:
        if not cuda:
            raise BackendUnavailableError(
                "hf", "load_in_4bit (QLoRA) needs a CUDA GPU here", hint="Set lora.load_in_4bit: false on CPU."
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    # CPU trains in float32 (bf16 matmuls are slow and lossy there); GPUs in bf16.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16 if cuda else torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=spec.trust_remote_code)
    model = _merge_parents(model, parents)
    if spec.lora.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    # Tied embeddings trained via modules_to_save must stay tied in the saved adapter (peft#2777).
    config = LoraConfig(
        task_type="CAUSAL_LM", ensure_weight_tying=bool(spec.lora.modules_to_save), **_lora_kwargs(spec)
    )
    return get_peft_model(model, config), tokenizer


def _load_unsloth(spec: TrainSpec, base_dir: Path, parents: list[Path]) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(base_dir),
        max_seq_length=spec.training.max_length,
        dtype=None,  # Unsloth picks bf16 where the GPU supports it
        load_in_4bit=spec.lora.load_in_4bit,
        trust_remote_code=spec.trust_remote_code,
    )
    model = _merge_parents(model, parents)
    model = FastLanguageModel.get_peft_model(
        model,
        use_gradient_checkpointing="unsloth" if spec.training.gradient_checkpointing else False,
        random_state=spec.training.seed,
        max_seq_length=spec.training.max_length,
        **_lora_kwargs(spec),
    )
    return model, tokenizer
