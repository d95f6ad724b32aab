"""`kollm release`: merge → exports → verification → publish, with a manifest of everything.

Stages report progress through callbacks; this module owns the rich progress display, the CLI only prints
the summary it returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from kollm.config import GGUF_FLOAT_TYPES, ReleaseSpec
from kollm.manifest import (
    MANIFEST_NAME,
    ArtifactRecord,
    record_files,
    remove_stale_temps,
    tool_versions,
    write_json_atomic,
)
from kollm.publish import local
from kollm.release import gguf, merge, quality, quantized, verify_gguf
from kollm.release.inputs import ResolvedInput, resolve

_TOOLS = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "llama-cpp-python",
    "gguf",
    "huggingface_hub",
    "llmcompressor",
    "compressed-tensors",
    "bitsandbytes",
)


@dataclass
class SummaryRow:
    """One line of the release summary."""

    artifact: str
    path: str
    size: int
    seconds: float
    check: str


@dataclass
class ReleaseResult:
    """What a release produced."""

    out_dir: Path
    manifest_path: Path
    rows: list[SummaryRow]
    published: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Display:
    """Rich progress on stderr; silent when disabled (tests, --json)."""

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.progress = (
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            if enabled
            else None
        )

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Any]:
        if self.progress is None:
            yield lambda done, total: None
            return
        task = self.progress.add_task(description, total=total)

        def update(done: int, total_: int) -> None:
            self.progress.update(task, completed=done, total=total_)

        try:
            yield update
        finally:
            current = self.progress.tasks[task]
            self.progress.update(task, completed=current.total or 1, total=current.total or 1)


def _artifact(name: str, kind: str, root: Path, paths: list[Path], seconds: float, **extra: Any) -> ArtifactRecord:
    return ArtifactRecord(
        name=name,
        kind=kind,
        path=paths[0].parent.relative_to(root).as_posix() if len(paths) > 1 else paths[0].relative_to(root).as_posix(),
        files=record_files(root, paths),
        seconds=round(seconds, 3),
        **extra,
    )


def run_release(spec: ReleaseSpec, *, spec_path: Path | None = None, show_progress: bool = True) -> ReleaseResult:
    """Run a whole release described by ``spec``.

    Args:
        spec: the validated release spec.
        spec_path: the YAML it came from (recorded in the manifest).
        show_progress: draw rich progress bars on stderr.

    Returns:
        The summary rows, the manifest path and the published repos.

    Raises:
        KollmError subclasses for every user-fixable problem; nothing is published unless all checks pass.
    """
    started = time.perf_counter()
    out = spec.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    work = out / ".work"
    display = _Display(show_progress)
    rows: list[SummaryRow] = []
    artifacts: list[ArtifactRecord] = []

    base = resolve(spec.base, revision=spec.base_revision, trust_remote_code=spec.trust_remote_code, what="base model")
    adapters: list[ResolvedInput] = [resolve(a, what="adapter") for a in spec.adapters]

    ctx = display.progress if display.progress is not None else _null()
    with ctx:
        merged_dir = (out / "merged") if spec.exports.safetensors else (work / "merged")
        with display.step("merge", total=None) as update:
            merged = merge.run(
                merge.MergeConfig(allow_pickle=spec.allow_pickle, trust_remote_code=spec.trust_remote_code),
                base=base.path,
                adapters=[a.path for a in adapters],
                out_dir=merged_dir,
                progress=update,
            )
        if spec.exports.safetensors:
            record = _artifact(
                "merged",
                "safetensors",
                out,
                [p for p in merged_dir.iterdir() if p.is_file()],
                merged.seconds,
                details={
                    "merged_tensors": merged.merged_tensors,
                    "replaced_tensors": merged.replaced_tensors,
                },
            )
            record.checks = {"sha256": "recorded"}
            artifacts.append(record)
            rows.append(SummaryRow("merged (safetensors)", record.path, record.size, merged.seconds, "ok"))

        gguf_result = None
        if spec.exports.gguf:
            with display.step("gguf: convert + quantize", total=len(spec.exports.gguf)) as update:
                count = 0

                def on_file(_: gguf.GgufFile) -> None:
                    nonlocal count
                    count += 1
                    update(count, len(spec.exports.gguf))

                gguf_result = gguf.run(
                    gguf.GgufConfig(name=spec.name, types=spec.exports.gguf, pre_tokenizer=spec.gguf_pre_tokenizer),
                    model_dir=merged_dir,
                    out_dir=out / "gguf",
                    work_dir=work,
                    on_file=on_file,
                )
            with display.step("verify gguf", total=len(gguf_result.files)) as update:
                reference = verify_gguf.hf_reference(merged_dir, spec.verify.prompts)
                for i, item in enumerate(gguf_result.files, start=1):
                    is_float = item.gguf_type in GGUF_FLOAT_TYPES and item.gguf_type != "bf16"
                    check = verify_gguf.check_gguf(
                        item.path, reference, atol=spec.verify.f16_logits_atol if is_float else None
                    )
                    record = _artifact(
                        f"gguf-{item.gguf_type}",
                        "gguf",
                        out,
                        [item.path],
                        item.seconds,
                        checks=check.checks,
                        details={
                            "tensor_types": item.tensor_types,
                            "fallback_tensors": item.fallback_tensors,
                        },
                    )
                    artifacts.append(record)
                    verdict = f"ok, Δlogit {check.max_logit_diff:.3f}, top-1 {check.top1_agreement:.0%}" + (
                        f" (≤ {spec.verify.f16_logits_atol})" if is_float else ""
                    )
                    rows.append(SummaryRow(f"gguf {item.gguf_type}", record.path, record.size, item.seconds, verdict))
                    update(i, len(gguf_result.files))

        if spec.exports.gptq or spec.exports.bnb_4bit:
            steps = int(spec.exports.gptq) + int(spec.exports.bnb_4bit)
            with display.step("gptq / bnb-4bit + verify", total=steps) as update:
                quant = quantized.run_exports(spec, merged_dir=merged_dir, out=out, progress=update)
            artifacts.extend(quant.records)
            rows.extend(SummaryRow(q.artifact, q.path, q.size, q.seconds, q.check) for q in quant.lines)
        quality_report = None
        if spec.exports.quality_report:
            merged_size = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
            reference = quality.QualityInput("merged", "hf", merged_dir, merged_size, merged.seconds)
            with display.step("quality report", total=None) as update:
                quality_report = quantized.run_report(merged=reference, records=artifacts, out=out, progress=update)
            if display.progress is not None:
                display.console.print(quality.format_table(quality_report))

    manifest: dict[str, Any] = {
        "kollm_manifest": 1,
        "release": spec.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": json.loads(spec.model_dump_json()),
        "spec_file": str(spec_path) if spec_path else None,
        "base": {
            "source": base.source,
            "kind": base.kind,
            "revision": base.revision,
            "files_sha256": merged.base_files,
        },
        "adapters": [{"source": a.source, **vars(p)} for a, p in zip(adapters, merged.adapters, strict=True)],
        "merge": {"engine": "kollm-streaming", "config_changes": merged.config_changes},
        "gguf": {
            "pre_tokenizer": gguf_result.pre_tokenizer,
            "converter": gguf_result.converter,
        }
        if gguf_result
        else None,
        "quality": {
            "json": quality_report.json_path.name,
            "png": quality_report.png_path.name,
            "rows": [vars(r) for r in quality_report.rows],
        }
        if quality_report
        else None,
        "tools": tool_versions(*_TOOLS),
        "artifacts": [a.model_dump() for a in artifacts],
    }
    manifest_path = out / MANIFEST_NAME
    write_json_atomic(manifest_path, manifest)

    published: list[str] = []
    if spec.publish:
        repos = []
        if spec.exports.safetensors:
            repos.append(local.RepoFiles(spec.name, {p.name: p for p in merged_dir.iterdir() if p.is_file()}))
        if gguf_result:
            repos.append(local.RepoFiles(f"{spec.name}-GGUF", {f.path.name: f.path for f in gguf_result.files}))
        for record in (a for a in artifacts if a.kind in ("gptq", "bnb-4bit")):
            directory = out / record.path
            suffix = "GPTQ-W4A16" if record.kind == "gptq" else "bnb-4bit"
            repos.append(
                local.RepoFiles(f"{spec.name}-{suffix}", {p.name: p for p in directory.iterdir() if p.is_file()})
            )
        done = local.publish(local.parse_target(spec.publish), repos, manifest)
        published = [str(r.path) for r in done]
    return ReleaseResult(out, manifest_path, rows, published, time.perf_counter() - started)


@contextmanager
def _null() -> Iterator[None]:
    yield None
