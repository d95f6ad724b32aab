"""Publish to the Hugging Face Hub: one commit and one tag per repo per release, verified after upload.

Order of calls (each safe to repeat): read the refs (``create_repo`` only when the repo is missing) → if the
tag exists, verify it and stop (a finished release re-run is a no-op; different content is refused) → if the
branch head already holds exactly these files (a run that died between commit and tag), reuse it, else ONE
``create_commit`` with every file and ``parent_commit=head`` (uploaded LFS/xet objects are skipped on a
re-run, so an interrupted upload resumes) → ``create_tag`` → ``get_paths_info(revision=tag)`` against the
manifest (LFS sha256 + size for weights, git blob ids for small files).

The token comes from HF_TOKEN or ``hf auth login`` through huggingface_hub itself; kollm never reads,
prints or writes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kollm.errors import PublishError, TagConflictError, VerificationError
from kollm.manifest import sha256_file
from kollm.publish.local import PublishedRepo
from kollm.publish.plan import RepoPlan


def commit_operations(plan: RepoPlan, *, stale: list[str] | None = None) -> list[Any]:
    """The operations of one repo's release commit: add every file (path order), delete ``stale`` ones.

    Args:
        plan: the repo's files.
        stale: files on the branch that this release no longer has (e.g. a dropped quant type), so the tagged
            commit holds exactly the release.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    adds = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=source if isinstance(source, bytes) else str(source))
        for name, source in plan.contents().items()
    ]
    return adds + [CommitOperationDelete(path_in_repo=name) for name in sorted(stale or [])]


def make_api(endpoint: str | None = None) -> Any:
    """An ``HfApi`` client; huggingface_hub finds the token (HF_TOKEN or the login cache) by itself."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def require_token() -> None:
    """Fail before any upload when no token is configured (the token itself is never looked at here).

    Raises:
        PublishError: neither HF_TOKEN nor a saved login exists.
    """
    from huggingface_hub import get_token

    if not get_token():
        raise PublishError(
            "the Hugging Face Hub",
            "no token is configured.",
            hint="Set HF_TOKEN in the environment or run `hf auth login`, then re-run; "
            "`kollm publish --dry-run` shows the plan without a token.",
        )


def publish_repo(api: Any, plan: RepoPlan, *, version: str, private: bool) -> PublishedRepo:
    """Create (if needed), commit, tag and verify one repo of a release.

    Args:
        api: an ``HfApi`` client.
        plan: the repo's files.
        version: the release tag.
        private: create the repo private (an existing repo keeps its visibility).

    Returns:
        The published repo, with status "published" or "unchanged" (tag already there, content identical).

    Raises:
        TagConflictError: the tag exists with different content.
        VerificationError: the uploaded files differ from the manifest.
        PublishError: the Hub refused a call (permissions, network, a concurrent push to the branch).
    """
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    repo = plan.repo_id
    try:
        try:
            refs = api.list_repo_refs(repo, repo_type="model")
        except RepositoryNotFoundError:
            # Only a missing repo is created: a re-run of a finished release makes no write call at all.
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            refs = api.list_repo_refs(repo, repo_type="model")
        if any(tag.name == version for tag in refs.tags):
            problems = verify_remote(api, plan, revision=version)
            if problems:
                raise TagConflictError(repo, version, "; ".join(problems))
            return PublishedRepo(repo, f"hf://{repo}", version, "unchanged")
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        if head is not None and not verify_remote(api, plan, revision=head):
            commit = head
        else:
            keep = {*plan.contents(), ".gitattributes"}
            stale = api.list_repo_files(repo, revision=head) if head is not None else []
            info = api.create_commit(
                repo,
                commit_operations(plan, stale=[f for f in stale if f not in keep]),
                commit_message=f"Release {version}",
                commit_description="Published by kollm: one commit per release, tagged, verified after upload.",
                parent_commit=head,
                repo_type="model",
            )
            commit = info.oid
        api.create_tag(repo, tag=version, revision=commit, tag_message=f"kollm release {version}", repo_type="model")
        problems = verify_remote(api, plan, revision=version)
    except HfHubHTTPError as e:
        raise PublishError(
            f"hf://{repo}",
            f"{type(e).__name__}: {str(e).splitlines()[0]}",
            hint="Check the repo name and that your token can write to it; re-running resumes the upload.",
        ) from e
    if problems:
        raise VerificationError(f"hf://{repo}@{version}", "hub-verify", "; ".join(problems))
    return PublishedRepo(repo, f"hf://{repo}", version, "published")


def verify_remote(api: Any, plan: RepoPlan, *, revision: str) -> list[str]:
    """Compare the repo at ``revision`` with the plan: LFS sha256 + size, or the git blob id of small files.

    Returns:
        One problem per differing or missing file; empty when the revision holds exactly the planned bytes.
    """
    contents = plan.contents()
    infos = {info.path: info for info in api.get_paths_info(plan.repo_id, list(contents), revision=revision)}
    expected = {r.path: (r.sha256, r.size) for r in plan.records}
    problems = []
    for name, source in contents.items():
        info = infos.get(name)
        if info is None:
            problems.append(f"{name}: missing")
            continue
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            sha, size = expected.get(name) or _sha256_and_size(source)
            if lfs.sha256 != sha or lfs.size != size:
                problems.append(f"{name}: LFS sha256/size differ from the manifest")
        elif info.blob_id != _git_blob_id(source):
            problems.append(f"{name}: content differs")
    return problems


def _sha256_and_size(source: Path | bytes) -> tuple[str, int]:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest(), len(source)
    return sha256_file(source), source.stat().st_size


def _git_blob_id(source: Path | bytes) -> str:
    data = source if isinstance(source, bytes) else source.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
