"""Time publishing the demo release (local registry, git mirror) and pulling its Q4_K_M (local, olah over HTTP).

Usage: .venv/bin/python bench/publish_pull.py [--work DIR]
Writes bench/results/publish_pull.json. Builds the demo release first if DIR has none (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kollm.config import load_release_spec
from kollm.manifest import tool_versions
from kollm.publish import publisher, pull
from kollm.publish.plan import PublishConfig
from kollm.release.pipeline import run_release

REPO = Path(__file__).resolve().parents[1]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return round(time.perf_counter() - start, 3), result


def _olah(root: Path, mirrors: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (root / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{mirrors}"]\n[accessibility]\noffline = true\n',
        encoding="utf-8",
    )
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "olah-cli"),
            "-c",
            str(root / "olah.toml"),
            "--log-path",
            str(root / "logs"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise SystemExit("olah did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Working directory (default: a temp dir).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kollm-bench-publish-"))
    spec = load_release_spec(REPO / "release" / "ko-tiny.yaml", {"output_dir": work / "out"})
    out = spec.out_dir.resolve()
    if not (out / "kollm-manifest.json").is_file():
        run_release(spec, show_progress=False)
    release_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and ".work" not in p.parts)

    rows: dict[str, float] = {}
    for scheme in ("local", "mirror"):
        target = work / scheme
        shutil.rmtree(target, ignore_errors=True)
        cfg = PublishConfig(target=f"{scheme}:{target}", name=spec.name, version=spec.version or "v0.1.0")
        rows[f"publish {scheme}: first"], _ = _timed(lambda cfg=cfg: publisher.run(cfg, out_dir=out))
        rows[f"publish {scheme}: re-run (no-op)"], _ = _timed(lambda cfg=cfg: publisher.run(cfg, out_dir=out))
    rows["pull local Q4_K_M"], _ = _timed(
        lambda: pull.run(pull.PullConfig(ref="ko-tiny-GGUF:Q4_K_M", to=work / "pulled-local", registry=work / "local"))
    )
    server, url = _olah(work, work / "mirror")
    try:
        rows["pull via olah (HTTP) Q4_K_M"], _ = _timed(
            lambda: pull.run(
                pull.PullConfig(
                    ref="local/ko-tiny-GGUF:Q4_K_M", to=work / "pulled-olah", endpoint=url, revision="v0.1.0"
                )
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {
        "what": "kollm publish/pull of the demo release (ko-tiny: merged safetensors + 4 GGUF types)",
        "release_bytes": release_bytes,
        "seconds": rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tools": tool_versions("huggingface_hub", "olah"),
        "git_lfs": subprocess.run(["git", "lfs", "version"], capture_output=True, text=True).stdout.strip(),
    }
    path = REPO / "bench" / "results" / "publish_pull.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
