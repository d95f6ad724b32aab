"""The release as a graph of steps: plan, fingerprints, a state file, resume, concurrent execution.

A step names the steps whose outputs it reads, the slice of the spec it depends on, and a function that
writes its outputs (temp + rename) and returns them. After each step the runner records, in
``kollm-state.json`` (written atomically), a fingerprint of the step's config and inputs plus the sha256 of
every output. A later run skips a step only when its fingerprint is unchanged and its outputs still hash to
the recorded values, so a release resumes after a crash, Ctrl-C or SIGKILL at any point.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kollm.errors import DiskFullError, StateFileError, UnknownStepError
from kollm.faults import current_step, kill_point
from kollm.manifest import FileRecord, record_files, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

STATE_NAME = "kollm-state.json"
_STATE_VERSION = 1
Progress = Callable[[int, int], None]
# sha256 of files already verified in this process, keyed by (path, size, mtime_ns): plan and run hash once.
HashCache = dict[tuple[str, int, int], str]


@dataclass(frozen=True)
class StepOutput:
    """What a step wrote and what later steps and the manifest need to know about it."""

    files: list[Path] = field(default_factory=list)  # absolute paths, each under the step's root
    record: dict[str, Any] = field(default_factory=dict)  # JSON-able and deterministic: no timings, no dates
    root: Path | None = None  # None: the release's output dir; publish steps write elsewhere


@dataclass
class StepContext:
    """Everything a running step may read: the output dirs and the finished steps' states."""

    out: Path
    work: Path
    states: dict[str, StepState]
    progress: Progress

    def record(self, step: str) -> dict[str, Any]:
        """The record a finished input step returned."""
        return self.states[step].record

    def files(self, step: str) -> list[Path]:
        """Absolute paths of a finished input step's outputs."""
        state = self.states[step]
        root = Path(state.root) if state.root else self.out
        return [root / f.path for f in state.files]


@dataclass(frozen=True)
class Step:
    """One node of the release graph. Add a step by appending one of these to the plan in pipeline.py."""

    name: str
    run: Callable[[StepContext], StepOutput]
    inputs: tuple[str, ...] = ()
    config: Any = None  # JSON-able slice of the spec this step depends on: a change re-runs the step
    external: dict[str, str] = field(default_factory=dict)  # fingerprints of inputs outside the graph
    memory_bytes: int = 0  # peak resident estimate, to bound concurrency by memory
    disk_bytes: int = 0  # output size estimate, quoted when the disk fills up
    title: str = ""  # what the progress display shows


