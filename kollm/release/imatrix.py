"""GGUF importance matrix: which input channels of each weight matrix matter on Korean text.

llama.cpp's ``llama-imatrix`` runs the float GGUF over calibration text and sums every matmul input's squared
activations; ``llama-quantize --imatrix`` then weights each K-quant block's rounding error by them, so the
channels Korean text exercises keep more precision. Calibration defaults to kollm's bundled Korean sample (the
GPTQ default; the held-out lines the quality report scores are never part of it) or reads the release's own
data. The output is llama.cpp's GGUF imatrix format, named ``<name>.imatrix`` so that tools listing a repo's
``.gguf`` models never take it for one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import CalibrationDataError, ConverterError
from kollm.manifest import atomic_path
from kollm.release import calibration
from kollm.release.llama_tools import LlamaTools

log = logging.getLogger(__name__)

FIELD = "exports.gguf_imatrix_calibration"
DEFAULT_DATASET = "kollm-corpus_ko-train.txt"  # the name llama.cpp records for the bundled sample
_MIN_CHUNK = 64  # tokens; shorter chunks say little about attention over a context


class ImatrixConfig(BaseModel):
    """How to compute the importance matrix."""

    model_config = ConfigDict(extra="forbid")

    calibration: Path | None = Field(None, description="Calibration .txt/.jsonl; None: kollm's Korean sample.")
    chunks: int = Field(128, gt=0, description="Most chunks of calibration text to process.")
    chunk_tokens: int = Field(512, gt=0, description="Tokens per chunk (llama-imatrix's context), at most.")


@dataclass
class ImatrixResult:
    """The written importance matrix and what it was computed on."""

    path: Path
    seconds: float
    calibration: str  # where the text came from
    dataset: str  # the name llama.cpp recorded in the file (and llama-quantize copies into each GGUF)
    entries: int  # weight matrices with statistics
    chunks: int
    chunk_tokens: int
    tools: str
    uncovered: list[str] = field(default_factory=list)  # matmul weights without statistics (quantized without)


def imatrix_file_name(name: str) -> str:
    """``<name>.imatrix``: GGUF content, but not a ``.gguf`` model file."""
    return f"{name}.imatrix"


def calibration_text(cfg: ImatrixConfig, *, model_dir: Path | None) -> tuple[str, str, str]:
    """The calibration text, a short description of its source, and the dataset name llama.cpp records.

    Raises:
        CalibrationDataError: the file is missing, empty or malformed.
    """
    if cfg.calibration is None:
        texts = calibration.training_korean_lines()
        return "\n".join(texts) + "\n", "kollm bundled Korean sample (training lines)", DEFAULT_DATASET
    tokenizer = None
    if cfg.calibration.suffix == ".jsonl" and model_dir is not None:
        from transformers import AutoTokenizer  # chat records are rendered with the model's template

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = calibration.read_texts(cfg.calibration, tokenizer=tokenizer, field=FIELD)
    return "\n".join(texts) + "\n", str(cfg.calibration), f"{cfg.calibration.stem}.txt"


def _count_tokens(gguf_path: Path, text: str) -> tuple[int, int]:
    """Tokens of ``text`` under the GGUF's own vocabulary, and the model's training context (0: unknown)."""
    import llama_cpp
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    arch = fields["general.architecture"].contents()
    context = fields.get(f"{arch}.context_length")
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # the vocabulary only: no weights, no context
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
    if not model:
        raise ConverterError("llama.cpp vocabulary load", f"cannot read {gguf_path}")
    try:
        data = text.encode("utf-8")
        # With no output buffer llama_tokenize returns minus the number of tokens it would write.
        n_tokens = -llama_cpp.llama_tokenize(
            llama_cpp.llama_model_get_vocab(model), data, len(data), None, 0, False, False
        )
    finally:
        llama_cpp.llama_model_free(model)
    return n_tokens, int(context.contents()) if context is not None else 0


def chunk_size(n_tokens: int, n_ctx_train: int, wanted: int) -> int:
    """The chunk length llama-imatrix gets: ``wanted``, shortened so the text fills at least two chunks.

    Raises:
        ValueError: the text is too short for two chunks of the minimum length.
    """
    size = min(wanted, n_tokens // 2, n_ctx_train if n_ctx_train > 0 else wanted)
    if size < _MIN_CHUNK:
        raise ValueError(f"it has {n_tokens} tokens; the importance matrix needs at least {2 * _MIN_CHUNK}")
    return size


def compute(
    cfg: ImatrixConfig,
    *,
    reference: Path,
    target: Path,
    tools: LlamaTools,
    model_dir: Path | None = None,
) -> ImatrixResult:
    """Run llama-imatrix on the float GGUF over the calibration text; write ``target`` (temp + rename).

    Args:
        cfg: calibration source and how much of it to use.
        reference: the float (f16/bf16/f32) GGUF.
        target: the .imatrix file to write.
        tools: llama-imatrix and llama-quantize (see ``llama_tools.ensure_tools``).
        model_dir: the merged HF checkpoint, whose chat template renders ``messages`` calibration records.

    Returns:
        The file with its dataset name, entry and chunk counts.

    Raises:
        CalibrationDataError: the calibration text cannot be used.
        ConverterError: llama-imatrix failed or wrote no statistics.
    """
    started = time.perf_counter()
    text, source, dataset = calibration_text(cfg, model_dir=model_dir)
    n_tokens, n_ctx_train = _count_tokens(reference, text)
    try:
        size = chunk_size(n_tokens, n_ctx_train, cfg.chunk_tokens)
    except ValueError as e:
        raise CalibrationDataError(cfg.calibration or dataset, str(e), field=FIELD) from e
    with tempfile.TemporaryDirectory(prefix="kollm-imatrix-") as tmp, atomic_path(target) as out:
        (Path(tmp) / dataset).write_text(text, encoding="utf-8")
        cmd = [
            str(tools.imatrix),
            "-m",
            str(reference.resolve()),
            "-f",
            dataset,  # relative: llama.cpp records this name in the imatrix and in every GGUF quantized with it
            "-o",
            str(out.resolve()),
            "--output-format",
            "gguf",
            "-c",
            str(size),
            "-b",
            str(size),
            "--chunks",
            str(cfg.chunks),
            "--no-ppl",
            "-t",
            str(os.cpu_count() or 1),
        ]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise ConverterError("llama-imatrix", f"exit code {done.returncode}: {tail}")
        summary = read_imatrix(out)
        if summary["entries"] == 0:
            raise ConverterError("llama-imatrix", f"{target.name} holds no statistics")
        uncovered = check_coverage(out, reference)
        if uncovered:
            log.warning("imatrix: no statistics for %d weights (%s ...)", len(uncovered), uncovered[0])
    log.info("imatrix: %d entries over %d chunks of %d tokens", summary["entries"], summary["chunks"], size)
    return ImatrixResult(
        path=target,
        seconds=time.perf_counter() - started,
        calibration=source,
        dataset=dataset,
        entries=summary["entries"],
        chunks=summary["chunks"],
        chunk_tokens=size,
        tools=tools.origin,
        uncovered=uncovered,
    )


def read_imatrix(path: Path) -> dict[str, object]:
    """Summarise an imatrix file: the weight names it covers, entry and chunk counts, datasets."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    names = sorted(t.name.removesuffix(".in_sum2") for t in reader.tensors if t.name.endswith(".in_sum2"))

    def value(key: str) -> object:
        item = reader.fields.get(key)
        return item.contents() if item is not None else None

    return {
        "type": value("general.type"),
        "weights": names,
        "entries": len(names),
        "chunks": value("imatrix.chunk_count") or 0,
        "chunk_size": value("imatrix.chunk_size"),
        "datasets": value("imatrix.datasets") or [],
    }


def matmul_weights(gguf_path: Path) -> list[str]:
    """Names of a model GGUF's 2-D weight matrices that take activations as input (an imatrix covers these)."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    # token_embd is a lookup, not a matmul; output.weight is left out by llama-imatrix unless asked for.
    skip = ("token_embd.weight", "output.weight")
    return sorted(
        t.name for t in reader.tensors if t.name.endswith(".weight") and len(t.shape) == 2 and t.name not in skip
    )


def check_coverage(imatrix_path: Path, gguf_path: Path) -> list[str]:
    """Matmul weights of ``gguf_path`` that the importance matrix has no statistics for."""
    covered = set(read_imatrix(imatrix_path)["weights"])  # type: ignore[arg-type]
    return [name for name in matmul_weights(gguf_path) if name not in covered]
