"""The real Hub, opt-in: runs only with HF_TOKEN and KOLLM_TEST_HF_NAMESPACE (a user or org you can write to).

Creates a temporary private repo pair, publishes the release, re-runs it (a no-op), pulls the Q4_K_M through
the Hub, and deletes both repos whatever happens.
"""

from __future__ import annotations

import os
import uuid

import pytest

from kollm.manifest import sha256_file

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not (os.environ.get("HF_TOKEN") and os.environ.get("KOLLM_TEST_HF_NAMESPACE")),
        reason="needs HF_TOKEN and KOLLM_TEST_HF_NAMESPACE (a namespace the token can create repos in)",
    ),
]


def test_publish_and_pull_on_the_hub(publish_release, tmp_path):
    from huggingface_hub import HfApi, ModelCard

    from kollm.publish import publisher, pull
    from kollm.publish.plan import PublishConfig

    repo = f"{os.environ['KOLLM_TEST_HF_NAMESPACE']}/kollm-test-{uuid.uuid4().hex[:8]}"
    cfg = PublishConfig(target=f"hf://{repo}", name="ko-tiny", version="v0.0.1", private=True)
    api = HfApi()
    try:
        first = publisher.run(cfg, out_dir=publish_release)
        assert [r.status for r in first.repos] == ["published", "published"]
        assert api.model_info(repo).private
        tags = [t.name for t in api.list_repo_refs(f"{repo}-GGUF").tags]
        assert tags == ["v0.0.1"]
        assert len(api.list_repo_commits(f"{repo}-GGUF")) == 2  # the repo's initial commit + the release
        again = publisher.run(cfg, out_dir=publish_release)
        assert [r.status for r in again.repos] == ["unchanged", "unchanged"]
        card = ModelCard.load(f"{repo}-GGUF", revision="v0.0.1")
        assert card.data.base_model == repo
        got = pull.run(pull.PullConfig(ref=f"{repo}-GGUF:Q4_K_M", to=tmp_path, revision="v0.0.1"))
        assert sha256_file(got.path) == got.sha256
    finally:
        for name in (repo, f"{repo}-GGUF"):
            api.delete_repo(name, missing_ok=True)
