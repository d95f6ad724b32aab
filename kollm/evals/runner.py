"""`kollm eval`: run suites with lm-eval on one loaded model (HF dir, GGUF file) or one OpenAI-compatible server.

Suites that share a protocol (chat template on/off, shots) go through one ``simple_evaluate`` call; all
calls reuse the same model object, so the model loads once. Scores leave this module as percentages.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kollm.errors import EvalRunError, InputNotFoundError, ToolMissingError
from kollm.evals import scores as score_mod
from kollm.evals import suites as suites_mod

logger = logging.getLogger(__name__)

ModelKind = Literal["hf", "gguf", "openai"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how."""

    suites: list[str]
    limit: int | None = None
    data_dir: Path | None = None
    offline: bool | None = None
    batch_size: int = 1
    dtype: str | None = None
    tokenizer: str | None = None
    max_gen_toks: int | None = None
    suites_file: Path | None = None


@dataclass
class EvalResult:
    """Scores per suite (0-100) plus lm-eval's raw output per protocol group."""

    model: str
    kind: ModelKind
    scores: dict[str, score_mod.SuiteScore]
    raw: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def model_kind(model: str) -> ModelKind:
    """Tell what MODEL is: an OpenAI-compatible base URL, a .gguf file or a HF model directory.

    Raises:
        InputNotFoundError: neither an URL, a GGUF file nor a directory with config.json.
    """
    if model.startswith(("http://", "https://")):
        return "openai"
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "config.json").is_file():
        return "hf"
    raise InputNotFoundError(
        "model to evaluate",
        model,
        hint="Pass a HF model directory (with config.json), a .gguf file, or a server URL like http://127.0.0.1:8000.",
    )


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ToolMissingError("lm-eval", install="pip install -e '.[eval]'  (or `make setup`)") from e


def _load_models(kind: ModelKind, model: str, cfg: EvalConfig, *, need_chat: bool) -> tuple[Any, Any]:
    """(loglikelihood model, generation model): one object for in-process models, two clients for a server."""
    if kind == "gguf":
        from kollm.evals.gguf_lm import GGUFLM

        lm = GGUFLM(Path(model), max_gen_toks=cfg.max_gen_toks or 256)
        return lm, lm
    from lm_eval.api.registry import get_model

    if kind == "hf":
        import torch

        dtype = cfg.dtype or ("auto" if torch.cuda.is_available() else "float32")
        lm = get_model("hf")(
            pretrained=str(Path(model).resolve()),
            dtype=dtype,
            batch_size=cfg.batch_size,
            trust_remote_code=False,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        return lm, lm
    return _server_models(model, cfg, need_chat=need_chat)


def _server_models(url: str, cfg: EvalConfig, *, need_chat: bool) -> tuple[Any, Any]:
    import os

    import requests
    from lm_eval.api.registry import get_model

    base = url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"} if os.environ.get("OPENAI_API_KEY") else {}
    try:
        listing = requests.get(f"{base}/v1/models", headers=headers, timeout=30)
    except requests.RequestException as e:
        raise EvalRunError(
            f"cannot reach {base}/v1/models ({e})", hint="Start the server first (`kollm serve`)."
        ) from e
    if listing.status_code != 200:
        raise EvalRunError(
            f"{base}/v1/models answered HTTP {listing.status_code}",
            hint="If the server needs a key, export OPENAI_API_KEY (kollm never takes keys on the command line).",
        )
    name = listing.json()["data"][0]["id"]
    tokenizer = {"tokenizer": cfg.tokenizer, "tokenizer_backend": "huggingface"} if cfg.tokenizer else {}
    scorer = get_model("local-completions")(
        model=name,
        base_url=f"{base}/v1/completions",
        batch_size=cfg.batch_size,
        max_length=4096,
        **(tokenizer or {"tokenizer_backend": "remote"}),
    )
    generator = (
        get_model("local-chat-completions")(
            model=name,
            base_url=f"{base}/v1/chat/completions",
            max_gen_toks=cfg.max_gen_toks or 256,
            tokenizer_backend=None,
        )
        if need_chat
        else scorer
    )
    return scorer, generator


def run(cfg: EvalConfig, *, model: str, progress: Progress | None = None) -> EvalResult:
    """Evaluate ``model`` on the configured suites.

    Args:
        cfg: suites, limit, data location.
        model: HF directory, .gguf file or OpenAI-compatible base URL.
        progress: called as ``(suite names, groups done, groups total)`` after each protocol group.

    Returns:
        Per-suite scores in percent with their protocol, and lm-eval's raw results.

    Raises:
        UnknownSuiteError, EvalDataMissingError, InputNotFoundError: before any model loads.
        EvalRunError: lm-eval failed, or all choices of a question scored the same (a broken backend).
    """
    started = time.perf_counter()
    planned = suites_mod.plan(cfg.suites, data_dir=cfg.data_dir, offline=cfg.offline, suites_file=cfg.suites_file)
    kind = model_kind(model)
    _require_lm_eval()
    for suite in planned:
        logger.info("suite %s: %s", suite.name, suite.protocol)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    groups: dict[tuple[bool, int], list[suites_mod.PlannedSuite]] = {}
    for suite in planned:
        groups.setdefault((suite.spec.chat_template, suite.spec.num_fewshot), []).append(suite)
    result = EvalResult(model=model, kind=kind, scores={})
    with tempfile.TemporaryDirectory(prefix="kollm-evalsuites-") as tmp:
        include = suites_mod.render_include_dir(planned, Path(tmp), data_dir=cfg.data_dir)
        paths = [str(include), *(str(d) for d in suites_mod.builtin_dirs(planned))]
        manager = TaskManager(include_path=paths, include_defaults=False)
        missing = [t for s in planned for t in s.tasks if t not in manager.all_tasks]
        if missing:
            raise EvalRunError(
                f"lm-eval does not know the task(s) {missing}",
                hint="A task YAML under evalsuites/ failed to load, or this lm-eval version lacks a built-in task.",
            )
        scorer, generator = _load_models(kind, model, cfg, need_chat=any(chat for chat, _ in groups))
        for done, ((chat, shots), members) in enumerate(groups.items(), start=1):
            lm = generator if chat and kind == "openai" else scorer
            try:
                raw = simple_evaluate(
                    model=lm,
                    tasks=[t for s in members for t in s.tasks],
                    num_fewshot=shots,
                    limit=cfg.limit,
                    task_manager=manager,
                    apply_chat_template=chat,
                    fewshot_as_multiturn=chat and shots > 0,
                    log_samples=True,
                    gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
                    bootstrap_iters=1000,  # > 0 or lm-eval skips every stderr; no suite metric bootstraps
                )
            except Exception as e:  # lm-eval raises bare exceptions of every kind
                raise EvalRunError(f"lm-eval stopped on {[s.name for s in members]}: {e}") from e
            if raw is None:
                raise EvalRunError("lm-eval returned no results (non-zero rank?)")
            raw = dict(raw)
            for suite in members:
                result.scores[suite.name] = score_mod.suite_score(suite, raw)
            result.raw.append(raw)
            if progress:
                progress(",".join(s.name for s in members), done, len(groups))
    result.seconds = time.perf_counter() - started
    return result
