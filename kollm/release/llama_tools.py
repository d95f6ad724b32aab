"""llama.cpp's ``llama-imatrix`` and ``llama-quantize``, from the same llama.cpp revision as the runtime.

llama-cpp-python ships shared libraries only, no tools, and its Python API cannot collect the activation
statistics an importance matrix needs. kollm therefore builds the two tools once, from the sdist of the
installed llama-cpp-python (the revision whose converter and runtime kollm already uses), and links them
against that install's own libllama/libggml, copied beside the binaries: only llama.cpp's ``common`` library
and the two tools are compiled, not ggml and libllama again. The result is cached in
``~/.cache/kollm/llama.cpp/llama-cpp-python-<version>-tools/`` (``bin/`` and ``lib/``), built in a temporary
directory and renamed into place. ``make setup`` builds it through ``kollm doctor --prepare``; otherwise the first
imatrix request does. A llama.cpp build of the user's own (``--llama-cpp-dir`` / ``KOLLM_LLAMA_CPP_DIR``) that
holds both binaries is used as it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources, util
from pathlib import Path
from typing import TextIO

from kollm.errors import LlamaToolsError
from kollm.manifest import atomic_path
from kollm.release.converter import cache_root, download_sdist, extract_vendored, llama_cpp_python_version

TOOLS = ("llama-imatrix", "llama-quantize")
# What the build needs from vendor/llama.cpp: llama.cpp's common library and its vendored dependencies, the two
# tools, public headers, and CMake helpers. ggml/src and src/ are not compiled (the installed libraries are used).
_SOURCES = (
    "LICENSE",
    "cmake/",
    "common/",
    "include/",
    "src/llama-ext.h",  # a staging header of libllama's exported API that common/ includes
    "ggml/include/",
    "ggml/cmake/",
    "vendor/nlohmann/",
    "vendor/sheredom/",
    "vendor/cpp-httplib/",
    "tools/imatrix/",
    "tools/quantize/",
)
# Where a user's llama.cpp keeps its binaries: a build directory itself, or a checkout built into build/.
_USER_BIN_DIRS = (".", "bin", "build/bin", "build/bin/Release")
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LlamaTools:
    """Paths of llama-imatrix and llama-quantize and where they came from."""

    imatrix: Path
    quantize: Path
    origin: str  # "llama-cpp-python <version> sdist (built by kollm)" or "build <path>"


def _user_dir(llama_cpp_dir: Path | None) -> Path | None:
    if llama_cpp_dir is not None:
        return llama_cpp_dir
    env = os.environ.get("KOLLM_LLAMA_CPP_DIR")
    return Path(env) if env else None


def tools_dir() -> Path:
    """The cache directory of the tools built for the installed llama-cpp-python."""
    return cache_root() / f"llama-cpp-python-{llama_cpp_python_version()}-tools"


def _sdist_origin() -> str:
    return f"llama-cpp-python {llama_cpp_python_version()} sdist (built by kollm)"


def expected_origin(llama_cpp_dir: Path | None = None) -> str:
    """Where the tools will come from, without building anything (release steps fingerprint it)."""
    user = _user_dir(llama_cpp_dir)
    return f"build {user.resolve()}" if user is not None else _sdist_origin()


def _in_user_dir(root: Path) -> LlamaTools:
    for sub in _USER_BIN_DIRS:
        found = [root / sub / name for name in TOOLS]
        if all(p.is_file() and os.access(p, os.X_OK) for p in found):
            return LlamaTools(found[0], found[1], f"build {(root / sub).resolve()}")
    looked = ", ".join(str(root / sub) for sub in _USER_BIN_DIRS)
    raise LlamaToolsError(
        f"{root} (--llama-cpp-dir / KOLLM_LLAMA_CPP_DIR) holds no llama-imatrix and llama-quantize binaries "
        f"(looked in {looked}).",
        hint=f"Build them there: `cmake -S {root} -B {root}/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_OPENSSL=OFF && "
        f"cmake --build {root}/build -j --target llama-imatrix llama-quantize`, or unset KOLLM_LLAMA_CPP_DIR so "
        "kollm builds them from the installed llama-cpp-python's sources.",
    )


def cached_tools() -> LlamaTools | None:
    """The tools already built in kollm's cache for the installed llama-cpp-python, if any."""
    root = tools_dir()
    if not (root / "COMPLETE").is_file():
        return None
    return LlamaTools(root / "bin" / TOOLS[0], root / "bin" / TOOLS[1], _sdist_origin())


