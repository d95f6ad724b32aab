"""Resume for real: SIGKILL the release at every step boundary and inside every step, fill the disk, re-run.

The release runs as a user runs it (the `kollm` CLI in a subprocess, in its own session so the kill takes the
converter subprocesses with it). ``KOLLM_TEST_KILL_AT=<step>:<phase>`` makes it SIGKILL itself at an exact
point, so every crash point is hit deterministically rather than by racing a timer.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kollm.manifest import MANIFEST_NAME, sha256_file
from kollm.release.steps import STATE_NAME

pytestmark = pytest.mark.integration

STEPS = [
    "merge",
    "hf-reference",
    "gguf-f16",
    "gguf-q8_0",
    "verify-gguf-f16",
    "verify-gguf-q8_0",
    "manifest",
    "report",
    "publish",
]
SECRET = "hf_kollmTestSentinel0123456789abcdef"


def _spec(
    root: Path, *, gguf: str = "[f16, q8_0]", publish: bool = True, out: Path | None = None, version: str = "v0.1.0"
) -> Path:
    path = root / "spec.yaml"
    lines = [
        "name: ko-kill",
        "base: fixture:ko-tiny",
        "adapters: [fixture:ko-tiny/cpt, fixture:ko-tiny/sft]",
        f"exports: {{safetensors: true, gguf: {gguf}}}",
        f"output_dir: {out or root / 'out'}",
    ]
    if publish:
        lines += [f"publish: local:{root / 'reg'}", f"version: {version}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _release(spec: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_TOKEN": SECRET}
    env.pop("KOLLM_TEST_KILL_AT", None)
    if kill_at:
        env["KOLLM_TEST_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-c", "from kollm.cli import main; main()", "release", str(spec), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        start_new_session=True,  # the kill hook takes down its own process group, never pytest's
    )


def _normalised(manifest_path: Path) -> dict:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.pop("created")
    for artifact in manifest["artifacts"]:
        artifact.pop("seconds")
    return manifest


def _final_files(root: Path) -> dict[str, str]:
    """sha256 of every artifact file (not temporaries) under merged/ and gguf/."""
    found = {}
    for sub in ("merged", "gguf"):
        for path in (root / sub).rglob("*") if (root / sub).is_dir() else []:
            if path.is_file() and ".tmp-" not in path.as_posix():
                found[path.relative_to(root).as_posix()] = sha256_file(path)
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    spec = _spec(root)
    done = _release(spec, "--jobs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = {
        "manifest": _normalised(root / "out" / MANIFEST_NAME),
        "files": _final_files(root / "out"),
        "registry": sorted(p.relative_to(root / "reg").as_posix() for p in (root / "reg").rglob("*") if p.is_file()),
        "ran": json.loads(done.stdout)["ran"],
    }
    shutil.rmtree(root / "out")
    shutil.rmtree(root / "reg")
    return root, spec, reference


def test_plan_order_is_what_the_kill_chain_walks(uninterrupted):
    _, _, reference = uninterrupted
    assert sorted(reference["ran"]) == sorted(STEPS)


def test_sigkill_at_every_boundary_and_inside_every_step_then_resume(uninterrupted):
    root, spec, reference = uninterrupted
    out = root / "out"
    for step in STEPS:
        for phase in ("before", "mid", "after"):
            killed = _release(spec, "--jobs", "1", kill_at=f"{step}:{phase}")
            assert killed.returncode == -9, f"{step}:{phase} was not reached: {killed.stderr[-2000:]}"
            # What is on disk is either finished or a temporary: never a corrupted artifact.
            for name, digest in _final_files(out).items():
                assert reference["files"][name] == digest, f"after {step}:{phase}: {name} differs"
            if (out / STATE_NAME).exists():
                state = json.loads((out / STATE_NAME).read_text())
                assert set(state["steps"]) <= set(STEPS)
    done = _release(spec, "--jobs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["ran"] == ["publish"]  # killed after publishing, before recording it
    assert _normalised(out / MANIFEST_NAME) == reference["manifest"]
    assert _final_files(out) == reference["files"]
    assert not list(out.rglob("*.tmp-*")) and not list((root / "reg").rglob("*.tmp-*"))
    registry = sorted(p.relative_to(root / "reg").as_posix() for p in (root / "reg").rglob("*") if p.is_file())
    assert registry == reference["registry"]
    again = _release(spec, "--jobs", "1")
    assert again.returncode == 0 and json.loads(again.stdout)["ran"] == []


def test_kill_while_steps_run_concurrently_then_resume(uninterrupted):
    root, spec, reference = uninterrupted
    # Forcing two independent steps makes them run at once (-j 2); the kill lands while both are in flight.
    force = ("--force", "gguf-q8_0", "--force", "verify-gguf-f16")
    killed = _release(spec, "--jobs", "2", *force, kill_at="gguf-q8_0:mid")
    assert killed.returncode == -9
    done = _release(spec, "--jobs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gguf-q8_0" in json.loads(done.stdout)["ran"]
    assert _normalised(root / "out" / MANIFEST_NAME) == reference["manifest"]
    assert _final_files(root / "out") == reference["files"]


def test_changed_spec_reruns_only_what_it_touches(uninterrupted):
    root, _, _ = uninterrupted
    spec = _spec(root, gguf="[f16, q8_0, q4_k_m]", version="v0.2.0")  # new content needs a new version
    done = _release(spec, "--jobs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    ran = json.loads(done.stdout)["ran"]
    assert {"gguf-q4_k_m", "verify-gguf-q4_k_m", "manifest", "report", "publish"} <= set(ran)
    assert not {"merge", "hf-reference", "gguf-f16", "gguf-q8_0"} & set(ran)


def test_full_disk_keeps_finished_steps_and_says_so(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    # 7 MiB: the merged checkpoint (4.5 MB) fits, the f16 GGUF (4.4 MB) does not.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        spec = _spec(tmp_path, gguf="[f16]", publish=False, out=mount / "out")
        done = _release(spec, "--jobs", "1")
        assert done.returncode == 7, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        message = " ".join(done.stderr.split())
        assert "No space left on device" in message and "gguf-f16" in message and "ko-kill-F16.gguf" in message
        assert "MiB" in message and "re-run the same command" in message
        state = json.loads((mount / "out" / STATE_NAME).read_text())
        assert {"merge", "hf-reference"} <= set(state["steps"]) and "gguf-f16" not in state["steps"]
        for record in state["steps"]["merge"]["files"]:
            assert sha256_file(mount / "out" / record["path"]) == record["sha256"]
        assert not list((mount / "out").rglob("*.tmp-*"))
        assert not (mount / "out" / "gguf" / "ko-kill-F16.gguf").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_safetensors_only_no_remote_code_and_no_token_in_outputs(tmp_path, ko_tiny):
    base = tmp_path / "base"
    shutil.copytree(ko_tiny.base, base)
    (base / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: ko-safe\nbase: {base}\nadapters: [{ko_tiny.adapters['sft']}]\n"
        f"exports: {{safetensors: true, gguf: []}}\noutput_dir: {tmp_path / 'out'}\n"
    )
    done = _release(spec)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((tmp_path / "out" / "merged").glob("*.py"))
    assert SECRET not in done.stdout + done.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
