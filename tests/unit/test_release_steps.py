"""The step-graph engine on toy steps: plan, skip after verifying hashes, re-run on change, concurrency."""

import errno
import json
import threading
from pathlib import Path

import pytest

from kollm.errors import DiskFullError, KollmError, StateFileError, UnknownStepError
from kollm.release.steps import STATE_NAME, Step, StepContext, StepOutput, execute, plan, read_state


def _writer(name: str, text: str, calls: list[str], inputs: tuple[str, ...] = ()) -> Step:
    def run(ctx: StepContext) -> StepOutput:
        calls.append(name)
        upstream = "".join(p.read_text() for n in inputs for p in ctx.files(n))
        path = ctx.out / f"{name}.txt"
        path.write_text(upstream + text)
        return StepOutput(files=[path], record={"chars": len(upstream + text)})

    return Step(name, run, inputs=inputs, config={"text": text})


def _graph(calls: list[str], a_text: str = "a") -> list[Step]:
    return [_writer("a", a_text, calls), _writer("b", "b", calls, ("a",)), _writer("c", "c", calls, ("a",))]


def test_second_run_skips_everything_after_verifying(tmp_path):
    calls: list[str] = []
    state = execute(_graph(calls), out=tmp_path, work=tmp_path / ".work")
    assert sorted(calls) == ["a", "b", "c"]
    assert (tmp_path / "b.txt").read_text() == "ab"
    assert state.steps["b"].record == {"chars": 2}
    on_disk = json.loads((tmp_path / STATE_NAME).read_text())
    assert set(on_disk["steps"]) == {"a", "b", "c"}
    calls.clear()
    execute(_graph(calls), out=tmp_path, work=tmp_path / ".work")
    assert calls == []
    assert [p.action for p in plan(_graph(calls), read_state(tmp_path), tmp_path)] == ["skip"] * 3


def test_changed_config_reruns_the_step_and_its_dependants(tmp_path):
    calls: list[str] = []
    execute(_graph(calls), out=tmp_path, work=tmp_path)
    calls.clear()
    planned = plan(_graph(calls, "A"), read_state(tmp_path), tmp_path)
    assert [(p.step.name, p.action) for p in planned] == [("a", "run"), ("b", "run"), ("c", "run")]
    assert planned[0].reason == "spec or inputs changed"
    execute(_graph(calls, "A"), out=tmp_path, work=tmp_path)
    assert sorted(calls) == ["a", "b", "c"]
    assert (tmp_path / "c.txt").read_text() == "Ac"


def test_tampered_output_is_detected_and_rebuilt(tmp_path):
    calls: list[str] = []
    execute(_graph(calls), out=tmp_path, work=tmp_path)
    (tmp_path / "b.txt").write_text("corrupted")
    calls.clear()
    planned = {p.step.name: p for p in plan(_graph(calls), read_state(tmp_path), tmp_path)}
    assert planned["b"].action == "run" and "b.txt" in planned["b"].reason
    execute(_graph(calls), out=tmp_path, work=tmp_path)
    assert calls == ["b"]
    assert (tmp_path / "b.txt").read_text() == "ab"


def test_forced_step_reruns_and_identical_output_spares_dependants(tmp_path):
    calls: list[str] = []
    execute(_graph(calls), out=tmp_path, work=tmp_path)
    calls.clear()
    execute(_graph(calls), out=tmp_path, work=tmp_path, force=("a",))
    assert calls == ["a"]  # a's bytes came out the same, so b and c stay valid


def test_unknown_forced_step_suggests_the_closest(tmp_path):
    with pytest.raises(UnknownStepError, match="Did you mean 'a'"):
        plan(_graph([]), read_state(tmp_path), tmp_path, force=("aa",))


def test_independent_steps_run_concurrently(tmp_path):
    both_started = threading.Barrier(2, timeout=20)

    def meet(name: str) -> Step:
        def run(ctx: StepContext) -> StepOutput:
            both_started.wait()  # raises BrokenBarrierError unless the other step runs at the same time
            return StepOutput(record={"name": name})

        return Step(name, run)

    state = execute([meet("x"), meet("y")], out=tmp_path, work=tmp_path, max_workers=2)
    assert set(state.steps) == {"x", "y"}


def test_disk_full_names_the_path_and_keeps_earlier_state(tmp_path):
    calls: list[str] = []

    def full(ctx: StepContext) -> StepOutput:
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out / "big.bin"))

    steps = [_writer("a", "a", calls), Step("big", full, inputs=("a",), disk_bytes=5 * 1024**3)]
    with pytest.raises(DiskFullError) as caught:
        execute(steps, out=tmp_path, work=tmp_path)
    message = str(caught.value)
    assert "big.bin" in message and "'big'" in message and "5120.0 MiB" in message
    assert set(read_state(tmp_path).steps) == {"a"}


def test_a_failing_step_lets_the_running_one_finish_and_records_it(tmp_path):
    release = threading.Event()

    def slow(ctx: StepContext) -> StepOutput:
        release.wait(20)
        return StepOutput(record={"ok": True})

    def bad(ctx: StepContext) -> StepOutput:
        release.set()
        raise KollmError("boom")

    with pytest.raises(KollmError, match="boom"):
        execute([Step("slow", slow), Step("bad", bad)], out=tmp_path, work=tmp_path, max_workers=2)
    assert set(read_state(tmp_path).steps) == {"slow"}


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    (tmp_path / STATE_NAME).write_text('{"version": 1, "steps": {"a": {"oops": 1}}}')
    with pytest.raises(StateFileError, match="Delete it"):
        read_state(tmp_path)


def test_step_output_outside_root_is_rejected(tmp_path: Path):
    outside = tmp_path.parent / "elsewhere.txt"

    def escape(ctx: StepContext) -> StepOutput:
        return StepOutput(files=[outside])

    with pytest.raises(ValueError):
        execute([Step("escape", escape)], out=tmp_path, work=tmp_path)