class StepState(BaseModel):
    """A finished step as recorded in the state file."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str
    root: str | None = None
    files: list[FileRecord] = Field(default_factory=list)
    record: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    finished: str = ""


class ReleaseState(BaseModel):
    """The whole state file."""

    model_config = ConfigDict(extra="forbid")

    version: int = _STATE_VERSION
    steps: dict[str, StepState] = Field(default_factory=dict)


@dataclass(frozen=True)
class PlannedStep:
    """A step and what the runner expects to do with it."""

    step: Step
    action: str  # "run" or "skip"
    reason: str


def read_state(out: Path) -> ReleaseState:
    """Read ``kollm-state.json`` in ``out`` (an empty state if there is none).

    Raises:
        StateFileError: the file exists but is not a state file this kollm can read.
    """
    path = out / STATE_NAME
    if not path.is_file():
        return ReleaseState()
    try:
        state = ReleaseState.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as e:
        raise StateFileError(path, f"not a kollm state file ({type(e).__name__})") from e
    if state.version != _STATE_VERSION:
        raise StateFileError(path, f"state version {state.version}, this kollm writes {_STATE_VERSION}")
    return state


def fingerprint(step: Step, states: dict[str, StepState]) -> str:
    """sha256 over the step's name, config, external inputs and its input steps' fingerprints and outputs."""
    inputs = {
        name: [states[name].fingerprint, sorted(f.sha256 for f in states[name].files), states[name].record]
        for name in step.inputs
    }
    payload = {"step": step.name, "config": step.config, "external": step.external, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _verify(root: Path, files: list[FileRecord], hashes: HashCache) -> list[str]:
    problems = []
    for rec in files:
        path = root / rec.path
        if not path.is_file():
            problems.append(f"{rec.path}: missing")
            continue
        stat = path.stat()
        if stat.st_size != rec.size:
            problems.append(f"{rec.path}: size {stat.st_size} != {rec.size}")
            continue
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in hashes:
            hashes[key] = sha256_file(path)
        if hashes[key] != rec.sha256:
            problems.append(f"{rec.path}: sha256 differs")
    return problems


def _check_done(
    step: Step, state: StepState | None, states: dict[str, StepState], out: Path, hashes: HashCache
) -> str | None:
    """None when the recorded state still holds; otherwise why the step must run."""
    if state is None:
        return "not done yet"
    if state.fingerprint != fingerprint(step, states):
        return "spec or inputs changed"
    problems = _verify(Path(state.root) if state.root else out, state.files, hashes)
    if problems:
        return f"output changed ({problems[0]})"
    return None


def plan(
    steps: list[Step],
    state: ReleaseState,
    out: Path,
    *,
    force: tuple[str, ...] = (),
    hashes: HashCache | None = None,
) -> list[PlannedStep]:
    """Predict, without writing anything, which steps run and why (verifies recorded outputs' sha256).

    Raises:
        UnknownStepError: ``force`` names a step that is not in ``steps``.
    """
    _check_force(steps, force)
    hashes = {} if hashes is None else hashes
    planned: list[PlannedStep] = []
    running: set[str] = set()
    for step in steps:
        upstream = [n for n in step.inputs if n in running]
        if step.name in force:
            reason = "forced (--force)"
        elif upstream:
            reason = f"after {', '.join(upstream)} re-runs (skipped then if its inputs come out identical)"
        else:
            reason = _check_done(step, state.steps.get(step.name), state.steps, out, hashes) or ""
        if reason:
            running.add(step.name)
            planned.append(PlannedStep(step, "run", reason))
        else:
            planned.append(PlannedStep(step, "skip", f"done; {len(state.steps[step.name].files)} file(s) verified"))
    return planned


def _check_force(steps: list[Step], force: tuple[str, ...]) -> None:
    names = [s.name for s in steps]
    for name in force:
        if name not in names:
            raise UnknownStepError(name, names)


def memory_available() -> int:
    """Bytes of memory available now (MemAvailable), or 4 GiB where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


@dataclass
class RunHooks:
    """Callbacks the display uses: a step started, reported progress, finished or was skipped."""

    started: Callable[[Step], None] = lambda step: None
    progress: Callable[[Step, int, int], None] = lambda step, done, total: None
    finished: Callable[[Step, StepState, bool], None] = lambda step, state, ran: None


def execute(
    steps: list[Step],
    *,
    out: Path,
    work: Path,
    force: tuple[str, ...] = (),
    max_workers: int | None = None,
    hooks: RunHooks | None = None,
    hashes: HashCache | None = None,
) -> ReleaseState:
    """Run every step whose recorded state does not hold, independent ones concurrently.

    Args:
        steps: the plan, in an order where every step comes after its inputs.
        out: the release output directory (holds the state file).
        work: scratch directory for intermediates.
        force: step names to re-run regardless of their state.
        max_workers: most steps at once (default: CPU cores); memory estimates also bound it.
        hooks: display callbacks.

    Returns:
        The state after the run, also written to ``out/kollm-state.json`` after every step.

    Raises:
        DiskFullError: a step ran out of disk; whatever KollmError a step raised. Steps already running are
        allowed to finish and are recorded before the error propagates.
    """
    hooks = hooks or RunHooks()
    old = read_state(out)
    _check_force(steps, force)
    hashes = {} if hashes is None else hashes
    done_before: dict[str, bool] = {}  # decided once per step, when its inputs are final
    state = ReleaseState()
    by_name = {s.name: s for s in steps}
    pending = list(steps)
    workers = max_workers or max(1, min(os.cpu_count() or 1, 4))
    budget = int(memory_available() * 0.8)
    running: dict[Future[StepOutput], tuple[Step, float, str]] = {}
    failure: BaseException | None = None

    def save() -> None:
        try:
            write_json_atomic(out / STATE_NAME, json.loads(state.model_dump_json()))
        except OSError as e:
            raise _disk_full(e, Step(STATE_NAME, run=_no_run, disk_bytes=64 * 1024), out) or e from e

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kollm-step") as pool:
        try:
            while pending or running:
                launched = True
                while launched and failure is None:
                    launched = False
                    for step in list(pending):
                        if any(n not in state.steps for n in step.inputs):
                            continue
                        fp = fingerprint(step, state.steps)
                        if step.name not in done_before:
                            previous = old.steps.get(step.name)
                            done_before[step.name] = (
                                step.name not in force and _check_done(step, previous, state.steps, out, hashes) is None
                            )
                        if done_before[step.name]:
                            state.steps[step.name] = old.steps[step.name]
                            pending.remove(step)
                            save()
                            hooks.finished(step, state.steps[step.name], False)
                            launched = True
                            continue
                        in_use = sum(s.memory_bytes for s, _, _ in running.values())
                        if running and (len(running) >= workers or in_use + step.memory_bytes > budget):
                            continue
                        pending.remove(step)
                        kill_point("before", step.name)
                        hooks.started(step)
                        running[_submit(pool, step, out, work, state, hooks)] = (step, time.perf_counter(), fp)
                        launched = True
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    step, started, fp = running.pop(future)
                    try:
                        result = future.result()
                    except OSError as e:
                        failure = failure or _disk_full(e, step, out) or e
                        continue
                    except BaseException as e:
                        failure = failure or e
                        continue
                    kill_point("after", step.name)
                    root = result.root or out
                    state.steps[step.name] = StepState(
                        fingerprint=fp,
                        root=str(result.root) if result.root else None,
                        files=record_files(root, result.files),
                        record=result.record,
                        seconds=round(time.perf_counter() - started, 3),
                        finished=datetime.now(UTC).isoformat(timespec="seconds"),
                    )
                    save()
                    hooks.finished(step, state.steps[step.name], True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if failure is not None:
        raise failure
    missing = [s.name for s in pending if s.name not in state.steps]
    if missing:  # a step's input was never produced: a bug in the plan's order, not a user error
        raise RuntimeError(f"steps never became ready: {missing}; inputs: {[by_name[m].inputs for m in missing]}")
    return state


def _submit(
    pool: ThreadPoolExecutor, step: Step, out: Path, work: Path, state: ReleaseState, hooks: RunHooks
) -> Future[StepOutput]:
    def progress(done: int, total: int) -> None:
        kill_point("mid", step.name)
        hooks.progress(step, done, total)

    ctx = StepContext(out=out, work=work, states=dict(state.steps), progress=progress)
    context = contextvars.copy_context()
    context.run(current_step.set, step.name)  # atomic writes inside the step know which step they belong to
    return pool.submit(context.run, step.run, ctx)


def _disk_full(e: OSError, step: Step, out: Path) -> DiskFullError | None:
    if e.errno != errno.ENOSPC:
        return None
    path = Path(e.filename) if e.filename else out
    probe = path if path.exists() else out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free if probe.exists() else None
    return DiskFullError(path, step=step.name, needed=step.disk_bytes or None, free=free)


def _no_run(ctx: StepContext) -> StepOutput:
    raise NotImplementedError  # the state file's stand-in step is never run
