"""The release's quality report: every recorded export (GGUF, GPTQ, bnb 4-bit) measured against the merge.

The exports themselves are pipeline steps (``kollm.release.pipeline``); this turns their artifact records into
``quality`` inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kollm.manifest import ArtifactRecord
from kollm.release import quality

Progress = Callable[[int, int], None]


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
