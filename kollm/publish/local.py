"""A directory registry with the Hub's repo layout: ``<root>/<repo>/`` per published repo.

Each repo directory carries its files and ``kollm-manifest.json`` (every file's size and sha256, plus the
release's provenance). A repo is assembled in a temporary directory, verified against the manifest, and
renamed into place, so readers never see half a release.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.errors import VerificationError
from kollm.manifest import (
    MANIFEST_NAME,
    FileRecord,
    atomic_path,
    record_files,
    verify_files,
    write_json_atomic,
)


@dataclass(frozen=True)
class RepoFiles:
    """Files to publish as one repo: destination name -> source path."""

    repo: str
    files: dict[str, Path]


@dataclass(frozen=True)
class PublishedRepo:
    """A repo as it now exists in the registry."""

    repo: str
    path: Path
    files: list[FileRecord]


def parse_target(target: str) -> Path:
    """``local:<dir>`` -> the registry directory."""
    return Path(target.removeprefix("local:")).expanduser()


def publish(root: Path, repos: list[RepoFiles], manifest: dict[str, Any]) -> list[PublishedRepo]:
    """Copy each repo's files into ``root/<repo>`` with a manifest, verifying checksums after the copy.

    Raises:
        VerificationError: a copied file does not match its source's checksum.
    """
    published = []
    for spec in repos:
        final = root / spec.repo
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            for name, source in spec.files.items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(source, target)
            files = record_files(tmp, [p for p in tmp.rglob("*") if p.is_file()])
            expected = record_files(Path("/"), [Path(os.path.abspath(p)) for p in spec.files.values()])
            if sorted(f.sha256 for f in files) != sorted(f.sha256 for f in expected):
                raise VerificationError(final, "publish-copy", "a copied file differs from its source")
            write_json_atomic(
                tmp / MANIFEST_NAME, {**manifest, "repo": spec.repo, "files": [f.model_dump() for f in files]}
            )
        problems = verify_files(final, files)
        if problems:
            raise VerificationError(final, "publish-verify", "; ".join(problems))
        published.append(PublishedRepo(spec.repo, final, files))
    return published


def _link_or_copy(source: Path, target: Path) -> None:
    # Hard links make publishing multi-GB artifacts free when registry and output share a filesystem.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
