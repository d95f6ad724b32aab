"""Quality of every export format on the pretrained fixture: size vs Δ perplexity on held-out Korean text.

Runs one real release of ``fixture:ko-tiny-pretrained`` with GGUF f16/q8_0/q5_k_m/q4_k_m (the K-quants with an
importance matrix, and without one for comparison), GPTQ W4A16 and bnb NF4 plus the quality report, then copies
the report to bench/results/quality.json and quality.png.

    .venv/bin/python bench/quality.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from kollm.config import ReleaseSpec
from kollm.release import quality
from kollm.release.pipeline import run_release

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kollm-bench-quality-") as tmp:
        spec = ReleaseSpec.model_validate(
            {
                "name": "ko-tiny-pretrained",
                "base": "fixture:ko-tiny-pretrained",
                "exports": {
                    "safetensors": True,
                    "gguf": ["f16", "q8_0", "q5_k_m", "q4_k_m"],
                    "gguf_imatrix": True,
                    "gptq": True,
                    "bnb_4bit": True,
                    "quality_report": True,
                },
                "output_dir": str(Path(tmp) / "out"),
            }
        )
        result = run_release(spec, show_progress=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = result.out_dir
        shutil.copy(out / "quality.png", RESULTS / "quality.png")
        report = json.loads((out / "quality.json").read_text(encoding="utf-8"))
        report["release_seconds"] = round(result.seconds, 1)
        (RESULTS / "quality.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        rows = [quality.QualityRow(**r) for r in report["rows"]]
        print(
            quality.format_table(
                quality.QualityResult(rows, report["held_out_texts"], RESULTS / "quality.json", RESULTS / "quality.png")
            )
        )


if __name__ == "__main__":
    main()
