"""Every release spec shipped in release/ must validate."""

from pathlib import Path

import pytest

from kollm.config import load_release_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "release").glob("*.yaml"))


def test_there_are_specs():
    assert SPECS


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_validates(path):
    spec = load_release_spec(path)
    assert spec.name
