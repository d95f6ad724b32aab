"""The release's quantized exports beyond GGUF (GPTQ, bnb 4-bit) and the quality report over all exports.

Composes ``gptq``, ``bnb`` and ``quality`` for the pipeline: each export is verified and recorded with its
sha256, checks and time; the report then measures every export (GGUF included) against the merged model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kollm.config import ReleaseSpec
from kollm.manifest import ArtifactRecord, record_files
from kollm.release import bnb, gptq, quality

Progress = Callable[[int, int], None]


@dataclass
class Line:
    """One summary line for the pipeline's table."""

    artifact: str
    path: str
    size: int
    seconds: float
    check: str


@dataclass
class QuantizedResult:
    """Records for the manifest, summary lines, and the quality report when one was asked for."""

    records: list[ArtifactRecord] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    quality: quality.QualityResult | None = None


def _record(name: str, kind: str, root: Path, directory: Path, seconds: float, **extra: object) -> ArtifactRecord:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return ArtifactRecord(
        name=name,
        kind=kind,
        path=directory.relative_to(root).as_posix(),
        files=record_files(root, files),
        seconds=round(seconds, 3),
        **extra,  # type: ignore[arg-type]
    )


def run_exports(spec: ReleaseSpec, *, merged_dir: Path, out: Path, progress: Progress | None = None) -> QuantizedResult:
    """Write and verify the GPTQ and bnb-4bit exports a spec asks for.

    Args:
        spec: the release spec (``exports.gptq``, ``exports.bnb_4bit``, ``verify.prompts``).
        merged_dir: the merged 16-bit checkpoint.
        out: the release output directory (exports go to ``<out>/gptq-w4a16`` and ``<out>/bnb-nf4``).
        progress: called with (done, total) after each export.

    Returns:
        Manifest records and summary lines.

    Raises:
        ToolMissingError, CalibrationDataError, QuantizationError, VerificationError.
    """
    result = QuantizedResult()
    total = int(spec.exports.gptq) + int(spec.exports.bnb_4bit)
    if spec.exports.gptq:
        cfg = gptq.GptqConfig(calibration=spec.exports.gptq_calibration, num_samples=spec.exports.gptq_samples)
        done = gptq.run(cfg, model_dir=merged_dir, out_dir=out / "gptq-w4a16")
        checks = gptq.verify(done.out_dir, spec.verify.prompts)
        record = _record(
            "gptq-w4a16",
            "gptq",
            out,
            done.out_dir,
            done.seconds,
            checks=checks,
            details={
                "format": "compressed-tensors pack-quantized",
                "scheme": gptq.SCHEME,
                "group_size": gptq.GROUP_SIZE,
                "calibration": done.calibration,
                "calibration_samples": done.samples,
                "serve": "vLLM detects the format from config.json; do not pass --quantization",
            },
        )
        result.records.append(record)
        result.lines.append(Line("gptq w4a16", record.path, record.size, done.seconds, "ok, reloads + generates"))
        if progress:
            progress(1, total)
    if spec.exports.bnb_4bit:
        done_b = bnb.run(
            bnb.BnbConfig(), model_dir=merged_dir, out_dir=out / "bnb-nf4", probe_texts=spec.verify.prompts
        )
        record = _record(
            "bnb-nf4",
            "bnb-4bit",
            out,
            done_b.out_dir,
            done_b.seconds,
            checks=done_b.checks,
            details={"quantization_config": done_b.quantization_config},
        )
        result.records.append(record)
        result.lines.append(Line("bnb nf4", record.path, record.size, done_b.seconds, "ok, reload logits identical"))
        if progress:
            progress(total, total)
    return result


def run_report(
    *,
    merged: quality.QualityInput,
    records: list[ArtifactRecord],
    out: Path,
    comparisons: dict[str, quality.QualityInput] | None = None,
    progress: Progress | None = None,
) -> quality.QualityResult:
    """Measure every recorded export (GGUF, GPTQ, bnb) against the merge; write quality.json + quality.png.

    A GGUF quantized with an importance matrix is reported as ``<name>-imatrix``, right after the same type
    quantized without one when ``comparisons`` holds it (measured, but not part of the release).

    Args:
        merged: the merged checkpoint, its size and merge time.
        records: the release's artifact records (non-export kinds are skipped).
        out: the release output directory.
        comparisons: artifact name -> the same GGUF type quantized without the importance matrix.
        progress: called with (done, total) after each artifact.

    Returns:
        The report.
    """
    comparisons = comparisons or {}
    inputs: list[quality.QualityInput] = []
    for r in records:
        if r.kind not in ("gguf", "gptq", "bnb-4bit"):
            continue
        name = r.name
        if r.kind == "gguf" and r.details.get("imatrix"):
            if r.name in comparisons:
                inputs.append(comparisons[r.name])
            name = f"{r.name}-imatrix"
        inputs.append(
            quality.QualityInput(
                name=name, kind="gguf" if r.kind == "gguf" else "hf", path=out / r.path, size=r.size, seconds=r.seconds
            )
        )
    return quality.run(
        reference=merged,
        artifacts=inputs,
        out_dir=out,
        on_artifact=progress,
        not_released=[c.name for c in comparisons.values()],
    )
