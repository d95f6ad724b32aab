"""A one-thread write-behind queue: disk writes and hashing overlap the merge arithmetic.

File writes and ``hashlib`` updates on large buffers release the GIL, as do torch's kernels, so one
background thread doing the I/O-side work in submission order lets a merge on two cores run its
arithmetic while the previous block is hashed and written. The queue is short, so memory stays bounded
by a few blocks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class WriteBehind:
    """Runs submitted calls in order on one background thread; errors resurface in the submitting thread."""

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kollm-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, arg = item
            if self._error is None:  # after a failure, drain without doing more work
                try:
                    func(arg)
                except BaseException as e:  # handed to the submitting thread
                    self._error = e

    def submit(self, func: Callable[[Any], object], arg: Any) -> None:
        """Queue ``func(arg)``; blocks while the queue is full.

        Raises:
            BaseException: the error of an earlier call, so the merge stops at the first failed write.
        """
        if self._error is not None:
            raise self._error
        self._queue.put((func, arg))

    def drain(self) -> None:
        """Wait for every queued call and stop the thread; re-raise the first error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
