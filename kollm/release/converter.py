"""Locating llama.cpp's HF → GGUF converter.

kollm never vendors the converter. It uses either a llama.cpp checkout the user names (``--llama-cpp-dir`` or
``KOLLM_LLAMA_CPP_DIR``), or the copy inside the sdist of the installed llama-cpp-python, so the converter and
the runtime that loads its output are the same llama.cpp revision. The sdist is fetched with pip once and the
~2 MB the converter needs are kept in kollm's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kollm.errors import InputNotFoundError, ToolMissingError
from kollm.manifest import atomic_path

_NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
_SDIST_PREFIX = "vendor/llama.cpp/"


@dataclass(frozen=True)
class ConverterSource:
    """A directory holding convert_hf_to_gguf.py, conversion/ and gguf-py/."""

    root: Path
    origin: str  # "llama-cpp-python <version> sdist" or "checkout <path>"

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"


def cache_root() -> Path:
    """kollm's llama.cpp cache: ``$KOLLM_CACHE/llama.cpp`` or ``~/.cache/kollm/llama.cpp``."""
    root = os.environ.get("KOLLM_CACHE") or str(Path.home() / ".cache" / "kollm")
    return Path(root) / "llama.cpp"


def _check_layout(root: Path) -> None:
    for item in ("convert_hf_to_gguf.py", "conversion", "gguf-py"):
        if not (root / item).exists():
            raise InputNotFoundError(
                "llama.cpp converter file",
                root / item,
                hint="Point --llama-cpp-dir / KOLLM_LLAMA_CPP_DIR at a llama.cpp checkout (its top directory).",
            )


def checkout_of(directory: Path) -> Path:
    """The llama.cpp checkout of ``directory``: itself, or the source tree a CMake build directory was made from.

    One ``--llama-cpp-dir`` / ``KOLLM_LLAMA_CPP_DIR`` then serves both the converter (in the checkout) and
    llama-imatrix / llama-quantize (in the build directory).
    """
    cache = directory / "CMakeCache.txt"
    if (directory / "convert_hf_to_gguf.py").exists() or not cache.is_file():
        return directory
    for line in cache.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            return Path(line.split("=", 1)[1].strip())
    return directory


def llama_cpp_python_version() -> str:
    """Version of the installed llama-cpp-python."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as e:
        raise ToolMissingError("llama-cpp-python", install="pip install 'kollm[release]'") from e


def cached_converter() -> ConverterSource | None:
    """The converter already in kollm's cache for the installed llama-cpp-python, if any."""
    version = llama_cpp_python_version()
    root = cache_root() / f"llama-cpp-python-{version}"
    if (root / "COMPLETE").is_file():
        return ConverterSource(root, f"llama-cpp-python {version} sdist")
    return None


def ensure_converter(llama_cpp_dir: Path | None = None) -> ConverterSource:
    """Return a usable converter, fetching the matching llama-cpp-python sdist into the cache if needed.

    Args:
        llama_cpp_dir: a llama.cpp checkout to use instead; also read from ``KOLLM_LLAMA_CPP_DIR``.

    Raises:
        InputNotFoundError: the named checkout lacks the converter.
        ToolMissingError: llama-cpp-python is not installed, or its sdist cannot be fetched.
    """
    chosen = llama_cpp_dir or (
        Path(os.environ["KOLLM_LLAMA_CPP_DIR"]) if os.environ.get("KOLLM_LLAMA_CPP_DIR") else None
    )
    if chosen is not None:
        chosen = checkout_of(chosen)
        _check_layout(chosen)
        return ConverterSource(chosen.resolve(), f"checkout {chosen.resolve()}")
    found = cached_converter()
    if found:
        return found
    version = llama_cpp_python_version()
    root = cache_root() / f"llama-cpp-python-{version}"
    with tempfile.TemporaryDirectory(prefix="kollm-sdist-") as tmp:
        archive = download_sdist(version, Path(tmp), purpose="the llama.cpp converter")
        with atomic_path(root) as out:
            extract_vendored(archive, out, _NEEDED)
            (out / "COMPLETE").write_text(version, encoding="utf-8")
    _check_layout(root)
    return ConverterSource(root, f"llama-cpp-python {version} sdist")


def download_sdist(version: str, directory: Path, *, purpose: str) -> Path:
    """Fetch the llama-cpp-python sdist of ``version`` into ``directory`` with pip; return the archive.

    Raises:
        ToolMissingError: pip could not fetch it (offline, no index).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(directory)]
    done = subprocess.run([*cmd, f"llama-cpp-python=={version}"], capture_output=True, text=True)
    archives = list(directory.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise ToolMissingError(
            f"{purpose} (llama-cpp-python {version} sdist could not be fetched: {done.stderr.strip()[-300:]})",
            install="run `kollm doctor --prepare` where PyPI is reachable, or pass --llama-cpp-dir",
        )
    return archives[0]


def extract_vendored(archive: Path, out: Path, needed: tuple[str, ...]) -> None:
    """Copy the files of the sdist's ``vendor/llama.cpp/`` named by ``needed`` into ``out``.

    Args:
        archive: the sdist (.tar.gz).
        out: destination directory (created).
        needed: paths relative to llama.cpp's top directory; a trailing ``/`` takes a whole directory.
    """
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.split("/", 1)[-1]
            if not inner.startswith(_SDIST_PREFIX) or not member.isfile():
                continue
            rel = inner.removeprefix(_SDIST_PREFIX)
            if any(rel == n or (n.endswith("/") and rel.startswith(n)) for n in needed):
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
