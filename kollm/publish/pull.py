"""`kollm pull REPO[:QUANT]`: download one GGUF, verify it against the release manifest, prepare Ollama.

Sources: the Hub (or any server speaking its API, e.g. a mirror via ``endpoint``) through
``hf_hub_download``, or a ``local:<dir>`` registry. The revision is resolved to one commit first so the
manifest and the file come from the same release. A file whose sha256 differs from the manifest is deleted.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.errors import ChecksumMismatchError, PullError
from kollm.manifest import atomic_path, sha256_file, write_text_atomic
from kollm.publish import local, ollama
from kollm.publish.plan import REPO_MANIFEST

# llama.cpp's and Ollama's default when no tag is given: Q4_K_M, then Q8_0.
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")


@dataclass(frozen=True)
class PullConfig:
    """What to pull and where from.

    Attributes:
        ref: ``org/name[:QUANT]`` (QUANT as in ``llama-cli -hf``; default Q4_K_M, then Q8_0).
        to: directory for the GGUF and its Modelfile.
        registry: a local registry directory instead of the Hub.
        endpoint: a Hub-compatible server URL (default: huggingface_hub's).
        revision: branch or tag; "main" by default.
    """

    ref: str
    to: Path = Path("models")
    registry: Path | None = None
    endpoint: str | None = None
    revision: str = "main"


@dataclass
class PullResult:
    """A verified GGUF and how to run it."""

    repo: str
    revision: str
    path: Path
    sha256: str
    modelfile: Path
    stops: list[str]
    commands: dict[str, str] = field(default_factory=dict)


def split_ref(ref: str) -> tuple[str, str | None]:
    """``org/name:Q4_K_M`` -> (``org/name``, ``Q4_K_M``); no tag -> (repo, None)."""
    repo, _, quant = ref.partition(":")
    if not repo:
        raise PullError(ref, "no repo given", hint="Use org/name-GGUF[:QUANT], e.g. my-org/ko-model-GGUF:Q4_K_M.")
    return repo, quant or None


def match_quant(files: list[str], quant: str | None, *, repo: str = "repo") -> str:
    """Pick the GGUF for ``quant`` the way llama.cpp's ``-hf repo:QUANT`` does.

    The tag matches case-insensitively anywhere in the file name when followed by ``.`` or ``-``; without a
    tag Q4_K_M, then Q8_0, then the first GGUF. Split files resolve to their first part.

    Raises:
        PullError: no GGUF in the repo, or none matching ``quant`` (the available tags are listed).
    """
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        raise PullError(repo, "it has no .gguf files", hint="Pull from the -GGUF repo of the release.")
    wanted = [quant] if quant else list(DEFAULT_QUANTS)
    for tag in wanted:
        pattern = re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)
        hits = [f for f in ggufs if pattern.search(Path(f).name)]
        if hits:
            return next((f for f in hits if "-00001-of-" in f), hits[0])
    if quant is None:
        return ggufs[0]
    available = ", ".join(Path(f).stem.rsplit("-", 1)[-1] for f in ggufs)
    raise PullError(repo, f"no GGUF matches ':{quant}'", hint=f"Available: {available}.")


def run(cfg: PullConfig) -> PullResult:
    """Download, verify and prepare one GGUF.

    Returns:
        The verified file, its Modelfile, stop tokens and the commands to run it.

    Raises:
        PullError: the repo, revision, manifest or file cannot be found.
        ChecksumMismatchError: the file's sha256 differs from the manifest (the file is deleted).
    """
    repo, quant = split_ref(cfg.ref)
    cfg.to.mkdir(parents=True, exist_ok=True)
    if cfg.registry is not None:
        manifest, path, revision = _fetch_local(cfg.registry, repo, quant, cfg.revision, cfg.to)
    else:
        manifest, path, revision = _fetch_hub(repo, quant, cfg)
    record = next((f for f in manifest.get("files", []) if f["path"] == path.name), None)
    if record is None:
        path.unlink(missing_ok=True)
        raise PullError(repo, f"{path.name} is not in the release manifest, so it cannot be verified")
    actual = sha256_file(path)
    if actual != record["sha256"]:
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(str(path), record["sha256"], actual)

    gguf_stops, template = ollama.gguf_stops(path)
    stops = ollama.stop_tokens([], {}, list((manifest.get("runtime") or {}).get("stop") or []) + gguf_stops)
    modelfile = cfg.to / f"{path.stem}.Modelfile"
    write_text_atomic(modelfile, ollama.modelfile(path, stops=stops, template=ollama.go_template(template)))
    name = repo.split("/")[-1].lower().removesuffix("-gguf")
    tag = path.stem.rsplit("-", 1)[-1]
    commands = {
        "llama.cpp": f"llama-cli -m {path} -cnv",
        "llama-server": f"llama-server -m {path} --port 8080",
        "ollama": f"ollama create {name}:{tag.lower()} -f {modelfile} && ollama run {name}:{tag.lower()}",
    }
    if cfg.registry is None and cfg.endpoint is None:
        commands["llama.cpp (from the Hub)"] = f"llama-cli -hf {repo}:{tag}"
        commands["ollama (from the Hub)"] = f"ollama run hf.co/{repo}:{tag}"
    return PullResult(repo, revision, path, actual, modelfile, stops, commands)


def _fetch_local(root: Path, repo: str, quant: str | None, revision: str, to: Path) -> tuple[dict[str, Any], Path, str]:
    source = local.repo_dir(root, repo, revision)
    if not (source / REPO_MANIFEST).is_file():
        raise PullError(
            repo,
            f"no release at {source}",
            hint=f"Check the name and revision; published repos: {', '.join(sorted(_local_repos(root))) or 'none'}.",
        )
    manifest = json.loads((source / REPO_MANIFEST).read_text(encoding="utf-8"))
    name = match_quant([p.name for p in source.iterdir() if p.is_file()], quant, repo=repo)
    target = to / name
    with atomic_path(target) as tmp:
        shutil.copyfile(source / name, tmp)
    return manifest, target, manifest.get("version") or revision


def _local_repos(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if (p / REPO_MANIFEST).is_file()] if root.is_dir() else []


def _fetch_hub(repo: str, quant: str | None, cfg: PullConfig) -> tuple[dict[str, Any], Path, str]:
    import httpx
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=cfg.endpoint)
    where = cfg.endpoint or "the Hub"
    try:
        # One commit for both downloads: the manifest and the GGUF must come from the same release.
        commit = api.model_info(repo, revision=cfg.revision).sha
        files = api.list_repo_files(repo, revision=commit)
        name = match_quant(files, quant, repo=repo)
        if REPO_MANIFEST not in files:
            raise PullError(repo, f"{REPO_MANIFEST} is missing, so the download cannot be verified")
        kwargs = {"repo_id": repo, "revision": commit, "endpoint": cfg.endpoint, "local_dir": cfg.to}
        manifest_path = Path(hf_hub_download(filename=REPO_MANIFEST, **kwargs))
        path = Path(hf_hub_download(filename=name, **kwargs))
    except (HfHubHTTPError, httpx.HTTPError, OSError) as e:
        raise PullError(
            repo,
            f"{where} answered {type(e).__name__}: {str(e).splitlines()[0]}",
            hint="Check the repo name and revision; private repos need HF_TOKEN or `hf auth login`.",
        ) from e
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest_path.unlink()
    return manifest, path, manifest.get("version") or cfg.revision
