"""Gate expressions: parsing, the percent scale, relative gates and comparison."""

import pytest

from kollm.errors import GateSyntaxError
from kollm.evals import gates


@pytest.mark.parametrize(
    ("text", "artifact", "suite", "op", "threshold"),
    [
        ("kmmlu>=78", "merged", "kmmlu", ">=", 78.0),
        (" click > 83.5 ", "merged", "click", ">", 83.5),
        ("q4_k_m.ko_ifeval>=70%", "q4_k_m", "ko_ifeval", ">=", 70.0),
        ("kmmlu>=0", "merged", "kmmlu", ">=", 0.0),
        ("kmmlu>=1", "merged", "kmmlu", ">=", 1.0),  # an integer 1 means 1 %
    ],
)
def test_absolute_gates(text, artifact, suite, op, threshold):
    gate = gates.parse_gate(text)
    assert (gate.left.artifact, gate.left.suite, gate.op, gate.threshold, gate.right) == (
        artifact,
        suite,
        op,
        threshold,
        None,
    )


def test_relative_gate_for_a_quantized_artifact():
    gate = gates.parse_gate("q4_k_m.kmmlu>=bf16.kmmlu-1.5")
    assert (str(gate.left), str(gate.right), gate.offset) == ("q4_k_m.kmmlu", "bf16.kmmlu", -1.5)
    assert gates.needed([gate]) == {"q4_k_m": ["kmmlu"], "bf16": ["kmmlu"]}


@pytest.mark.parametrize("text", ["kmmlu>=0.78", "click>0.5", "kmmlu>=1.0"])
def test_fractions_are_rejected_with_a_percent_hint(text):
    with pytest.raises(GateSyntaxError) as info:
        gates.parse_gate(text)
    assert "percentages" in info.value.message
    assert info.value.hint is not None and info.value.hint.startswith("Write ")


@pytest.mark.parametrize("text", ["kmmlu=>78", "kmmlu", ">=78", "kmmlu>=78 points", "kmmlu>=101", "kmmlu>=kmmlu"])
def test_bad_expressions(text):
    with pytest.raises(GateSyntaxError):
        gates.parse_gate(text)


def test_check_compares_absolute_and_relative_gates():
    parsed = gates.parse_gates(["kmmlu>=50", "q4_k_m.kmmlu>=merged.kmmlu-1.5", "click>90", "kmmlu>=50"])
    assert len(parsed) == 3  # exact duplicates collapse
    scores = {("merged", "kmmlu"): (52.0, 1.1), ("q4_k_m", "kmmlu"): (50.4, 1.2), ("merged", "click"): (90.0, None)}
    outcomes = gates.check(parsed, scores)
    assert [o.passed for o in outcomes] == [True, False, False]
    assert outcomes[1].threshold == pytest.approx(50.5)
    assert outcomes[0].stderr == 1.1


def test_release_spec_rejects_a_fraction_gate(tmp_path):
    from kollm.config import load_release_spec
    from kollm.errors import SpecError

    spec = tmp_path / "r.yaml"
    spec.write_text("name: x\nbase: fixture:ko-tiny\ngates: ['kmmlu>=78', 'click>=0.83']\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_release_spec(spec)
    assert "Gate 'click>=0.83'" in info.value.message and "percentages" in info.value.message
    spec.write_text("name: x\nbase: fixture:ko-tiny\ngates: ['kmmlu>=78']\neval: {limit: 5}\n", encoding="utf-8")
    assert load_release_spec(spec).eval.limit == 5
