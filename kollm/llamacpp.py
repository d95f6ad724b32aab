"""Opening GGUF models in llama-cpp-python from several threads without losing the process's stdout/stderr.

With ``verbose=False`` llama-cpp-python silences llama.cpp while a model loads by pointing ``sys.stdout`` /
``sys.stderr`` *and* file descriptors 1 and 2 at /dev/null, then restoring what it saved. Two loads that overlap in
threads (a release verifies and scores GGUFs concurrently) save each other's /dev/null and restore it: the process
then writes its output into /dev/null for good — seen as `kollm release` exiting 0 with no summary. Loads are
therefore serialised here; every kollm call site opens models through :func:`open_llama`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

_LOAD_LOCK = threading.Lock()


def open_llama(path: Path | str, **kwargs: Any) -> Llama:
    """``llama_cpp.Llama(path, verbose=False, **kwargs)``, one load at a time in this process."""
    from llama_cpp import Llama

    kwargs.setdefault("verbose", False)
    with _LOAD_LOCK:
        return Llama(model_path=str(path), **kwargs)
