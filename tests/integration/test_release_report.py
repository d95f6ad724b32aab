"""The release report rendered by a real browser (headless Chromium): what a user sees, asserted on the DOM."""

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from kollm.manifest import MANIFEST_NAME, sha256_file
from kollm.release import report

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _dom(page: Path, profile: Path) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        "--dump-dom",
    ]
    done = subprocess.run([CHROMIUM, *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, ko_tiny, kollm_cli):
    root = tmp_path_factory.mktemp("report")
    spec = root / "spec.yaml"
    spec.write_text(
        f"name: ko-report\nbase: {ko_tiny.base}\nadapters: [{ko_tiny.adapters['sft']}]\n"
        f"exports: {{safetensors: true, gguf: []}}\noutput_dir: {root / 'out'}\n"
    )
    done = kollm_cli("release", str(spec), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it with apt)")
def test_release_report_renders_artifacts_and_checksums(release_dir, tmp_path):
    dom = _dom(release_dir / "report.html", tmp_path / "profile")
    assert "Release ko-report" in dom
    manifest = json.loads((release_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    weights = next(f for f in manifest["artifacts"][0]["files"] if f["path"].endswith("model.safetensors"))
    assert weights["sha256"] == sha256_file(release_dir / weights["path"])
    assert weights["sha256"] in dom
    assert 'data-name="merged"' in dom and "vllm serve merged" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it with apt)")
def test_report_embeds_plots_and_gate_table(release_dir, tmp_path):
    manifest = json.loads((release_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "quality.png").write_bytes(_png(37, 11))
    manifest["plots"] = [{"path": "plots/quality.png", "title": "quality vs size"}]
    manifest["gates"] = [
        {"name": "kmmlu", "threshold": 30.0, "actual": 31.5, "passed": True},
        {"name": "click", "threshold": 40.0, "actual": 12.25, "passed": False},
    ]
    page = tmp_path / "report.html"
    page.write_text(report.render(manifest, out_dir=tmp_path), encoding="utf-8")
    shutil.rmtree(tmp_path / "plots")  # self-contained: the page must not need the file any more
    dom = _dom(page, tmp_path / "profile")
    assert 'data-width="37"' in dom  # the embedded PNG decoded in the browser
    assert dom.count('class="gate"') == 2
    assert '<td>kmmlu</td><td>30.0</td><td>31.5</td><td class="pass">pass</td>' in dom
    assert '<td class="fail">FAIL</td>' in dom
