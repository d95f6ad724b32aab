"""Checks every GGUF against the merged HF model it came from.

- loads in llama.cpp (``llama_cpp.Llama``);
- metadata: EOS id, BOS handling and chat template equal the HF tokenizer's;
- tokenization parity: llama.cpp and HF produce identical ids on Korean strings that tell pre-tokenizer
  families apart (a wrong pre-tokenizer name fails here, not in users' hands);
- chat: ``create_chat_completion`` renders the embedded template to the same prompt ids as HF;
- logits: next-token logits of the float reference match HF within a stated tolerance; quantized files
  report their max difference and top-1 agreement.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kollm.errors import VerificationError
from kollm.llamacpp import open_llama
from kollm.models import PARITY_TEXTS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

_CHAT_PROBE = [
    {"role": "system", "content": "당신은 친절한 한국어 비서입니다."},
    {"role": "user", "content": "서울에서 부산까지 KTX로 몇 시간 걸려요?"},
]


@dataclass
class Reference:
    """What the merged HF model says, computed once and compared against every GGUF."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    logits: list[np.ndarray]  # next-token logits after each prompt, float32
    parity_ids: dict[str, list[int]]
    chat_ids: list[int]
    chat_template: str | None
    eos_id: int | None
    bos_id: int | None
    add_bos: bool


@dataclass
class GgufCheck:
    """The outcome of checking one GGUF file."""

    path: Path
    max_logit_diff: float
    top1_agreement: float
    checks: dict[str, Any] = field(default_factory=dict)


def hf_reference(model_dir: Path, prompts: list[str], *, model: PreTrainedModel | None = None) -> Reference:
    """Run the merged HF model (in float32) on the prompts and tokenize the parity strings.

    Args:
        model_dir: the merged checkpoint; or, with ``model``, its config and tokenizer files only.
        prompts: texts whose next-token logits are recorded.
        model: the merged model already in memory (the fused path, ``merged_model.load_merged``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    prompt_ids, logits = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            out = model(torch.tensor([ids])).logits[0, -1].float().numpy()
            prompt_ids.append(ids)
            logits.append(out)
    chat_ids = (
        list(tokenizer.apply_chat_template(_CHAT_PROBE, add_generation_prompt=True, tokenize=True, return_dict=False))
        if tokenizer.chat_template
        else []
    )
    return Reference(
        prompts=prompts,
        prompt_ids=prompt_ids,
        logits=logits,
        parity_ids={text: tokenizer(text)["input_ids"] for text in PARITY_TEXTS},
        chat_ids=chat_ids,
        chat_template=tokenizer.chat_template,
        eos_id=tokenizer.eos_token_id,
        bos_id=tokenizer.bos_token_id,
        add_bos=bool(getattr(tokenizer, "add_bos_token", False)),
    )


def _metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    wanted = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")
    return {key: reader.fields[key].contents() for key in wanted if key in reader.fields}


def check_gguf(path: Path, ref: Reference, *, atol: float | None) -> GgufCheck:
    """Check one GGUF; ``atol`` set means logits must match within it (float files), None means report only.

    Raises:
        VerificationError: naming the first check that failed.
    """
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    meta = _metadata(path)
    if ref.eos_id is not None and meta.get("tokenizer.ggml.eos_token_id") != ref.eos_id:
        raise VerificationError(
            path, "eos", f"GGUF EOS id {meta.get('tokenizer.ggml.eos_token_id')} != HF EOS id {ref.eos_id}"
        )
    if bool(meta.get("tokenizer.ggml.add_bos_token", False)) != ref.add_bos:
        raise VerificationError(path, "bos", f"add_bos_token is {meta.get('tokenizer.ggml.add_bos_token')} in GGUF")
    if ref.chat_template and meta.get("tokenizer.chat_template") != ref.chat_template:
        raise VerificationError(path, "chat-template", "the embedded chat template differs from the tokenizer's")

    try:
        llm = open_llama(path, n_ctx=512, n_threads=2, logits_all=True)
    except Exception as e:  # llama.cpp raises ValueError/RuntimeError with little detail
        raise VerificationError(path, "load", f"llama.cpp could not load it ({e})") from e
    try:
        for text, expected in ref.parity_ids.items():
            got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            if got != expected:
                raise VerificationError(
                    path,
                    "tokenization-parity",
                    f"{text!r}: llama.cpp ids {got[:12]}… != HF ids {expected[:12]}…",
                )
        if ref.chat_ids:
            response = llm.create_chat_completion(messages=_CHAT_PROBE, max_tokens=1, temperature=0.0)
            used = response["usage"]["prompt_tokens"]
            if llm.chat_format != "chat_template.default" or used != len(ref.chat_ids):
                raise VerificationError(
                    path,
                    "chat-template",
                    f"create_chat_completion used format {llm.chat_format!r} with {used} prompt tokens; "
                    f"HF's template gives {len(ref.chat_ids)}",
                )
        diffs, agree = [], 0
        for ids, expected in zip(ref.prompt_ids, ref.logits, strict=True):
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)[: expected.shape[0]]
            diffs.append(float(np.max(np.abs(got - expected))))
            agree += int(np.argmax(got) == np.argmax(expected))
    finally:
        llm.close()
    result = GgufCheck(path, max(diffs), agree / len(diffs))
    result.checks = {
        "loads": True,
        "eos_id": ref.eos_id,
        "tokenization_parity": len(ref.parity_ids),
        "chat_template": bool(ref.chat_ids),
        "max_logit_diff": round(result.max_logit_diff, 5),
        "top1_agreement": result.top1_agreement,
    }
    if atol is not None:
        result.checks["logits_atol"] = atol
        if result.max_logit_diff > atol or result.top1_agreement < 1.0:
            raise VerificationError(
                path,
                "logits",
                f"max |logit diff| {result.max_logit_diff:.4f} vs HF (allowed {atol}), "
                f"top-1 agreement {result.top1_agreement:.0%}",
            )
    return result


def save_reference(ref: Reference, path: Path) -> None:
    """Store a reference as a NumPy archive (no pickle) so verification steps can run in later processes."""
    meta = {
        "prompts": ref.prompts,
        "prompt_ids": ref.prompt_ids,
        "parity_ids": ref.parity_ids,
        "chat_ids": ref.chat_ids,
        "chat_template": ref.chat_template,
        "eos_id": ref.eos_id,
        "bos_id": ref.bos_id,
        "add_bos": ref.add_bos,
    }
    with path.open("wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta, ensure_ascii=False)), logits=np.stack(ref.logits))


def load_reference(path: Path) -> Reference:
    """Read a reference written by ``save_reference``."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        logits = [row.astype(np.float32) for row in data["logits"]]
    return Reference(logits=logits, **meta)