def find_tools(llama_cpp_dir: Path | None = None) -> LlamaTools | None:
    """The tools to use without building: a user's llama.cpp build, else kollm's cache; None when not built yet.

    Raises:
        LlamaToolsError: a user directory was named but holds no binaries.
    """
    user = _user_dir(llama_cpp_dir)
    if user is not None:
        return _in_user_dir(user)
    return cached_tools()


def ensure_tools(
    llama_cpp_dir: Path | None = None,
    *,
    on_build: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> LlamaTools:
    """Return usable llama-imatrix and llama-quantize, building them into kollm's cache if needed.

    Args:
        llama_cpp_dir: a llama.cpp build (or checkout with ``build/bin``) to use instead; also read from
            ``KOLLM_LLAMA_CPP_DIR``.
        on_build: told once, with a one-line message, when a build starts (it takes minutes).
        progress: called with (compiled, total) build steps.

    Returns:
        The two binaries and their origin.

    Raises:
        LlamaToolsError: no compiler or CMake here, the build failed, or a named directory has no binaries.
        ToolMissingError: llama-cpp-python is not installed, or its sdist cannot be fetched.
    """
    found = find_tools(llama_cpp_dir)
    if found is not None:
        return found
    root = tools_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root.parent / f".{root.name}.lock"):
        found = cached_tools()  # another process may have finished the build while this one waited
        if found is not None:
            return found
        build(root, on_build=on_build, progress=progress)
    found = cached_tools()
    assert found is not None
    return found


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    # Two releases starting at once must not both spend minutes compiling the same thing.
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _program(name: str) -> str | None:
    # pip's cmake/ninja packages install next to this interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def build_programs() -> dict[str, str]:
    """cmake, ninja and a C++ compiler for the build.

    Raises:
        LlamaToolsError: one of them is missing.
    """
    found = {"cmake": _program("cmake"), "ninja": _program("ninja")}
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    found["c++"] = shutil.which(cxx) if cxx else None
    missing = [name for name, path in found.items() if not path]
    if missing:
        raise LlamaToolsError(
            f"llama-imatrix and llama-quantize (needed for an importance matrix) are not built yet and cannot be "
            f"built here: {', '.join(missing)} not found.",
            hint="Install them (`pip install cmake ninja`; a C++ compiler from the system, e.g. "
            "`apt-get install g++`) and run `kollm doctor --prepare`, or point --llama-cpp-dir / "
            "KOLLM_LLAMA_CPP_DIR at a llama.cpp build with both binaries, or set exports.gguf_imatrix: false.",
        )
    return {k: v for k, v in found.items() if v}


def installed_lib_dir() -> Path:
    """The directory of the installed llama-cpp-python's libllama and libggml*."""
    spec = util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise LlamaToolsError("llama-cpp-python is not installed.", hint="pip install 'kollm[release]'")
    lib = Path(spec.origin).parent / "lib"
    if not any(lib.glob("libllama.*")):
        raise LlamaToolsError(
            f"{lib} holds no libllama: this llama-cpp-python install has an unexpected layout.",
            hint="Reinstall llama-cpp-python, or point --llama-cpp-dir at a llama.cpp build with llama-imatrix "
            "and llama-quantize.",
        )
    return lib


