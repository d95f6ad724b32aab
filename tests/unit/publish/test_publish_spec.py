"""Publish fields of the release spec."""

import pytest

from kollm.config import load_release_spec
from kollm.errors import SpecError


def _load(tmp_path, body):
    path = tmp_path / "spec.yaml"
    path.write_text("name: ko\nbase: b\n" + body, encoding="utf-8")
    return load_release_spec(path)


def test_hub_target_with_version(tmp_path):
    spec = _load(tmp_path, "publish: hf://my-org/ko-model\nversion: v1.2.0\nrepo_layout: single\nprivate: false\n")
    assert (spec.publish, spec.version, spec.repo_layout, spec.private) == (
        "hf://my-org/ko-model",
        "v1.2.0",
        "single",
        False,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("publish: hf://no-org\nversion: v1.0.0\n", "hf://"),
        ("publish: local:./r\n", "version"),
        ("publish: local:./r\nversion: latest\n", "version"),
        ("publish: 'mirror:'\nversion: v1.0.0\n", "mirror:"),
        ("repo_layout: per-quant\n", "repo_layout"),
    ],
)
def test_bad_publish_fields_are_named(tmp_path, body, field):
    with pytest.raises(SpecError) as e:
        _load(tmp_path, body)
    assert field in str(e.value)
