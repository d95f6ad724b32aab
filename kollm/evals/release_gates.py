"""The release's eval stage: evaluate the artifacts its gates name, compare, report; never publishes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kollm.errors import GateSyntaxError
from kollm.evals import gates as gates_mod
from kollm.evals import report, runner, suites

ALIASES = ("hf", "merged")


@dataclass(frozen=True)
class GateRunConfig:
    """Gates and how to evaluate for them."""

    gates: list[str]
    limit: int | None = None
    data_dir: Path | None = None
    offline: bool | None = None
    max_gen_toks: int | None = None


@dataclass
class GateRunResult:
    """Outcomes, scores and the report files."""

    outcomes: list[gates_mod.GateOutcome]
    results: dict[str, runner.EvalResult]
    files: report.ReportFiles
    seconds: float = 0.0
    failed: list[gates_mod.GateOutcome] = field(default_factory=list)


def prepare(cfg: GateRunConfig, *, artifact_names: list[str]) -> list[gates_mod.Gate]:
    """Parse the gates and check their suites, artifacts and data before anything is built or loaded.

    Args:
        cfg: the gates and data options.
        artifact_names: what the release will produce (``merged`` and GGUF types such as ``q4_k_m``).

    Returns:
        The parsed gates.

    Raises:
        GateSyntaxError: a bad expression or an artifact the release does not produce.
        UnknownSuiteError, EvalDataMissingError: from the suite plan.
    """
    parsed = gates_mod.parse_gates(cfg.gates)
    known = list(dict.fromkeys([*ALIASES, *artifact_names, "bf16"]))
    for gate in parsed:
        for operand in gate.operands:
            if operand.artifact not in known:
                raise GateSyntaxError(
                    gate.text,
                    f"this release produces no artifact '{operand.artifact}'",
                    hint=f"Name one of: {', '.join(known)} (GGUF types come from exports.gguf).",
                )
    wanted = sorted({s for suites_ in gates_mod.needed(parsed).values() for s in suites_})
    suites.plan(wanted, data_dir=cfg.data_dir, offline=cfg.offline)
    return parsed


def resolve_artifact(name: str, *, merged: Path, gguf_files: dict[str, Path]) -> Path:
    """Map a gate's artifact name to a model path: GGUF types to their file, hf/merged (and bf16 without a
    bf16 GGUF, since merged checkpoints are usually bf16) to the merged directory."""
    if name in gguf_files:
        return gguf_files[name]
    return merged


def run(
    cfg: GateRunConfig,
    *,
    merged: Path,
    gguf_files: dict[str, Path],
    out_dir: Path,
    on_artifact: Callable[[str, int, int], None] | None = None,
) -> GateRunResult:
    """Evaluate every artifact a gate names (one model load each, all its suites), compare, write the report.

    Args:
        cfg: gates and data options.
        merged: the merged HF model directory.
        gguf_files: GGUF type -> file.
        out_dir: where ``results.json`` and ``scores.png`` go.
        on_artifact: called as ``(artifact, done, total)`` after each artifact.

    Returns:
        Outcomes (failed ones listed separately), scores and report paths.
    """
    parsed = prepare(cfg, artifact_names=["merged", *gguf_files])
    wanted = gates_mod.needed(parsed)
    by_path: dict[Path, list[str]] = {}
    for artifact in wanted:
        by_path.setdefault(resolve_artifact(artifact, merged=merged, gguf_files=gguf_files), []).append(artifact)
    results: dict[str, runner.EvalResult] = {}
    seconds = 0.0
    for done, (path, names) in enumerate(by_path.items(), start=1):
        suite_names = list(dict.fromkeys(s for n in names for s in wanted[n]))
        evaluated = runner.run(
            runner.EvalConfig(
                suites=suite_names,
                limit=cfg.limit,
                data_dir=cfg.data_dir,
                offline=cfg.offline,
                max_gen_toks=cfg.max_gen_toks,
            ),
            model=str(path),
        )
        seconds += evaluated.seconds
        for name in names:
            results[name] = evaluated
        if on_artifact:
            on_artifact(names[0], done, len(by_path))
    scores = {(a, s): (r.scores[s].score, r.scores[s].stderr) for a, r in results.items() for s in r.scores}
    outcomes = gates_mod.check(parsed, scores)
    files = report.write(out_dir, results, outcomes)
    return GateRunResult(outcomes, results, files, seconds, [o for o in outcomes if not o.passed])