def build(
    target: Path,
    *,
    on_build: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    jobs: int | None = None,
) -> float:
    """Build the tools into ``target`` (``bin/``, ``lib/``, ``build.json``), through a temp dir and rename.

    Args:
        target: the cache directory (see ``tools_dir``).
        on_build: told once when the build starts.
        progress: called with (compiled, total) build steps.
        jobs: parallel compile jobs (default: CPU cores).

    Returns:
        Seconds the build took.

    Raises:
        LlamaToolsError: missing programs, or the compile or link failed (the log is kept in the cache).
        ToolMissingError: the sdist cannot be fetched.
    """
    programs = build_programs()
    lib = installed_lib_dir()
    version = llama_cpp_python_version()
    if on_build:
        on_build(f"building llama-imatrix and llama-quantize from llama-cpp-python {version}'s sources (once)")
    started = time.perf_counter()
    log_path = target.parent / f"{target.name}-build.log"
    with tempfile.TemporaryDirectory(prefix="kollm-llama-tools-") as tmp, atomic_path(target) as out:
        src = Path(tmp) / "src"
        extract_vendored(download_sdist(version, Path(tmp), purpose="llama-imatrix"), src, _SOURCES)
        wrapper = resources.files("kollm.release").joinpath("llama_tools.cmake").read_text(encoding="utf-8")
        (src / "CMakeLists.txt").write_text(wrapper, encoding="utf-8")
        shutil.copytree(lib, out / "lib", symlinks=True)
        configure = [
            programs["cmake"],
            "-S",
            str(src),
            "-B",
            str(Path(tmp) / "build"),
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={programs['ninja']}",
            f"-DCMAKE_CXX_COMPILER={programs['c++']}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DLLAMA_LIB={out / 'lib'}",
            f"-DKOLLM_LLAMA_ORIGIN=llama-cpp-python-{version}",
        ]
        compile_ = [programs["cmake"], "--build", str(Path(tmp) / "build"), "-j", str(jobs or os.cpu_count() or 1)]
        with log_path.open("w", encoding="utf-8") as log:
            _run(configure, log, log_path, None)
            _run([*compile_, "--target", *TOOLS], log, log_path, progress)
        (out / "bin").mkdir()
        for name in TOOLS:
            shutil.copy2(Path(tmp) / "build" / "bin" / name, out / "bin" / name)
        for name in TOOLS:
            _smoke_test(out / "bin" / name, log_path)
        seconds = time.perf_counter() - started
        info = {"llama_cpp_python": version, "linked_against": str(lib), "seconds": round(seconds, 1)}
        (out / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (out / "COMPLETE").write_text(version, encoding="utf-8")
    return seconds


def _run(cmd: list[str], log: TextIO, log_path: Path, progress: Progress | None) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        log.write(line)
        tail = [*tail[-11:], line.rstrip()]
        step = _NINJA_STEP.match(line)
        if step and progress:
            progress(int(step.group(1)), int(step.group(2)))
    if proc.wait() != 0:
        raise LlamaToolsError(
            f"building llama-imatrix/llama-quantize failed ({Path(cmd[0]).name} exited {proc.returncode}): "
            + " | ".join(t for t in tail if t)[-600:],
            hint=f"The full log is {log_path}. Fix the toolchain and run `kollm doctor --prepare`, or point "
            "--llama-cpp-dir / KOLLM_LLAMA_CPP_DIR at a llama.cpp build with both binaries.",
        )


def _smoke_test(binary: Path, log_path: Path) -> None:
    # A binary that cannot find or bind its libraries fails here, not in the middle of a release.
    done = subprocess.run([str(binary), "--help"], capture_output=True, text=True)
    if "usage" not in (done.stdout + done.stderr).lower():
        raise LlamaToolsError(
            f"{binary.name} was built but does not run: {(done.stderr or done.stdout).strip()[-300:]}",
            hint=f"See {log_path}; reinstall llama-cpp-python and run `kollm doctor --prepare` again.",
        )
