"""GGUF export: llama.cpp's converter writes a float GGUF, llama.cpp's quantizer derives the rest.

Every file is written under a temporary name and renamed on success: the quantizer returns 0 even when it
falls back to another type for some tensors, and can leave a partial file on failure, so kollm reads each
output back with ``gguf.GGUFReader`` and records the tensor types actually written. With an importance matrix
(``imatrix=True``), K-quants come from llama.cpp's ``llama-quantize --imatrix`` (see ``kollm.release.imatrix``);
the other types are quantized as without one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kollm.config import GGUF_FLOAT_TYPES, GGUF_K_QUANT_TYPES, GGUF_TYPES
from kollm.errors import ConverterError, UnknownQuantError
from kollm.manifest import atomic_path
from kollm.models import resolve_pre_tokenizer
from kollm.release.converter import ensure_converter
from kollm.release.llama_tools import LlamaTools

log = logging.getLogger(__name__)
_DISK_FULL = re.compile(r"No space left on device|\d+ requested and \d+ written")

# Which GGML tensor types a quantized file is expected to use for its big matrices.
_EXPECTED_MAIN = {
    "f32": {"F32"},
    "f16": {"F16"},
    "bf16": {"BF16"},
    "q8_0": {"Q8_0"},
    "q6_k": {"Q6_K"},
    "q5_k_m": {"Q5_K", "Q6_K"},
    "q5_k_s": {"Q5_K"},
    "q5_0": {"Q5_0"},
    "q4_k_m": {"Q4_K", "Q6_K"},
    "q4_k_s": {"Q4_K"},
    "q4_0": {"Q4_0"},
    "q3_k_m": {"Q3_K", "Q4_K", "Q5_K"},
    "q2_k": {"Q2_K", "Q3_K", "Q4_K"},
}


class GgufConfig(BaseModel):
    """What to export."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="File name stem: files are <name>-<TYPE>.gguf.")
    types: list[str] = Field(description="GGUF types to produce, e.g. f16, q8_0, q4_k_m.")
    pre_tokenizer: str | None = Field(None, description="llama.cpp pre-tokenizer; derived when empty.")
    llama_cpp_dir: Path | None = Field(
        None, description="llama.cpp checkout whose converter (and build whose llama-imatrix/llama-quantize) to use."
    )
    imatrix: bool = Field(False, description="Quantize K-quants with an importance matrix (llama-imatrix).")
    imatrix_calibration: Path | None = Field(None, description="Importance-matrix calibration .txt/.jsonl.")
    imatrix_chunks: int = Field(128, gt=0, description="Most calibration chunks llama-imatrix processes.")


@dataclass
class GgufFile:
    """One written GGUF file."""

    gguf_type: str
    path: Path
    seconds: float
    tensor_types: dict[str, int]
    fallback_tensors: list[str] = field(default_factory=list)
    imatrix: dict[str, Any] | None = None  # the quantize.imatrix.* keys llama-quantize wrote, when one was used


@dataclass
class GgufResult:
    """Everything the GGUF step wrote and how."""

    files: list[GgufFile]
    pre_tokenizer: str
    converter: str
    reference: Path  # the float GGUF that quantized files were derived from (kept for verification)
    imatrix: Any = None  # kollm.release.imatrix.ImatrixResult when K-quants used one


def file_name(name: str, gguf_type: str) -> str:
    """``<name>-<TYPE>.gguf``: the name llama.cpp's ``-hf repo:TYPE`` and Ollama's ``hf.co/repo:TYPE`` match."""
    return f"{name}-{gguf_type.upper()}.gguf"


