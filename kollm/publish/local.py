"""A directory registry with the Hub's repo layout, used by the demo, tests and air-gapped sites.

Layout of ``local:<root>``::

    <root>/<repo>/                 the branch head ("main"): files, README.md, kollm-manifest.json …
    <root>/<repo>/.tags/<version>/ an immutable snapshot per release tag (hard links: no extra space)

A repo is assembled in a temporary directory, verified against the plan's sha256 records, and renamed into
place, so readers never see half a release. An existing tag is never rewritten: re-publishing the same
content is a no-op, different content under the same version is refused.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kollm.errors import TagConflictError, VerificationError
from kollm.manifest import atomic_path, verify_files
from kollm.publish.plan import RepoPlan

TAGS_DIR = ".tags"


@dataclass(frozen=True)
class PublishedRepo:
    """A repo as it now exists at its target."""

    repo: str
    location: str
    revision: str
    status: str  # "published" or "unchanged"


def repo_dir(root: Path, repo: str, revision: str | None = None) -> Path:
    """The directory holding ``repo`` at ``revision`` (None or "main": the branch head; else a tag)."""
    base = root / repo
    return base if revision in (None, "main") else base / TAGS_DIR / revision


def publish_repo(root: Path, plan: RepoPlan, *, version: str) -> PublishedRepo:
    """Write one repo of a release into the registry and tag it ``version``.

    Raises:
        TagConflictError: ``version`` is already tagged with different artifacts.
        VerificationError: a file in the registry does not match its sha256 record after the copy.
    """
    final = root / plan.repo_id
    tagged = repo_dir(root, plan.repo_id, version)
    if tagged.is_dir():
        problems = verify_files(tagged, plan.records)
        if problems:
            raise TagConflictError(plan.repo_id, version, "; ".join(problems))
        return PublishedRepo(plan.repo_id, str(final), version, "unchanged")
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        for name, source in plan.contents().items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                _link_or_copy(source, target)
        problems = verify_files(tmp, plan.records)
        if problems:
            raise VerificationError(final, "publish-copy", "; ".join(problems))
        if (final / TAGS_DIR).is_dir():
            shutil.copytree(final / TAGS_DIR, tmp / TAGS_DIR, copy_function=_link_or_copy)
        snapshot = tmp / TAGS_DIR / version
        snapshot.mkdir(parents=True)
        for name in plan.contents():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(tmp / name, snapshot / name)
    problems = verify_files(tagged, plan.records)
    if problems:
        raise VerificationError(tagged, "publish-verify", "; ".join(problems))
    return PublishedRepo(plan.repo_id, str(final), version, "published")


def _link_or_copy(source: Path | str, target: Path | str) -> None:
    # Hard links make publishing multi-GB artifacts free when registry and output share a filesystem.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
