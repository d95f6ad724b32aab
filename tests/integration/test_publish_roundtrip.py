"""Publish → pull → run, through the local registry and through olah serving a git mirror over HTTP.

The Hub write path is covered up to the wire (the commit operations and the card); its no-op re-run and its
post-upload verification run against olah with the real huggingface_hub client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kollm.manifest import MANIFEST_NAME, sha256_file

pytestmark = pytest.mark.integration

# A made-up token: it must never show up in any output, file or log kollm writes.
TOKEN = "hf_kollmSentinelTokenDoNotPrint0123456789"


@pytest.fixture(scope="module")
def spec(tmp_path_factory, publish_release) -> Path:
    path = tmp_path_factory.mktemp("publish-spec") / "ko-tiny.yaml"
    path.write_text(
        "name: ko-tiny\nbase: fixture:ko-tiny\nadapters: [fixture:ko-tiny/cpt, fixture:ko-tiny/sft]\n"
        f"exports: {{safetensors: true, gguf: [q8_0, q4_k_m]}}\noutput_dir: {publish_release}\nversion: v0.1.0\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A user with HF_TOKEN set and an empty Hugging Face home (no saved login, no cache)."""
    return {
        **os.environ,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def _gguf_record(out_dir: Path, name: str) -> dict:
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    return next(f for a in manifest["artifacts"] for f in a["files"] if f["path"].endswith(name))


def _assert_token_nowhere(outputs: list[str], *roots: Path) -> None:
    for text in outputs:
        assert TOKEN not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_local_publish_pull_and_run(kollm_cli, spec, publish_release, tmp_path, env):
    import llama_cpp

    registry = tmp_path / "registry"
    first = kollm_cli("publish", str(spec), "--to", f"local:{registry}", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "published: ko-tiny-GGUF@v0.1.0" in first.stdout
    again = kollm_cli("publish", str(spec), "--to", f"local:{registry}", env=env)
    assert again.returncode == 0 and again.stdout.count("unchanged:") == 2, again.stdout

    models = tmp_path / "models"
    pulled = kollm_cli(
        "pull", "ko-tiny-GGUF:Q4_K_M", "--registry", f"local:{registry}", "--to", str(models), "--revision", "v0.1.0"
    )
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    path = models / "ko-tiny-Q4_K_M.gguf"
    assert sha256_file(path) == _gguf_record(publish_release, "ko-tiny-Q4_K_M.gguf")["sha256"]
    assert "ollama create ko-tiny:q4_k_m" in pulled.stdout and "llama-cli -m" in pulled.stdout
    modelfile = (models / "ko-tiny-Q4_K_M.Modelfile").read_text(encoding="utf-8")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" in modelfile

    llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": "안녕하세요"}], max_tokens=6, stop=["<|im_end|>"]
    )
    llm.close()
    assert reply["usage"]["completion_tokens"] >= 1
    _assert_token_nowhere([first.stdout, first.stderr, pulled.stdout, pulled.stderr], registry, models)


def test_tampered_download_is_refused_and_deleted(kollm_cli, spec, tmp_path, env):
    registry = tmp_path / "registry"
    assert kollm_cli("publish", str(spec), "--to", f"local:{registry}", env=env).returncode == 0
    published = registry / "ko-tiny-GGUF" / "ko-tiny-Q8_0.gguf"
    data = bytearray(published.read_bytes())
    data[-1] ^= 0xFF
    published.unlink()  # a hard link to the release output: replace it, never write through it
    published.write_bytes(bytes(data))
    models = tmp_path / "models"
    done = kollm_cli("pull", "ko-tiny-GGUF:Q8_0", "--registry", f"local:{registry}", "--to", str(models))
    assert done.returncode == 9
    assert "sha256" in done.stderr and "Traceback" not in done.stderr
    assert not (models / "ko-tiny-Q8_0.gguf").exists()


def test_failed_gate_publishes_nothing(kollm_cli, spec, tmp_path, env):
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps(
            [
                {
                    "gate": "kmmlu",
                    "task": "kmmlu_direct",
                    "metric": "acc",
                    "value": 31.5,
                    "dataset_id": "HAERAE-HUB/KMMLU",
                    "threshold": 45,
                }
            ]
        ),
        encoding="utf-8",
    )
    registry = tmp_path / "registry"
    done = kollm_cli("publish", str(spec), "--to", f"local:{registry}", "--scores", str(scores), env=env)
    assert done.returncode == 7, done.stderr
    assert "kmmlu" in done.stderr and "Traceback" not in done.stderr
    assert not registry.exists()


