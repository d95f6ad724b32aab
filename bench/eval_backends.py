"""Wall time of `kollm eval` (all three suites, bundled samples) on the demo fixture: HF directory vs f16 GGUF.

Writes bench/results/eval_backends.json and .png. Run: .venv/bin/python bench/eval_backends.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from kollm.evals import runner
from kollm.release import gguf
from kollm.testing.fixture import build_fixture

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    fixture = build_fixture()
    cfg = runner.EvalConfig(suites=["kmmlu", "click", "ko_ifeval"], offline=True, max_gen_toks=32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exported = gguf.run(
            gguf.GgufConfig(name="ko-tiny-base", types=["f16"]),
            model_dir=fixture.base,
            out_dir=Path(tmp),
            work_dir=Path(tmp) / ".work",
        )
        for label, model in (("hf", fixture.base), ("gguf-f16", exported.files[0].path)):
            started = time.perf_counter()
            result = runner.run(cfg, model=str(model))
            rows.append(
                {
                    "backend": label,
                    "seconds": round(time.perf_counter() - started, 2),
                    "scores": {k: round(v.score, 2) for k, v in result.scores.items()},
                }
            )
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count(), "max_gen_toks": 32, "runs": rows}
    (OUT / "eval_backends.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3), dpi=120)
    bars = ax.bar([r["backend"] for r in rows], [r["seconds"] for r in rows], color=["tab:blue", "tab:orange"])
    ax.bar_label(bars, fmt="%.1f s")
    ax.set_ylabel("seconds (3 suites, 36 items)")
    ax.set_title("kollm eval on the demo fixture", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "eval_backends.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
