"""Artifact records, checksums and crash-safe writes.

Every file kollm produces is written under a temporary name in its final directory, fsynced and renamed,
so a crash leaves either the previous state or the finished file, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kollm.faults import kill_point

_CHUNK = 8 * 1024 * 1024
MANIFEST_NAME = "kollm-manifest.json"


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """Return one sha256 over every file under ``root`` (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and directories: the block creates whatever it likes at the yielded path.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)
        kill_point("mid")  # reliability tests: a complete temp that was never renamed
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        _remove(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON through a temporary file and rename."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def remove_stale_temps(directory: Path) -> None:
    """Delete temporaries that a killed run left behind (``.<name>.tmp-<pid>``)."""
    if directory.is_dir():
        for stale in directory.glob(".*.tmp-*"):
            _remove(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tool_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"missing"`` for absent ones), plus kollm's."""
    versions: dict[str, str] = {}
    for name in ("kollm", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


class FileRecord(BaseModel):
    """One file of an artifact."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path relative to the artifact's directory.")
    size: int
    sha256: str


class ArtifactRecord(BaseModel):
    """One produced artifact (a merged checkpoint, a GGUF file, ...) and how it was checked."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Stable artifact name, e.g. 'merged' or 'gguf-q4_k_m'.")
    kind: str = Field(description="Format: safetensors, gguf, gptq, bnb-4bit.")
    path: str = Field(description="Path relative to the release output directory.")
    files: list[FileRecord]
    seconds: float
    checks: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def record_files(root: Path, paths: list[Path], known: dict[str, str] | None = None) -> list[FileRecord]:
    """Describe ``paths`` (files under ``root``) with size and sha256.

    ``known`` maps relative paths to digests already computed while writing them; the rest are read and hashed.
    """
    known = known or {}
    records = []
    for p in sorted(paths):
        rel = p.relative_to(root).as_posix()
        records.append(FileRecord(path=rel, size=p.stat().st_size, sha256=known.get(rel) or sha256_file(p)))
    return records


def verify_files(root: Path, files: list[FileRecord]) -> list[str]:
    """Return one problem per file under ``root`` whose size or sha256 differs from its record."""
    problems = []
    for rec in files:
        path = root / rec.path
        if not path.is_file():
            problems.append(f"{rec.path}: missing")
        elif path.stat().st_size != rec.size:
            problems.append(f"{rec.path}: size {path.stat().st_size} != {rec.size}")
        elif sha256_file(path) != rec.sha256:
            problems.append(f"{rec.path}: sha256 differs")
    return problems
