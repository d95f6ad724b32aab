"""Starting an OpenAI-compatible server process, waiting until it really serves, and stopping it cleanly.

A server's ``/health`` goes green before its first forward pass (vLLM), so readiness here means: health is
200 *and* one real completion came back. Servers run in their own process group so a stop takes their
workers with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kollm.errors import KollmError


class ServerStartError(KollmError):
    """A server process exited or did not become ready in time."""

    exit_code = 10

    def __init__(self, backend: str, detail: str, log: Path) -> None:
        self.backend = backend
        self.log = str(log)
        super().__init__(f"The {backend} server did not become ready: {detail}.", hint=f"Its log is at {log}.")


@dataclass
class ServerHandle:
    """A running server."""

    backend: str
    base_url: str  # ends in /v1
    model: str
    api_key: str | None
    process: subprocess.Popen
    log: Path


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _get(url: str, api_key: str | None, timeout: float) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def _one_completion(base_url: str, model: str, api_key: str | None, timeout: float) -> bool:
    body = json.dumps({"model": model, "prompt": "안녕", "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200 and bool(json.loads(response.read())["choices"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def start(
    backend: str,
    cmd: list[str],
    *,
    base_url: str,
    health_url: str,
    model: str,
    api_key: str | None,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> ServerHandle:
    """Launch ``cmd`` in its own process group and wait until it serves a real completion.

    Raises:
        ServerStartError: the process died, or was not ready within ``timeout`` seconds (then it is stopped).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    handle = ServerHandle(backend, base_url, model, api_key, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise ServerStartError(backend, f"it exited with code {process.returncode} ({' | '.join(tail)})", log)
        if _get(health_url, api_key, 5) == 200 and _one_completion(base_url, model, api_key, 60):
            return handle
        time.sleep(1.0)
    stop(handle)
    raise ServerStartError(backend, f"not ready after {timeout:.0f} s", log)


def stop(handle: ServerHandle, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if handle.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(handle.process.pid, signal.SIGTERM)
    try:
        handle.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.process.pid, signal.SIGKILL)
        handle.process.wait(timeout=10)


@contextlib.contextmanager
def running(handle: ServerHandle) -> Iterator[ServerHandle]:
    """Stop the server when the block ends, however it ends."""
    try:
        yield handle
    finally:
        stop(handle)
