"""Quality report: how much each export loses against the merged model, on held-out Korean text.

For every artifact: perplexity on held-out Korean lines (never trained on, never used for calibration),
top-1 agreement of next-token predictions with the merged bf16 model, size on disk and time to produce.
Every backend scores the same token ids (llama.cpp's tokenization is proven identical to HF's during GGUF
verification), so differences come from the weights alone. GGUF runs in-process in llama.cpp with logits
for every position; HF checkpoints (merged, GPTQ, bnb) run in transformers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kollm.llamacpp import open_llama
from kollm.manifest import atomic_path, write_json_atomic
from kollm.release.calibration import heldout_korean_lines

log = logging.getLogger(__name__)

REFERENCE = "bf16 (merged)"


@dataclass
class QualityInput:
    """One artifact to measure."""

    name: str  # e.g. gguf-q4_k_m, gptq-w4a16, bnb-nf4
    kind: str  # "hf" (transformers-loadable directory) or "gguf"
    path: Path
    size: int
    seconds: float


@dataclass
class QualityRow:
    """One line of the report."""

    name: str
    size_mb: float
    seconds: float
    perplexity: float
    delta_ppl_pct: float
    top1_agreement_pct: float
    tokens: int


@dataclass
class QualityResult:
    """The report: rows (reference first), and where its JSON and PNG were written."""

    rows: list[QualityRow]
    texts: int
    json_path: Path
    png_path: Path


@dataclass
class _Scores:
    nll: float  # summed over predicted tokens
    count: int
    argmax: list[np.ndarray]  # per text, the predicted next token at each position


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _score(logits_per_text: list[np.ndarray], ids: list[list[int]]) -> _Scores:
    nll, count, argmax = 0.0, 0, []
    for logits, row in zip(logits_per_text, ids, strict=True):
        logp = _log_softmax(logits[: len(row) - 1].astype(np.float64))
        nll -= float(logp[np.arange(len(row) - 1), row[1:]].sum())
        count += len(row) - 1
        argmax.append(logits[: len(row) - 1].argmax(axis=-1))
    return _Scores(nll, count, argmax)


def _hf_logits(path: Path, ids: list[list[int]]) -> list[np.ndarray]:
    import json

    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    is_bnb = (config.get("quantization_config") or {}).get("quant_method") == "bitsandbytes"
    # Unquantized and GPTQ (decompressed) weights are scored in float32, so only the stored weights differ.
    kwargs: dict[str, Any] = {"device_map": "cpu"} if is_bnb else {"dtype": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    with torch.no_grad():
        out = [model(torch.tensor([row])).logits[0].float().numpy() for row in ids]
    del model
    return out


def _gguf_logits(path: Path, ids: list[list[int]], n_ctx: int) -> list[np.ndarray]:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    # One thread: llama.cpp's workers spin-wait, which on a busy 2-core machine stalls scoring for minutes,
    # and a model small enough to score thousands of tokens gains nothing from a second thread.
    llm = open_llama(path, n_ctx=n_ctx, n_threads=1, n_threads_batch=1, logits_all=True)
    try:
        out = []
        for row in ids:
            llm.reset()
            llm.eval(row)
            out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    finally:
        llm.close()
    return out


def _rows_table(rows: list[QualityRow]) -> str:
    header = f"{'artifact':<22}{'size MB':>10}{'time s':>9}{'ppl':>10}{'Δppl %':>9}{'top-1 %':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<22}{r.size_mb:>10.2f}{r.seconds:>9.1f}{r.perplexity:>10.3f}"
            f"{r.delta_ppl_pct:>+9.2f}{r.top1_agreement_pct:>9.1f}"
        )
    return "\n".join(lines)


def format_table(result: QualityResult) -> str:
    """The report as a fixed-width text table, reference first."""
    return _rows_table(result.rows)


def _plot(rows: list[QualityRow], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    by_name = {r.name: r for r in rows}
    below = {REFERENCE}  # the merge and the f16 GGUF sit side by side at 0
    for r in rows:
        twin = by_name.get(r.name.removesuffix("-imatrix")) if r.name.endswith("-imatrix") else None
        if twin is not None:
            # A K-quant and its imatrix twin have the same size: label the lower point below, the other above.
            below.add(r.name if r.delta_ppl_pct < twin.delta_ppl_pct else twin.name)
    for r in rows:
        imatrix = r.name.endswith("-imatrix")
        color = "tab:gray" if r.name == REFERENCE else "tab:green" if imatrix else "tab:blue"
        ax.scatter(r.size_mb, r.delta_ppl_pct, s=40, color=color, marker="^" if imatrix else "o")
        offset = (5, -11) if r.name in below else (5, 4)
        ax.annotate(r.name, (r.size_mb, r.delta_ppl_pct), textcoords="offset points", xytext=offset, fontsize=8)
    ax.axhline(0.0, color="tab:gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("Δ perplexity vs bf16 merge (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run(
    *,
    reference: QualityInput,
    artifacts: list[QualityInput],
    out_dir: Path,
    max_texts: int = 64,
    n_ctx: int = 512,
    title: str = "Held-out Korean perplexity vs size",
    on_artifact: Callable[[int, int], None] | None = None,
    not_released: list[str] | None = None,
) -> QualityResult:
    """Measure every artifact against the merged model; write ``quality.json`` and ``quality.png``.

    Args:
        reference: the merged 16-bit checkpoint (an HF directory).
        artifacts: exports to measure (HF directories or GGUF files).
        out_dir: where quality.json and quality.png go.
        max_texts: held-out Korean lines to score.
        n_ctx: longest sequence scored (longer lines are cut).
        title: the figure's title.
        on_artifact: progress callback (done, total).
        not_released: names of rows measured for comparison only (e.g. K-quants without the importance matrix).

    Returns:
        Rows with perplexity, Δ perplexity (%), top-1 agreement (%), size and time; paths of JSON and PNG.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference.path)
    texts = heldout_korean_lines()[:max_texts]
    ids = [row[:n_ctx] for row in (tokenizer(t)["input_ids"] for t in texts) if len(row) >= 2]
    ref = _score(_hf_logits(reference.path, ids), ids)
    ref_ppl = math.exp(ref.nll / ref.count)
    rows = [QualityRow(REFERENCE, round(reference.size / 1e6, 3), reference.seconds, ref_ppl, 0.0, 100.0, ref.count)]
    for i, item in enumerate(artifacts, start=1):
        logits = _gguf_logits(item.path, ids, n_ctx) if item.kind == "gguf" else _hf_logits(item.path, ids)
        got = _score(logits, ids)
        ppl = math.exp(got.nll / got.count)
        agree = sum(int((a == b).sum()) for a, b in zip(got.argmax, ref.argmax, strict=True)) / ref.count
        rows.append(
            QualityRow(
                item.name,
                round(item.size / 1e6, 3),
                round(item.seconds, 2),
                ppl,
                100.0 * (ppl / ref_ppl - 1.0),
                100.0 * agree,
                got.count,
            )
        )
        log.info("%s: perplexity %.3f (reference %.3f), top-1 %.1f%%", item.name, ppl, ref_ppl, 100 * agree)
        if on_artifact:
            on_artifact(i, len(artifacts))
    json_path, png_path = out_dir / "quality.json", out_dir / "quality.png"
    write_json_atomic(
        json_path,
        {
            "held_out_texts": len(ids),
            "tokens": ref.count,
            "text_source": "kollm bundled corpus_ko.txt, held-out lines (every 10th)",
            "rows": [asdict(r) for r in rows],
            "not_released": list(not_released or []),
        },
    )
    _plot(rows, png_path, title)
    return QualityResult(rows, len(ids), json_path, png_path)
