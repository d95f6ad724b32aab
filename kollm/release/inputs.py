"""Resolving a spec's base and adapters to local directories: a path, a Hub id, or the built-in fixture."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kollm.errors import InputNotFoundError, KollmError

FIXTURE_PREFIX = "fixture:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model", "*.tiktoken"]


@dataclass(frozen=True)
class ResolvedInput:
    """A local directory plus where it came from (for provenance)."""

    path: Path
    source: str  # what the spec said
    kind: str  # "local", "hub", "fixture"
    revision: str | None = None


def _fixture(ref: str) -> ResolvedInput:
    from kollm.testing.fixture import build_fixture, named_specs

    name, _, adapter = ref.removeprefix(FIXTURE_PREFIX).partition("/")
    specs = named_specs()
    if name not in specs:
        known = ", ".join(f"fixture:{n}" for n in specs)
        raise InputNotFoundError("fixture", ref, hint=f"The built-in fixtures are {known}.")
    spec = specs[name]
    fixture = build_fixture(spec)
    if not adapter:
        return ResolvedInput(fixture.base, ref, "fixture")
    if adapter not in fixture.adapters:
        raise InputNotFoundError(
            "fixture adapter",
            ref,
            hint=f"Known: {', '.join(f'fixture:{name}/{a}' for a in fixture.adapters)}.",
        )
    return ResolvedInput(fixture.adapters[adapter], ref, "fixture")


def _hub(ref: str, revision: str | None, *, trust_remote_code: bool) -> ResolvedInput:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = [*_HUB_PATTERNS, "*.py"] if trust_remote_code else _HUB_PATTERNS
    try:
        path = snapshot_download(ref, revision=revision, allow_patterns=patterns)
    except RepositoryNotFoundError as e:
        raise InputNotFoundError(
            "Hub repository", ref, hint="No local directory has this name either; check the id or the path."
        ) from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise KollmError(
            f"'{ref}' is not a local directory, and downloading it from the Hugging Face Hub "
            f"(revision {revision or 'main'}) failed ({type(e).__name__}).",
            hint="Check the network and HF_TOKEN, or download it once and point `base` at the local directory.",
        ) from e
    return ResolvedInput(Path(path), ref, "hub", revision)


def resolve(ref: str, *, revision: str | None = None, trust_remote_code: bool = False, what: str) -> ResolvedInput:
    """Turn a spec reference into a local directory.

    Args:
        ref: a directory, ``fixture:ko-tiny[/adapter]``, or a Hub id ``org/name``.
        revision: Hub revision for Hub ids.
        trust_remote_code: also download ``*.py`` files from the Hub.
        what: "base model" or "adapter", for messages.

    Raises:
        InputNotFoundError: neither a directory nor a Hub id, or not found on the Hub.
    """
    if ref.startswith(FIXTURE_PREFIX):
        return _fixture(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        return ResolvedInput(path.resolve(), ref, "local")
    if path.exists():
        raise InputNotFoundError(what, ref, hint="Expected a directory, not a file.")
    if _HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return _hub(ref, revision, trust_remote_code=trust_remote_code)
    raise InputNotFoundError(
        what, ref, hint="Give a local directory, a Hub id like Qwen/Qwen2.5-7B, or fixture:ko-tiny."
    )
