"""Ollama files derived from the tokenizer: stop tokens, the chat template in Go syntax, a Modelfile.

Stop tokens are never typed by hand (wrong EOS gives endless output: unsloth#384, #953): they come from the
tokenizer's EOS and generation_config.json's eos ids at publish time, and from the GGUF's own special-token
ids at pull time. The chat template is converted only for ChatML, the one syntax kollm's families share and
whose Go form is unambiguous; any other Jinja template is left out of the Modelfile so Ollama falls back to
its autodetection from the template embedded in the GGUF, rather than kollm guessing a translation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kollm.models import eos_token_ids

# Ollama's Go-template form of ChatML: system/user/assistant turns, then an open assistant turn.
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def is_chatml(chat_template: str | None) -> bool:
    """True when a Jinja chat template frames turns with ChatML's <|im_start|> role … <|im_end|> markers."""
    return bool(chat_template) and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template


def go_template(chat_template: str | None) -> str | None:
    """Ollama TEMPLATE for a Jinja chat template, or None to leave it to Ollama's GGUF autodetection."""
    return CHATML_GO_TEMPLATE if is_chatml(chat_template) else None


def stop_tokens(token_ids: list[int], id_to_token: dict[int, str], extra: list[str] | None = None) -> list[str]:
    """Token strings for ``token_ids`` (unknown ids skipped), then ``extra``, without duplicates, in order."""
    stops: list[str] = []
    for text in [id_to_token[i] for i in token_ids if i in id_to_token] + list(extra or []):
        if text and text not in stops:
            stops.append(text)
    return stops


def tokenizer_stops(model_dir: Path) -> tuple[list[str], str | None]:
    """Stop strings and chat template of an HF model directory (tokenizer.json + configs).

    Args:
        model_dir: a directory with tokenizer.json and tokenizer_config.json (config/generation_config optional).

    Returns:
        (stop strings: tokenizer EOS plus every generation_config eos id, the Jinja chat template or None).
    """
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    id_to_token = {int(v): k for k, v in ((tokenizer.get("model") or {}).get("vocab") or {}).items()}
    id_to_token.update({int(t["id"]): t["content"] for t in tokenizer.get("added_tokens") or []})
    config_path = model_dir / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    eos = config.get("eos_token")
    eos_text = eos.get("content") if isinstance(eos, dict) else eos
    template = config.get("chat_template")
    template_file = model_dir / "chat_template.jinja"
    if template is None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    return stop_tokens(eos_token_ids(model_dir), id_to_token, [eos_text] if eos_text else []), template


def gguf_stops(path: Path) -> tuple[list[str], str | None]:
    """Stop strings (EOS, EOT, EOM ids) and the chat template embedded in a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents() if "tokenizer.ggml.tokens" in fields else []
    ids = [
        int(fields[key].contents())
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
        if key in fields
    ]
    template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None
    return stop_tokens(ids, dict(enumerate(tokens))), template


def params_json(stops: list[str]) -> str:
    """The ``params`` file Ollama reads from a Hub repo when pulling ``hf.co/org/name-GGUF``."""
    return json.dumps({"stop": stops}, ensure_ascii=False, indent=2) + "\n"


def modelfile(gguf_path: Path, *, stops: list[str], template: str | None) -> str:
    """An Ollama Modelfile for a local GGUF: FROM, TEMPLATE (ChatML only) and one PARAMETER stop per token."""
    lines = [f"FROM ./{gguf_path.name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# No TEMPLATE: Ollama reads the chat template embedded in the GGUF.")
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    return "\n".join(lines) + "\n"
