"""`kollm eval` and `kollm release --gate`: help, and clear errors (exit codes, no traceback) before any model loads."""

import pytest


def test_eval_help_lists_the_options(kollm_cli):
    done = kollm_cli("eval", "--help")
    assert done.returncode == 0
    for option in ("--suite", "--limit", "--data-dir", "--gate", "--json"):
        assert option in done.stdout


def test_release_help_has_gate(kollm_cli):
    done = kollm_cli("release", "--help")
    assert done.returncode == 0 and "--gate" in done.stdout


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--gate", "kmmlu>=0.78"], 2, "percentages"),
        (["--gate", "kmmlu=>78"], 2, "cannot parse"),
        (["--gate", "q4_k_m.kmmlu>=70"], 2, "cannot name artifacts"),
        (["--suite", "kmmlu,clik"], 2, "Did you mean 'click'?"),
        (["--suite", "click", "--data-dir", "{tmp}"], 3, "click_sample.jsonl does not exist"),
    ],
)
def test_bad_input_fails_fast_with_a_message(kollm_cli, ko_tiny, tmp_path, args, code, expected):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = kollm_cli("eval", str(ko_tiny.base), *args)
    assert done.returncode == code, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_model_is_named(kollm_cli, tmp_path):
    done = kollm_cli("eval", str(tmp_path / "nope.gguf"), "--offline")
    assert done.returncode == 3
    assert "model to evaluate not found" in done.stderr
