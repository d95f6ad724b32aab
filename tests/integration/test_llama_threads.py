"""GGUF models opened from several threads at once must leave the process's stdout and stderr where they were.

llama-cpp-python's quiet load swaps sys.stdout/sys.stderr and dup2s fds 1 and 2 to /dev/null, then restores what
it saved; overlapping loads restore each other's /dev/null (a release once exited 0 without printing its summary).
"""

import os
import sys
import threading
from pathlib import Path

import pytest

from kollm.llamacpp import open_llama
from kollm.release import gguf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def f16(ko_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("threads-gguf")
    cfg = gguf.GgufConfig(name="ko-tiny-base", types=["f16"])
    return gguf.run(cfg, model_dir=ko_tiny.base, out_dir=out, work_dir=out / ".work").files[0].path


def test_concurrent_loads_keep_stdout_and_stderr(f16):
    before = (sys.stdout, sys.stderr, os.fstat(1), os.fstat(2))
    errors: list[BaseException] = []

    def load(barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            open_llama(f16, n_ctx=64, n_threads=1).close()
        except BaseException as e:  # surfaced below
            errors.append(e)

    for _ in range(4):
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=load, args=(barrier,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sys.stdout is before[0] and sys.stderr is before[1]
    assert os.path.samestat(os.fstat(1), before[2]) and os.path.samestat(os.fstat(2), before[3])