def test_changed_artifact_publishes_nothing(kollm_cli, spec, publish_release, tmp_path, env):
    copy = tmp_path / "out"
    shutil.copytree(publish_release, copy)
    gguf = copy / "gguf" / "ko-tiny-Q4_K_M.gguf"
    gguf.write_bytes(gguf.read_bytes()[:-1] + b"\0")
    registry = tmp_path / "registry"
    done = kollm_cli("publish", str(spec), "-o", str(copy), "--to", f"local:{registry}", env=env)
    assert done.returncode == 6, done.stderr
    assert "ko-tiny-Q4_K_M.gguf" in done.stderr
    assert not registry.exists()


def test_dry_run_prints_every_file_and_the_card_offline(kollm_cli, spec, env):
    # An endpoint nothing listens on: any network call would fail the command.
    offline = {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
    done = kollm_cli("publish", str(spec), "--to", "hf://my-org/ko-tiny", "--dry-run", env=offline)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("model.safetensors", "tokenizer.json", "ko-tiny-Q4_K_M.gguf", "kollm-manifest.json", "params"):
        assert name in done.stdout
    assert "my-org/ko-tiny-GGUF @ v0.1.0  (dry run)" in done.stdout
    assert "llama-cli -hf my-org/ko-tiny-GGUF:Q4_K_M" in done.stdout
    assert "base_model_relation: quantized" in done.stdout
    _assert_token_nowhere([done.stdout, done.stderr])


def test_hub_publish_needs_a_token(kollm_cli, spec, env):
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    done = kollm_cli("publish", str(spec), "--to", "hf://my-org/ko-tiny", env=no_token)
    assert done.returncode == 8
    assert "HF_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_hub_commit_is_planned_up_to_the_wire(publish_release):
    """One CommitOperationAdd per file, whose upload sha256 is the manifest's; the card keeps the scores."""
    from huggingface_hub import ModelCard

    from kollm.publish import hub
    from kollm.publish.card import ScoreRecord
    from kollm.publish.plan import PublishConfig, build_plans

    manifest = json.loads((publish_release / MANIFEST_NAME).read_text(encoding="utf-8"))
    score = ScoreRecord(
        gate="click", task="click", metric="acc", value=52.5, dataset_id="EunsuKim/CLIcK", dataset_revision="abc123"
    )
    cfg = PublishConfig(target="hf://my-org/ko-tiny", name="ko-tiny", version="v1.0.0")
    plans = build_plans(cfg, manifest=manifest, out_dir=publish_release, scores=[score])
    assert [p.repo_id for p in plans] == ["my-org/ko-tiny", "my-org/ko-tiny-GGUF"]
    gguf_plan = plans[1]
    ops = hub.commit_operations(gguf_plan)
    assert [op.path_in_repo for op in ops] == [
        "README.md",
        "ko-tiny-Q4_K_M.gguf",
        "ko-tiny-Q8_0.gguf",
        "kollm-manifest.json",
        "params",
        "template",
    ]
    for rec in gguf_plan.records:
        op = next(op for op in ops if op.path_in_repo == rec.path)
        assert (op.upload_info.sha256.hex(), op.upload_info.size) == (rec.sha256, rec.size)
    with_stale = hub.commit_operations(gguf_plan, stale=["ko-tiny-Q2_K.gguf"])
    assert [type(op).__name__ for op in with_stale[-2:]] == ["CommitOperationAdd", "CommitOperationDelete"]
    assert with_stale[-1].path_in_repo == "ko-tiny-Q2_K.gguf"
    card = ModelCard(gguf_plan.generated["README.md"].decode("utf-8"))
    assert card.data.base_model == "my-org/ko-tiny"
    assert [(r.task_name, r.metric_value, r.dataset_revision) for r in card.data.eval_results] == [
        ("click", 52.5, "abc123")
    ]
    single = build_plans(
        PublishConfig(target="hf://my-org/ko-tiny", name="ko-tiny", version="v1.0.0", repo_layout="single"),
        manifest=manifest,
        out_dir=publish_release,
        scores=[],
    )
    assert [p.repo_id for p in single] == ["my-org/ko-tiny"]
    assert {"model.safetensors", "ko-tiny-Q4_K_M.gguf", "params"} <= set(single[0].contents())


# --- git mirror served by olah -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, kollm_cli, spec):
    """The release published as git + git-lfs repos, served by olah (offline) on 127.0.0.1."""
    if shutil.which("git-lfs") is None:
        pytest.skip("git-lfs is not installed (make setup installs it with apt as root)")
    olah = Path(sys.executable).parent / "olah-cli"
    if not olah.exists():
        pytest.skip("olah is not installed (make setup installs the hub-mirror extra)")
    root = tmp_path_factory.mktemp("mirror")
    first = kollm_cli("publish", str(spec), "--to", f"mirror:{root / 'mirrors'}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = kollm_cli("publish", str(spec), "--to", f"mirror:{root / 'mirrors'}")
    assert again.returncode == 0 and again.stdout.count("unchanged:") == 2, again.stdout
    port = _free_port()
    (root / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n[accessibility]\noffline = true\n',
        encoding="utf-8",
    )
    log = (root / "olah.out").open("w")
    server = subprocess.Popen(
        [str(olah), "-c", str(root / "olah.toml"), "--log-path", str(root / "logs")], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"olah did not start: {(root / 'olah.out').read_text()[-2000:]}")
                time.sleep(0.3)
        yield root, url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_mirror_repo_is_one_tagged_lfs_commit(mirror):
    root, _ = mirror
    repo = root / "mirrors" / "models" / "local" / "ko-tiny-GGUF"
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s %D"], capture_output=True, text=True).stdout
    assert log.strip().splitlines() == ["Release v0.1.0 HEAD -> main, tag: v0.1.0"]
    pointer = subprocess.run(
        ["git", "-C", str(repo), "show", "v0.1.0:ko-tiny-Q8_0.gguf"], capture_output=True, text=True
    ).stdout
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1\noid sha256:")


def test_pull_through_olah_over_http(mirror, kollm_cli, publish_release, tmp_path, env):
    _, url = mirror
    models = tmp_path / "models"
    done = kollm_cli(
        "pull", "local/ko-tiny-GGUF:Q8_0", "--endpoint", url, "--revision", "v0.1.0", "--to", str(models), env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path = models / "ko-tiny-Q8_0.gguf"
    assert sha256_file(path) == _gguf_record(publish_release, "ko-tiny-Q8_0.gguf")["sha256"]
    assert 'PARAMETER stop "<|im_end|>"' in (models / "ko-tiny-Q8_0.Modelfile").read_text(encoding="utf-8")
    missing = kollm_cli("pull", "local/ko-tiny-GGUF:Q2_K", "--endpoint", url, "--to", str(models), env=env)
    assert missing.returncode == 9 and "Available: Q4_K_M, Q8_0" in missing.stderr
    _assert_token_nowhere([done.stdout, done.stderr], models)


def test_hub_verification_and_noop_rerun_against_olah(mirror, kollm_cli, spec, publish_release, env):
    """The Hub publisher's read side (refs, get_paths_info with LFS sha256) against a real server."""
    from kollm.manifest import FileRecord
    from kollm.publish import hub
    from kollm.publish.plan import PublishConfig, build_plans

    _, url = mirror
    manifest = json.loads((publish_release / MANIFEST_NAME).read_text(encoding="utf-8"))
    cfg = PublishConfig(target="mirror:unused", name="ko-tiny", version="v0.1.0")
    plans = build_plans(cfg, manifest=manifest, out_dir=publish_release, scores=[])
    api = hub.make_api(url)
    for plan in plans:
        assert hub.verify_remote(api, plan, revision="v0.1.0") == []
    bad = plans[1]
    bad.records[0] = FileRecord(path=bad.records[0].path, size=bad.records[0].size, sha256="0" * 64)
    assert hub.verify_remote(api, bad, revision="v0.1.0") == [
        f"{bad.records[0].path}: LFS sha256/size differ from the manifest"
    ]

    # Re-publishing a finished release to the "Hub" is a no-op: refs are read, the tag verified, nothing written.
    done = kollm_cli("publish", str(spec), "--to", "hf://local/ko-tiny", "--endpoint", url, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unchanged: local/ko-tiny@v0.1.0" in done.stdout and "unchanged: local/ko-tiny-GGUF@v0.1.0" in done.stdout
    _assert_token_nowhere([done.stdout, done.stderr])
