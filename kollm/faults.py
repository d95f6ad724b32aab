"""Deterministic crash points for the reliability tests.

``KOLLM_TEST_KILL_AT=<step>:<phase>`` makes the release SIGKILL its own process group when ``<step>`` reaches
``<phase>``: ``before`` (about to start), ``mid`` (first progress report or first temp file about to be
renamed into place) or ``after`` (outputs written, state not yet recorded). Without the variable these calls
cost one dict lookup. Only the test suite sets it.
"""

from __future__ import annotations

import contextvars
import os
import signal

ENV = "KOLLM_TEST_KILL_AT"
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("kollm_current_step", default=None)


def kill_point(phase: str, step: str | None = None) -> None:
    """SIGKILL this release if the test hook names this step and phase; otherwise do nothing."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name = step if step is not None else current_step.get()
    if name is None or wanted != f"{name}:{phase}":
        return
    # Kill the whole group (converter subprocesses included) only when this process leads it, i.e. the test
    # started it in a new session; never take down whoever launched us.
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