def tensor_type_counts(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Count GGML tensor types in a GGUF file; also return name -> type for every tensor."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    by_name = {t.name: t.tensor_type.name for t in reader.tensors}
    return dict(Counter(by_name.values())), by_name


def _fallbacks(gguf_type: str, by_name: dict[str, str]) -> list[str]:
    """2-D weight tensors whose type is outside what this file type should use (llama.cpp fell back)."""
    expected = _EXPECTED_MAIN[gguf_type]
    skip = ("norm", "bias", "token_embd", "output.weight")
    return sorted(n for n, t in by_name.items() if not any(s in n for s in skip) and t not in expected)


def _convert(
    model_dir: Path,
    out: Path,
    outtype: str,
    pre: str,
    converter_root: Path,
    merge_inputs: tuple[Path, list[Path]] | None = None,
) -> None:
    if merge_inputs is None:
        entry = ["kollm.release.convert_entry", str(converter_root), pre]
    else:
        base, adapters = merge_inputs
        entry = ["kollm.release.fused_entry", str(converter_root), pre, str(base), *map(str, adapters)]
    cmd = [sys.executable, "-m", *entry, "--", str(model_dir), "--outfile", str(out), "--outtype", outtype]
    env = {**os.environ, "NO_LOCAL_GGUF": "1"}  # convert_entry already put the converter's gguf-py first
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        if _DISK_FULL.search(tail):
            # Surface as the OSError it is, so the pipeline reports the full disk like any other write. NumPy's
            # tofile reports a full disk only as a short write, without errno.
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        fed = " (tensors streamed from kollm's merge)" if merge_inputs else ""
        raise ConverterError(f"llama.cpp convert_hf_to_gguf.py{fed}", tail)


def _quantize(src: Path, dst: Path, gguf_type: str) -> None:
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise ConverterError(f"llama_model_quantize to {gguf_type}", f"return code {rc}")


def imatrix_metadata(path: Path) -> dict[str, Any] | None:
    """The ``quantize.imatrix.*`` keys llama-quantize writes into a GGUF made with an importance matrix."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    found = {
        key.removeprefix("quantize.imatrix."): item.contents()
        for key, item in reader.fields.items()
        if key.startswith("quantize.imatrix.")
    }
    return found or None


def describe(gguf_type: str, path: Path, seconds: float) -> GgufFile:
    """Read a written GGUF back and record the tensor types llama.cpp actually used."""
    counts, by_name = tensor_type_counts(path)
    item = GgufFile(gguf_type, path, seconds, counts, _fallbacks(gguf_type, by_name), imatrix_metadata(path))
    if item.fallback_tensors:
        log.warning("%s: %d tensors fell back to another type", path.name, len(item.fallback_tensors))
    return item


def convert_one(
    model_dir: Path,
    target: Path,
    gguf_type: str,
    *,
    pre_tokenizer: str,
    converter_root: Path,
    merge_inputs: tuple[Path, list[Path]] | None = None,
) -> GgufFile:
    """Convert an HF checkpoint to one float GGUF at ``target`` (temp + rename).

    Args:
        model_dir: merged HF checkpoint; with ``merge_inputs``, a directory of its config and tokenizer files only.
        target: final file path.
        gguf_type: f32, f16 or bf16.
        pre_tokenizer: llama.cpp pre-tokenizer name.
        converter_root: directory of convert_hf_to_gguf.py (see ``ensure_converter``).
        merge_inputs: (base, adapters): the fused path, where the converter reads merged tensors streamed from
            the base and adapters (``kollm.release.fused_entry``) instead of a merged checkpoint. Same bytes.

    Returns:
        The written file with its tensor types.

    Raises:
        ConverterError: the converter failed; OSError(ENOSPC) when the disk filled up.
    """
    started = time.perf_counter()
    with atomic_path(target) as tmp:
        _convert(model_dir, tmp, gguf_type, pre_tokenizer, converter_root, merge_inputs)
    return describe(gguf_type, target, time.perf_counter() - started)


def quantize_one(reference: Path, target: Path, gguf_type: str) -> GgufFile:
    """Quantize a float GGUF to ``gguf_type`` at ``target`` (temp + rename, renamed only on success).

    Raises:
        ConverterError: llama_model_quantize failed.
    """
    started = time.perf_counter()
    with atomic_path(target) as tmp:
        _quantize(reference, tmp, gguf_type)
    return describe(gguf_type, target, time.perf_counter() - started)


def quantize_with_imatrix(
    reference: Path, target: Path, gguf_type: str, *, imatrix: Path, tools: LlamaTools
) -> GgufFile:
    """Quantize a float GGUF to a K-quant with ``llama-quantize --imatrix`` (temp + rename).

    The imatrix is passed by its bare name from its own directory: llama-quantize writes the path it was given
    into the GGUF (``quantize.imatrix.file``), and the file's bytes must not depend on the output directory.

    Raises:
        ConverterError: llama-quantize failed, or its output does not record the importance matrix.
    """
    if gguf_type not in GGUF_K_QUANT_TYPES:
        raise ValueError(f"{gguf_type} is not a K-quant")  # the caller decides which types get the imatrix
    started = time.perf_counter()
    with atomic_path(target) as tmp:
        cmd = [
            str(tools.quantize),
            "--imatrix",
            imatrix.name,
            str(reference.resolve()),
            str(tmp.resolve()),
            gguf_type.upper(),
            str(os.cpu_count() or 1),
        ]
        done = subprocess.run(cmd, cwd=imatrix.parent, capture_output=True, text=True)
        if done.returncode != 0 or not tmp.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            if _DISK_FULL.search(tail):
                raise OSError(errno.ENOSPC, "No space left on device", str(target))
            raise ConverterError(f"llama-quantize --imatrix to {gguf_type}", f"exit code {done.returncode}: {tail}")
        if imatrix_metadata(tmp) is None:
            raise ConverterError(
                f"llama-quantize --imatrix to {gguf_type}", "the output carries no quantize.imatrix.* metadata"
            )
    return describe(gguf_type, target, time.perf_counter() - started)


def run(
    cfg: GgufConfig,
    *,
    model_dir: Path,
    out_dir: Path,
    work_dir: Path,
    on_file: Callable[[GgufFile], None] | None = None,
) -> GgufResult:
    """Convert an HF checkpoint to the requested GGUF types.

    Args:
        cfg: file name stem, types, pre-tokenizer override, converter location.
        model_dir: merged HF checkpoint (safetensors).
        out_dir: where the requested GGUF files go.
        work_dir: where the float reference GGUF goes when it was not itself requested.
        on_file: called after each file is written (progress).

    Returns:
        Each file with its time and tensor types, the pre-tokenizer used and the converter's origin; the
        importance matrix (``<name>.imatrix`` in ``out_dir``) when ``cfg.imatrix`` is set.

    Raises:
        UnknownQuantError, PreTokenizerError, ConverterError, ToolMissingError, LlamaToolsError,
        CalibrationDataError.
    """
    for t in cfg.types:
        if t not in GGUF_TYPES:
            raise UnknownQuantError(t, list(GGUF_TYPES), where="exports.gguf")
    pre = cfg.pre_tokenizer or resolve_pre_tokenizer(model_dir)
    converter = ensure_converter(cfg.llama_cpp_dir)
    floats = [t for t in cfg.types if t in GGUF_FLOAT_TYPES]
    reference_type = "f16" if "f16" in floats or not floats else floats[0]
    files: list[GgufFile] = []
    ordered = [reference_type] + [t for t in floats if t != reference_type]
    reference_dir = out_dir if reference_type in cfg.types else work_dir
    reference = reference_dir / file_name(cfg.name, reference_type)
    for gguf_type in ordered:
        target = (out_dir if gguf_type in cfg.types else work_dir) / file_name(cfg.name, gguf_type)
        item = convert_one(model_dir, target, gguf_type, pre_tokenizer=pre, converter_root=converter.root)
        if gguf_type in cfg.types:
            files.append(item)
            if on_file:
                on_file(item)
    computed = None
    if cfg.imatrix and any(t in GGUF_K_QUANT_TYPES for t in cfg.types):
        from kollm.release import imatrix
        from kollm.release.llama_tools import ensure_tools

        tools = ensure_tools(cfg.llama_cpp_dir, on_build=log.warning)
        computed = imatrix.compute(
            imatrix.ImatrixConfig(calibration=cfg.imatrix_calibration, chunks=cfg.imatrix_chunks),
            reference=reference,
            target=out_dir / imatrix.imatrix_file_name(cfg.name),
            tools=tools,
            model_dir=model_dir,
        )
    for gguf_type in (t for t in cfg.types if t not in GGUF_FLOAT_TYPES):
        target = out_dir / file_name(cfg.name, gguf_type)
        if computed is not None and gguf_type in GGUF_K_QUANT_TYPES:
            item = quantize_with_imatrix(reference, target, gguf_type, imatrix=computed.path, tools=tools)
        else:
            item = quantize_one(reference, target, gguf_type)
        files.append(item)
        if on_file:
            on_file(item)
    return GgufResult(files=files, pre_tokenizer=pre, converter=converter.origin, reference=reference, imatrix=computed)
