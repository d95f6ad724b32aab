"""Plan a publish: which repos, which files in each, and the generated files (card, manifest, Ollama params).

The plan is pure data built from the release manifest, so ``--dry-run`` can print it and every publisher
(Hub, local directory, git mirror) uploads exactly the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kollm.errors import PublishError
from kollm.manifest import FileRecord
from kollm.publish import ollama
from kollm.publish.card import CardInputs, ScoreRecord, build_card

if TYPE_CHECKING:
    from kollm.config import ReleaseSpec

REPO_MANIFEST = "kollm-manifest.json"
# The org a git mirror's repos live under (olah serves <mirrors>/models/<org>/<name>).
MIRROR_ORG = "local"
_PROVENANCE_KEYS = ("release", "created", "base", "adapters", "merge", "gguf", "tools")


@dataclass(frozen=True)
class PublishConfig:
    """Where and how a built release is published.

    Attributes:
        target: hf://org/name, local:<dir> or mirror:<dir>.
        name: the release name (repo names derive from it for local and mirror targets).
        version: the tag every repo gets, e.g. v1.2.0.
        private: create Hub repos private.
        repo_layout: per-format (name, name-GGUF) or single (everything in one repo).
        license: license id for the card.
    """

    target: str
    name: str
    version: str
    private: bool = True
    repo_layout: Literal["per-format", "single"] = "per-format"
    license: str = "apache-2.0"


def publish_config(spec: ReleaseSpec) -> PublishConfig:
    """The publish settings of a release spec (whose validator guarantees a version when publish is set)."""
    return PublishConfig(
        target=spec.publish or "",
        name=spec.name,
        version=spec.version or "",
        private=spec.private,
        repo_layout=spec.repo_layout,
        license=spec.license,
    )


@dataclass(frozen=True)
class Target:
    """A parsed publish target."""

    scheme: Literal["hf", "local", "mirror"]
    repo_base: str  # org/name for hf and mirror, name for local
    root: Path | None = None


@dataclass
class RepoPlan:
    """One repo of a release: artifact files (verified against the manifest) plus generated files."""

    repo_id: str
    kind: Literal["safetensors", "gguf", "single"]
    files: dict[str, Path]
    records: list[FileRecord]
    generated: dict[str, bytes] = field(default_factory=dict)

    def contents(self) -> dict[str, Path | bytes]:
        """Every path in the repo -> its source file or bytes, sorted by path."""
        merged: dict[str, Path | bytes] = {**self.files, **self.generated}
        return dict(sorted(merged.items()))


# Artifact kind -> repo name suffix in the per-format layout (name, name-GGUF, name-GPTQ-W4A16, name-bnb-4bit).
_QUANTIZED_REPOS = {"gguf": "GGUF", "gptq": "GPTQ-W4A16", "bnb-4bit": "bnb-4bit"}
# The importance matrix travels with the GGUF files it made: users re-quantize other types with it.
_REPO_OF_KIND = {"imatrix": "gguf"}


def parse_target(target: str, name: str) -> Target:
    """Split a publish target string into scheme, repo base and root directory."""
    if target.startswith("hf://"):
        return Target("hf", target.removeprefix("hf://"))
    if target.startswith("local:"):
        return Target("local", name, Path(target.removeprefix("local:")).expanduser())
    if target.startswith("mirror:"):
        return Target("mirror", f"{MIRROR_ORG}/{name}", Path(target.removeprefix("mirror:")).expanduser())
    raise PublishError(target, "unknown target", hint="Use hf://org/name, local:<dir> or mirror:<dir>.")


def build_plans(
    cfg: PublishConfig, *, manifest: dict[str, Any], out_dir: Path, scores: list[ScoreRecord]
) -> list[RepoPlan]:
    """Group the manifest's artifacts into repos and generate each repo's README.md and manifest.

    Args:
        cfg: the publish settings.
        manifest: the release manifest (``kollm-manifest.json`` of the output directory).
        out_dir: the release output directory the manifest's paths are relative to.
        scores: gate score records to put in the cards.

    Returns:
        One plan per repo, safetensors repo first.

    Raises:
        PublishError: the release has no artifacts to publish.
    """
    target = parse_target(cfg.target, cfg.name)
    groups: dict[str, list[dict[str, Any]]] = {}
    for artifact in manifest.get("artifacts", []):
        kind = _REPO_OF_KIND.get(artifact["kind"], artifact["kind"])
        kind = kind if kind in _QUANTIZED_REPOS else "safetensors"
        groups.setdefault(kind, []).append(artifact)
    if not groups:
        raise PublishError(cfg.target, "the release manifest lists no artifacts", hint="Run `kollm release` first.")

    if cfg.repo_layout == "single":
        layout = [(target.repo_base, "single", [a for g in groups.values() for a in g])]
    else:
        layout = [(target.repo_base, "safetensors", groups.get("safetensors", []))]
        for group, suffix in _QUANTIZED_REPOS.items():
            # GPTQ and bnb checkpoints are HF directories of their own: one repo each, carded like safetensors.
            layout.append(
                (f"{target.repo_base}-{suffix}", "gguf" if group == "gguf" else "safetensors", groups.get(group, []))
            )
    safetensors_repo = target.repo_base if "safetensors" in groups else None
    base_id = _hub_base(manifest)
    plans = []
    for repo_id, kind, artifacts in layout:
        if not artifacts:
            continue
        files: dict[str, Path] = {}
        records: list[FileRecord] = []
        for artifact in artifacts:
            for rec in artifact["files"]:
                name = Path(rec["path"]).name
                if name in files:
                    raise PublishError(cfg.target, f"two artifacts both contain '{name}' for {repo_id}")
                files[name] = out_dir / rec["path"]
                records.append(FileRecord(path=name, size=rec["size"], sha256=rec["sha256"]))
        plan = RepoPlan(repo_id, kind, dict(sorted(files.items())), sorted(records, key=lambda r: r.path))  # type: ignore[arg-type]
        gguf_files = [n for n in plan.files if n.endswith(".gguf")]
        quantized_from = safetensors_repo if repo_id != target.repo_base and safetensors_repo else None
        card = CardInputs(
            repo_id=repo_id,
            model_name=repo_id.split("/")[-1],
            license=cfg.license,
            version=cfg.version,
            base_model=quantized_from or base_id,
            base_model_relation="quantized" if quantized_from else "merge",
            kind=kind,
            files=[r.model_dump() for r in plan.records],
            scores=scores,
            provenance={k: manifest.get(k) for k in _PROVENANCE_KEYS},
            gguf_files=gguf_files,
            safetensors_repo=safetensors_repo,
            pull_from=_pull_from(target),
        )
        plan.generated["README.md"] = build_card(card).encode("utf-8")
        runtime: dict[str, Any] = {}
        if gguf_files:
            stops, template = _stops_and_template(out_dir, plan.files[gguf_files[0]])
            runtime = {"stop": stops, "chat_template_is_chatml": ollama.is_chatml(template)}
            # Ollama reads `params` (and `template`) from the repo when pulling hf.co/<repo>:<quant>.
            plan.generated["params"] = ollama.params_json(stops).encode("utf-8")
            go = ollama.go_template(template)
            if go is not None:
                plan.generated["template"] = go.encode("utf-8")
        repo_manifest = {
            **{k: v for k, v in manifest.items() if k != "artifacts"},
            "repo": repo_id,
            "version": cfg.version,
            "scores": [s.model_dump() for s in scores],
            "runtime": runtime,
            "files": [r.model_dump() for r in plan.records],
        }
        text = json.dumps(repo_manifest, indent=2, ensure_ascii=False, default=str) + "\n"
        plan.generated[REPO_MANIFEST] = text.encode("utf-8")
        plans.append(plan)
    return plans


def _pull_from(target: Target) -> str | None:
    """How the card tells readers to reach a non-Hub repo with `kollm pull`.

    A git mirror is served through the Hub's own API (olah), so its card is the Hub card, byte for byte: the
    same release published to a mirror and to the Hub must not count as different content.
    """
    if target.scheme == "local":
        return f"--registry local:{target.root}"
    return None


def _hub_base(manifest: dict[str, Any]) -> str | None:
    """The base model's Hub id when it came from the Hub (a local directory or the fixture has none)."""
    base = manifest.get("base") or {}
    return base.get("source") if base.get("kind") == "hub" else None


def _stops_and_template(out_dir: Path, first_gguf: Path) -> tuple[list[str], str | None]:
    """Stop tokens from the merged model's tokenizer (EOS + generation_config ids) and the GGUF's own ids."""
    stops, template = ollama.gguf_stops(first_gguf)
    for merged in (out_dir / "merged", out_dir / ".work" / "merged"):
        if (merged / "tokenizer.json").is_file():
            tok_stops, tok_template = ollama.tokenizer_stops(merged)
            stops = ollama.stop_tokens([], {}, tok_stops + stops)
            template = tok_template or template
            break
    return stops, template
