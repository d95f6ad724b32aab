"""A git + git-lfs publisher in olah's mirror layout: ``<root>/models/<org>/<name>``, one commit and one tag
per release.

olah (offline mode) serves these repos through the Hub's read API, so ``kollm pull``, ``huggingface_hub``
and the Hub publisher's verification run against a real HTTP server without the Hub. Weights go through
git-lfs (pointer in git, object under ``.git/lfs/objects``), exactly as on the Hub.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from kollm.errors import PublishError, TagConflictError, ToolMissingError, VerificationError
from kollm.manifest import FileRecord, sha256_file
from kollm.publish.local import PublishedRepo
from kollm.publish.plan import RepoPlan

LFS_PATTERNS = ("*.gguf", "*.imatrix", "*.safetensors", "*.bin")
_POINTER_RE = re.compile(r"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n")
# Fixed identity and no signing: the mirror's history must not depend on the user's git config.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "kollm",
    "GIT_AUTHOR_EMAIL": "kollm@localhost",
    "GIT_COMMITTER_NAME": "kollm",
    "GIT_COMMITTER_EMAIL": "kollm@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def repo_path(root: Path, repo_id: str) -> Path:
    """Where olah expects a model repo: ``<root>/models/<org>/<name>``."""
    return root / "models" / repo_id


def publish_repo(root: Path, plan: RepoPlan, *, version: str) -> PublishedRepo:
    """Commit one repo of a release (one commit) and tag it ``version``; a finished tag is verified, not redone.

    Raises:
        ToolMissingError: git or git-lfs is not installed.
        TagConflictError: ``version`` is already tagged with different artifacts.
        VerificationError: the committed LFS pointers or objects do not match the plan's sha256 records.
    """
    for tool, install in (("git", "apt-get install -y git"), ("git-lfs", "apt-get install -y git-lfs")):
        if shutil.which(tool) is None:
            raise ToolMissingError(tool, install=install)
    path = repo_path(root, plan.repo_id)
    if not (path / ".git").is_dir():
        _init(path)
    if _git(path, "tag", "--list", version).strip():
        problems = verify_revision(path, version, plan.records)
        if problems:
            raise TagConflictError(plan.repo_id, version, "; ".join(problems))
        return PublishedRepo(plan.repo_id, str(path), version, "unchanged")

    keep = {".git", ".gitattributes"}
    for entry in path.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for name, source in plan.contents().items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            target.write_bytes(source)
        else:
            shutil.copyfile(source, target)
    _git(path, "add", "-A")
    # An interrupted run may have committed already: only commit when the tree changed, then tag HEAD.
    if _git(path, "status", "--porcelain").strip():
        _git(path, "commit", "-q", "--no-gpg-sign", "-m", f"Release {version}")
    problems = verify_revision(path, "HEAD", plan.records)
    if problems:
        raise VerificationError(path, "mirror-verify", "; ".join(problems))
    _git(path, "tag", version)
    return PublishedRepo(plan.repo_id, str(path), version, "published")


def verify_revision(path: Path, revision: str, records: list[FileRecord]) -> list[str]:
    """Check every record against ``revision``: the LFS pointer and its object, or the blob of a small file."""
    problems = []
    for rec in records:
        try:
            blob = _git_bytes(path, "show", f"{revision}:{rec.path}")
        except PublishError:
            problems.append(f"{rec.path}: missing at {revision}")
            continue
        match = _POINTER_RE.match(blob.decode("utf-8", errors="replace")) if len(blob) < 1024 else None
        if match is None:
            if hashlib.sha256(blob).hexdigest() != rec.sha256 or len(blob) != rec.size:
                problems.append(f"{rec.path}: content at {revision} differs from the manifest")
            continue
        oid, size = match.group(1), int(match.group(2))
        obj = path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        if oid != rec.sha256 or size != rec.size:
            problems.append(f"{rec.path}: sha256/size at {revision} differ from the manifest")
        elif not obj.is_file() or sha256_file(obj) != oid:
            problems.append(f"{rec.path}: LFS object missing or corrupt")
    return problems


def _init(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "lfs", "install", "--local")
    (path / ".gitattributes").write_text(
        "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS), encoding="utf-8"
    )


def _git(path: Path, *args: str) -> str:
    return _git_bytes(path, *args).decode("utf-8")


def _git_bytes(path: Path, *args: str) -> bytes:
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, env=env)
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", errors="replace").strip()[-500:]
        raise PublishError(f"mirror:{path}", f"git {' '.join(args[:2])}: {stderr}")
    return done.stdout
