"""Eval suites: read ``evalsuites/suites.yaml``, pick Hub or offline tasks, check data before any model loads."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kollm.config import format_validation_errors, read_yaml
from kollm.errors import EvalDataMissingError, SpecError, UnknownSuiteError

EVALSUITES_DIR = Path(__file__).resolve().parents[2] / "evalsuites"
SUITES_FILE = EVALSUITES_DIR / "suites.yaml"
SAMPLE_DATA_DIR = EVALSUITES_DIR / "data"
_DATA_DIR_TOKEN = "{data_dir}"


class HubSource(BaseModel):
    """The real data set, read through lm-eval from the Hub."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="lm-eval task or group names.")
    dataset: str = Field(description="Hub dataset id the tasks read.")
    revision: str = Field(description="Dataset revision the scores are for.")
    builtin_dir: str | None = Field(
        None,
        description="Folder under lm_eval/tasks/ holding built-in tasks; kollm indexes only these folders, since "
        "indexing all of lm-eval's tasks costs 10-30 s per run.",
    )


class OfflineSource(BaseModel):
    """kollm's task over local files in the same schema."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="Task names defined under evalsuites/.")
    files: list[str] = Field(min_length=1, description="Files the tasks read, relative to the data dir.")


class SuiteSpec(BaseModel):
    """One gate name: which tasks, and the protocol that makes its score comparable."""

    model_config = ConfigDict(extra="forbid")

    title: str
    hub: HubSource
    offline: OfflineSource
    num_fewshot: int = Field(ge=0, description="Few-shot examples per question.")
    chat_template: bool = Field(description="Wrap prompts in the model's chat template.")
    metric: str = Field(description="lm-eval metric name the gate compares, e.g. acc.")
    aggregation: Literal["micro", "macro"] = Field(
        description="micro: mean over all questions; macro: mean of the per-subject means."
    )


class SuitesFile(BaseModel):
    """The whole suites.yaml."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    suites: dict[str, SuiteSpec]


@dataclass(frozen=True)
class PlannedSuite:
    """A suite as it will run: its tasks and where the data comes from."""

    name: str
    spec: SuiteSpec
    tasks: list[str]
    mode: Literal["hub", "offline"]
    dataset: str
    revision: str | None

    @property
    def protocol(self) -> dict[str, object]:
        """What a score of this suite means; printed and recorded with it."""
        return {
            "tasks": self.tasks,
            "num_fewshot": self.spec.num_fewshot,
            "chat_template": self.spec.chat_template,
            "metric": self.spec.metric,
            "aggregation": self.spec.aggregation,
            "dataset": self.dataset,
            "revision": self.revision,
            "mode": self.mode,
        }


def load_suites(path: Path | None = None) -> dict[str, SuiteSpec]:
    """Read and validate suites.yaml.

    Args:
        path: the file; default ``evalsuites/suites.yaml``.

    Returns:
        Gate name -> suite spec.

    Raises:
        SpecError: listing every problem in the file.
    """
    path = path or SUITES_FILE
    try:
        return SuitesFile.model_validate(read_yaml(path)).suites
    except ValidationError as e:
        raise SpecError(path, format_validation_errors(e)) from e


def offline_requested(data_dir: Path | None) -> bool:
    """Offline when a data dir is given or the Hugging Face offline switches are on."""
    flags = (os.environ.get("HF_DATASETS_OFFLINE", ""), os.environ.get("HF_HUB_OFFLINE", ""))
    return data_dir is not None or any(f.lower() in ("1", "true", "yes") for f in flags)


def plan(
    names: list[str], *, data_dir: Path | None = None, offline: bool | None = None, suites_file: Path | None = None
) -> list[PlannedSuite]:
    """Resolve suite names to tasks and check their data, so mistakes surface before a model loads.

    Args:
        names: suite names, e.g. ``["kmmlu", "click"]``.
        data_dir: folder with the offline files; default the bundled samples when offline.
        offline: force offline (True) or Hub (False); default ``offline_requested(data_dir)``.
        suites_file: another suites.yaml.

    Returns:
        One planned suite per name, in order.

    Raises:
        UnknownSuiteError: a name is not in suites.yaml (with a did-you-mean).
        EvalDataMissingError: an offline file is missing, empty or not JSON lines.
    """
    suites = load_suites(suites_file)
    use_offline = offline_requested(data_dir) if offline is None else offline
    root = (data_dir or SAMPLE_DATA_DIR).resolve()
    planned = []
    for name in dict.fromkeys(names):
        if name not in suites:
            raise UnknownSuiteError(name, sorted(suites))
        spec = suites[name]
        if use_offline:
            for file in spec.offline.files:
                _check_jsonl(name, root / file)
            planned.append(PlannedSuite(name, spec, spec.offline.tasks, "offline", str(root), None))
        else:
            planned.append(PlannedSuite(name, spec, spec.hub.tasks, "hub", spec.hub.dataset, spec.hub.revision))
    return planned


def _check_jsonl(suite: str, path: Path) -> None:
    from kollm.evals.ko_ifeval import unknown_instructions

    if not path.is_file():
        raise EvalDataMissingError(suite, path, "does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise EvalDataMissingError(suite, path, "is empty")
    for number, line in enumerate(lines, start=1):
        try:
            item = json.loads(line)
        except ValueError as e:
            raise EvalDataMissingError(suite, path, f"line {number} is not JSON ({e})") from e
        unknown = unknown_instructions(item.get("instruction_id_list", []))
        if unknown:
            raise EvalDataMissingError(suite, path, f"line {number} uses instructions kollm cannot check: {unknown}")


def builtin_dirs(planned: list[PlannedSuite]) -> list[Path]:
    """lm-eval's own task folders the planned suites need (none offline)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    return [root / s.spec.hub.builtin_dir for s in planned if s.mode == "hub" and s.spec.hub.builtin_dir]


def render_include_dir(planned: list[PlannedSuite], target: Path, *, data_dir: Path | None = None) -> Path:
    """Copy the task folders to ``target`` with ``{data_dir}`` filled in, for lm-eval's ``include_path``.

    Args:
        planned: the suites that will run (only their folders are copied).
        target: an empty folder (a temporary one, usually).
        data_dir: folder with the offline files; default the bundled samples.

    Returns:
        ``target``.
    """
    root = str((data_dir or SAMPLE_DATA_DIR).resolve())
    for suite in planned:
        source = EVALSUITES_DIR / suite.name
        if not source.is_dir():
            continue  # a suite made only of lm-eval's built-in tasks has no folder
        dest = target / suite.name
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        for task_yaml in dest.glob("*yaml"):
            text = task_yaml.read_text(encoding="utf-8")
            task_yaml.write_text(text.replace(_DATA_DIR_TOKEN, root), encoding="utf-8")
    return target
