"""Publish a built release: check gates, re-verify every file, plan the repos, hand them to the target.

One interface for every target (``hf://``, ``local:``, ``mirror:``): each publishes a ``RepoPlan`` as one
commit and one tag and returns a ``PublishedRepo``. Nothing reaches a target unless every gate passed and
every artifact still has the sha256 the manifest recorded (checked right before the upload).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.errors import InputNotFoundError, SpecError, VerificationError
from kollm.manifest import MANIFEST_NAME, FileRecord, verify_files
from kollm.publish.card import ScoreRecord, check_gates
from kollm.publish.local import PublishedRepo
from kollm.publish.plan import PublishConfig, RepoPlan, build_plans, parse_target

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    """What was (or, for a dry run, would be) published."""

    target: str
    plans: list[RepoPlan]
    repos: list[PublishedRepo]
    dry_run: bool


def load_scores(path: Path) -> list[ScoreRecord]:
    """Read gate score records from a JSON or YAML list.

    Raises:
        SpecError: the file is missing or a record is malformed (every problem listed).
    """
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from kollm.config import format_validation_errors

    if not path.is_file():
        raise SpecError(path, ["the scores file does not exist"])
    data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    try:
        return TypeAdapter(list[ScoreRecord]).validate_python(data or [])
    except ValidationError as e:
        raise SpecError(path, format_validation_errors(e)) from e


def run(
    cfg: PublishConfig,
    *,
    out_dir: Path,
    scores: list[ScoreRecord] | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    on_repo: Callable[[PublishedRepo], None] | None = None,
) -> PublishResult:
    """Publish the release in ``out_dir`` (its ``kollm-manifest.json``) to ``cfg.target``.

    Args:
        cfg: target, version, visibility, layout, license.
        out_dir: the release output directory.
        scores: gate score records; the manifest's own ``scores`` are added.
        dry_run: plan and return without touching the network or the target.
        endpoint: Hub endpoint for ``hf://`` (default: huggingface_hub's, i.e. HF_ENDPOINT or huggingface.co).
        on_repo: called after each repo is published (progress).

    Returns:
        The plans and the published repos (empty for a dry run).

    Raises:
        InputNotFoundError: there is no release manifest in ``out_dir``.
        GateFailedError: a gate failed.
        VerificationError: an artifact changed since the release was built.
        TagConflictError, PublishError: the target refused the release.
    """
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InputNotFoundError(
            "release manifest", manifest_path, hint="Build the release first: `kollm release SPEC`."
        )
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    all_scores = [*(scores or []), *[ScoreRecord.model_validate(s) for s in manifest.get("scores") or []]]
    check_gates(all_scores)
    records = [FileRecord.model_validate(f) for a in manifest.get("artifacts", []) for f in a["files"]]
    problems = verify_files(out_dir, records)
    if problems:
        raise VerificationError(manifest_path, "manifest", "; ".join(problems))
    plans = build_plans(cfg, manifest=manifest, out_dir=out_dir, scores=all_scores)
    if dry_run:
        return PublishResult(cfg.target, plans, [], dry_run=True)

    target = parse_target(cfg.target, cfg.name)
    publish_one: Callable[[RepoPlan], PublishedRepo]
    if target.scheme == "hf":
        from kollm.publish import hub

        hub.require_token()
        api = hub.make_api(endpoint)

        def publish_one(plan: RepoPlan) -> PublishedRepo:
            return hub.publish_repo(api, plan, version=cfg.version, private=cfg.private)

    elif target.scheme == "mirror":
        from kollm.publish import gitmirror

        def publish_one(plan: RepoPlan) -> PublishedRepo:
            return gitmirror.publish_repo(target.root, plan, version=cfg.version)  # type: ignore[arg-type]

    else:
        from kollm.publish import local

        def publish_one(plan: RepoPlan) -> PublishedRepo:
            return local.publish_repo(target.root, plan, version=cfg.version)  # type: ignore[arg-type]

    repos = []
    for plan in plans:
        done = publish_one(plan)
        log.info("%s %s@%s → %s", done.status, done.repo, done.revision, done.location)
        repos.append(done)
        if on_repo is not None:
            on_repo(done)
    return PublishResult(cfg.target, plans, repos, dry_run=False)
