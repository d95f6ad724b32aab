"""Release gates: parse ``kmmlu>=78`` / ``q4_k_m.kmmlu>=bf16.kmmlu-1.5`` and compare them with scores.

Scores and thresholds are percentages (0-100). An operand may name the artifact it is about
(``q4_k_m.kmmlu``); without one it means the release's reference model (the merged checkpoint).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from kollm.errors import GateSyntaxError

REFERENCE = "merged"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_OPERAND = r"(?:(?P<{p}art>[A-Za-z0-9][A-Za-z0-9_]*)\.)?(?P<{p}suite>[A-Za-z][A-Za-z0-9_]*)"
_GATE = re.compile(
    r"^\s*" + _OPERAND.format(p="l") + r"\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<number>[+-]?\d+(?:\.\d+)?)|"
    + _OPERAND.format(p="r")
    + r"\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+(?:\.\d+)?))?)"
    r"\s*%?\s*$"
)


@dataclass(frozen=True)
class Operand:
    """One side of a gate: a suite's score on an artifact."""

    artifact: str
    suite: str

    def __str__(self) -> str:
        return f"{self.artifact}.{self.suite}"


@dataclass(frozen=True)
class Gate:
    """A parsed gate: ``left op threshold`` or ``left op right + offset``."""

    text: str
    left: Operand
    op: str
    threshold: float | None = None
    right: Operand | None = None
    offset: float = 0.0

    @property
    def operands(self) -> list[Operand]:
        """Every (artifact, suite) score the gate needs."""
        return [self.left] if self.right is None else [self.left, self.right]


@dataclass(frozen=True)
class GateOutcome:
    """A gate compared with the scores: what it needed, what it got."""

    gate: Gate
    actual: float
    stderr: float | None
    threshold: float
    passed: bool


def parse_gate(text: str, *, default_artifact: str = REFERENCE) -> Gate:
    """Parse one gate expression.

    Args:
        text: e.g. ``kmmlu>=78``, ``click>83.5``, ``q4_k_m.kmmlu>=bf16.kmmlu-1.5``.
        default_artifact: the artifact an operand without ``artifact.`` refers to.

    Returns:
        The gate.

    Raises:
        GateSyntaxError: unparseable, or an absolute threshold on the 0-1 scale (``kmmlu>=0.78``).
    """
    match = _GATE.match(text)
    if not match:
        raise GateSyntaxError(text, "cannot parse it")
    left = Operand((match["lart"] or default_artifact).lower(), match["lsuite"])
    if match["number"] is not None:
        threshold = float(match["number"])
        if 0 < threshold <= 1 and "." in match["number"]:
            raise GateSyntaxError(
                text,
                f"threshold {match['number']} looks like a 0-1 fraction, but kollm scores are percentages (0-100)",
                hint=f"Write {match['lsuite']}{match['op']}{threshold * 100:g}.",
            )
        if not 0 <= threshold <= 100:
            raise GateSyntaxError(text, f"threshold {threshold:g} is outside 0-100")
        return Gate(text.strip(), left, match["op"], threshold=threshold)
    right = Operand((match["rart"] or default_artifact).lower(), match["rsuite"])
    if right == left:
        raise GateSyntaxError(text, "it compares a score with itself")
    offset = float(match["offset"] or 0.0) * (-1 if match["sign"] == "-" else 1)
    return Gate(text.strip(), left, match["op"], right=right, offset=offset)


def parse_gates(texts: list[str], *, default_artifact: str = REFERENCE) -> list[Gate]:
    """Parse several gates (CLI ``--gate`` options and the spec's ``gates:``), dropping exact duplicates."""
    return [parse_gate(t, default_artifact=default_artifact) for t in dict.fromkeys(texts)]


def needed(gates: list[Gate]) -> dict[str, list[str]]:
    """Artifact -> suites to evaluate on it, in first-mention order."""
    wanted: dict[str, list[str]] = {}
    for gate in gates:
        for operand in gate.operands:
            suites = wanted.setdefault(operand.artifact, [])
            if operand.suite not in suites:
                suites.append(operand.suite)
    return wanted


def check(gates: list[Gate], scores: dict[tuple[str, str], tuple[float, float | None]]) -> list[GateOutcome]:
    """Compare gates with scores.

    Args:
        gates: parsed gates.
        scores: ``(artifact, suite) -> (score, stderr)`` in percent.

    Returns:
        One outcome per gate.

    Raises:
        KeyError: a score a gate needs is missing (evaluate ``needed(gates)`` first).
    """
    outcomes = []
    for gate in gates:
        actual, stderr = scores[(gate.left.artifact, gate.left.suite)]
        if gate.right is None:
            threshold = gate.threshold if gate.threshold is not None else 0.0
        else:
            threshold = scores[(gate.right.artifact, gate.right.suite)][0] + gate.offset
        outcomes.append(GateOutcome(gate, actual, stderr, threshold, _OPS[gate.op](actual, threshold)))
    return outcomes
