"""Streaming LoRA merge: base shards in, merged shards out, one row block in memory at a time.

For every base tensor, in file order: tensors no adapter touches are copied byte for byte; adapted ones are
read in row blocks, decoded to float32, get ``scale · B·A`` of every adapter added in order, and are rounded
once back to the base dtype. Memory is bounded by the block size and the LoRA matrices, not the model size.
Output goes to a temporary directory that is renamed into place only when complete.

``merged_blocks`` is the one place a merged value is computed. The checkpoint writer here, the fused GGUF
path (``kollm.release.fused_entry``) and the in-memory verification reference (``kollm.release.merged_model``)
all consume it, so every route holds the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field

from kollm.manifest import FileRecord, atomic_path, record_files, sha256_file
from kollm.release.adapters import Adapter, load_adapter
from kollm.release.dequantize import DequantizedBase
from kollm.release.merge_math import LoraFactors, Workspace, decode, encode, read_matrix
from kollm.release.merge_plan import Task, check_base, plan
from kollm.release.safetensors_io import (
    ShardWriter,
    TensorInfo,
    index_checkpoint,
    iter_row_blocks,
    plan_shards,
    read_exact,
    shard_names,
)
from kollm.release.write_behind import WriteBehind

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_SKIP_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "README.md", ".gitattributes"}


class MergeConfig(BaseModel):
    """How to merge."""

    model_config = ConfigDict(extra="forbid")

    max_shard_bytes: int = Field(2 * 1024**3, gt=0, description="Largest output shard in bytes.")
    block_bytes: int = Field(64 * 1024**2, gt=0, description="Bytes of a base tensor processed at once.")
    allow_pickle: bool = Field(False, description="Accept pickle (.bin) checkpoints, read tensors-only.")
    dequantize_base: bool = Field(
        False,
        description="Accept a bitsandbytes 4-bit base: dequantize it (with a quality warning), then merge.",
    )
    trust_remote_code: bool = Field(False, description="Copy custom modelling code (*.py) from the base.")


@dataclass(frozen=True)
class AdapterProvenance:
    """Where an adapter came from and its content hash."""

    path: str
    sha256: str
    base_model: str | None
    r: int | None
    targets: list[str]


@dataclass
class MergeResult:
    """What a merge produced."""

    out_dir: Path
    files: list[FileRecord]
    seconds: float
    base_files: dict[str, str]  # base file name -> sha256
    adapters: list[AdapterProvenance]
    merged_tensors: int
    replaced_tensors: int
    config_changes: dict[str, object] = field(default_factory=dict)
    dequantized_base: dict[str, object] | None = None  # what a 4-bit base was dequantized from (DequantizedBase)


class _HashingReader:
    """Reads a base file front to back and hashes it on the way, so provenance costs no extra pass."""

    def __init__(self, path: Path, sink: WriteBehind) -> None:
        self.fh = path.open("rb", buffering=0)
        self.digest = hashlib.sha256()
        self.sink = sink  # hashing runs on its own thread, in read order
        self.pos = 0

    def read_at(self, start: int, size: int) -> bytearray:
        if start < self.pos:  # a second read of the same bytes (an untied lm_head copied from embeddings)
            with open(self.fh.name, "rb") as other:
                other.seek(start)
                return read_exact(other, size)
        if start > self.pos:
            self._consume(start - self.pos)
        data = read_exact(self.fh, size)
        self.sink.submit(self.digest.update, data)
        self.pos = start + size
        return data

    def _consume(self, size: int) -> None:
        while size > 0:
            data = self.fh.read(min(size, 1 << 24))
            if not data:
                break
            self.sink.submit(self.digest.update, data)
            size -= len(data)
            self.pos += len(data)

    def finish(self) -> None:
        """Hash the rest of the file (bytes no tensor used); the digest is final once the sink is drained."""
        self._consume(1 << 62)
        self.fh.close()


ReadRows = Callable[[TensorInfo, int, int], bytearray]  # (tensor, first row, row count) -> raw bytes


def merged_blocks(
    task: Task, read: ReadRows, block_bytes: int, work: Workspace | None = None
) -> Iterator[bytearray | memoryview]:
    """The bytes of one merged output tensor, in row blocks: the one place a merged value is computed.

    Untouched tensors come out as the source bytes; adapted ones as base + Σ scale·B·A in float32, rounded
    once to the output dtype. The checkpoint writer, the fused GGUF converter and the in-memory reference
    all consume this, so every route holds the same bytes. ``work`` reuses float32 buffers across calls.
    """
    src = task.source
    if not task.loras and src.dtype == task.out.dtype:
        for start, count in iter_row_blocks(src, block_bytes):
            yield read(src, start, count)
        return
    factors = [LoraFactors(read_matrix(p.a), read_matrix(p.b), p.scale, p.transposed) for p in task.loras]
    work = work or Workspace()
    for start, count in iter_row_blocks(src, block_bytes):
        block = decode(read(src, start, count), src.dtype, (count, *src.shape[1:]), work)
        for factor in factors:
            factor.add_to(block, start, work)
        yield encode(block, task.out.dtype)


def merged_tensor(task: Task, read: ReadRows, block_bytes: int) -> bytearray:
    """One whole merged tensor's bytes (the fused consumers take tensors one at a time, in their own order).

    Memory: the tensor plus one block; a tensor read in one block is returned as read, without a copy.
    """
    out = bytearray()
    pos = 0
    for chunk in merged_blocks(task, read, block_bytes):
        if not out:
            if isinstance(chunk, bytearray) and len(chunk) == task.out.nbytes:
                return chunk
            out = bytearray(task.out.nbytes)
        out[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return out


class TensorReader:
    """Random-access reads of tensor rows, one open handle per file (for consumers that pick their own order)."""

    def __init__(self) -> None:
        self._files: dict[Path, BinaryIO] = {}

    def __call__(self, info: TensorInfo, start: int, count: int) -> bytearray:
        fh = self._files.get(info.file)
        if fh is None:
            fh = self._files[info.file] = info.file.open("rb", buffering=0)
        fh.seek(info.start + start * info.row_bytes)
        return read_exact(fh, count * info.row_bytes)

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def _read(reader: _HashingReader | None, info: TensorInfo, start: int, count: int) -> bytearray:
    if reader is None:  # adapter tensors (modules_to_save) are read directly
        with info.file.open("rb") as fh:
            fh.seek(info.start + start * info.row_bytes)
            return read_exact(fh, count * info.row_bytes)
    return reader.read_at(info.start + start * info.row_bytes, count * info.row_bytes)


def _copy_side_files(base: Path, adapters: list[Adapter], out: Path, *, trust_remote_code: bool) -> None:
    for path in sorted(base.iterdir()):
        if not path.is_file() or path.name in _SKIP_FILES or path.suffix in _WEIGHT_SUFFIXES:
            continue
        if path.suffix == ".py" and not trust_remote_code:
            continue
        shutil.copy2(path, out / path.name)
    # An adapter that extended the vocabulary ships its tokenizer; the last one wins.
    for adapter in adapters:
        if (adapter.path / "tokenizer.json").is_file() or (adapter.path / "tokenizer_config.json").is_file():
            for path in adapter.path.iterdir():
                if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
                    shutil.copy2(path, out / path.name)


def write_side_files(plan: MergePlan, out: Path, *, trust_remote_code: bool) -> None:
    """Config, tokenizer and generation config of the merged model into ``out``, with the merge's config changes."""
    _copy_side_files(plan.base, plan.adapters, out, trust_remote_code=trust_remote_code)
    merged_config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    merged_config.update(plan.changes)
    if plan.dequantized:  # a 16-bit checkpoint now: transformers would try to load it as 4-bit if the key stayed
        merged_config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(merged_config, indent=2), encoding="utf-8")


@dataclass
class MergePlan:
    """A merge decided from headers alone: the tasks in output order, the files they read, the config changes."""

    base: Path
    adapters: list[Adapter]
    tasks: list[Task]
    changes: dict[str, object]
    base_files: list[Path]  # the safetensors files the tasks read from the base, sorted
    tensor_dir: Path  # the base itself, or where its pickle / dequantized 4-bit weights were converted
    dequantized: DequantizedBase | None = None


def prepare(cfg: MergeConfig, *, base: Path, adapters: list[Path], scratch: Path | None = None) -> MergePlan:
    """Validate the base and adapters and plan every output tensor, reading headers only.

    Args:
        cfg: safety switches (``allow_pickle`` and ``dequantize_base`` need ``scratch``).
        base: HF model directory.
        adapters: PEFT LoRA adapter directories, in training order.
        scratch: where pickle weights and a dequantized 4-bit base are converted; None refuses both.

    Returns:
        The plan that ``merged_blocks`` / ``merged_tensor`` execute task by task.

    Raises:
        InputNotFoundError, UnsafeCheckpointError, QuantizedBaseError, AdapterMismatchError.
    """
    pickle_dir = scratch if cfg.allow_pickle else None
    checked = check_base(
        base,
        pickle_dir=pickle_dir,
        dequantize_dir=scratch if cfg.dequantize_base else None,
        block_bytes=cfg.block_bytes,
    )
    loaded = [load_adapter(p, pickle_dir=pickle_dir) for p in adapters]
    base_tensors = index_checkpoint(checked.tensor_dir)
    tasks, changes = plan(base_tensors, loaded, checked.config)
    base_files = sorted({info.file for info in base_tensors.values()})
    return MergePlan(base, loaded, tasks, changes, base_files, checked.tensor_dir, checked.dequantized)


def run(
    cfg: MergeConfig,
    *,
    base: Path,
    adapters: list[Path],
    out_dir: Path,
    progress: Progress | None = None,
    weights: bool = True,
) -> MergeResult:
    """Merge LoRA adapters into a base model, streaming, and write an HF checkpoint to ``out_dir``.

    Args:
        cfg: shard size, block size, safety switches.
        base: HF model directory with safetensors weights (16/32-bit, possibly sharded).
        adapters: PEFT LoRA adapter directories, applied in this order.
        out_dir: destination; replaced atomically when the merge completes.
        progress: called with (bytes_done, bytes_total) as base bytes are processed.
        weights: False writes only config and tokenizer files (the fused GGUF path streams the tensors
            itself); the base files are still hashed for provenance.

    Returns:
        The written files with sha256, the base and adapter provenance, and counts.

    Raises:
        InputNotFoundError, UnsafeCheckpointError, QuantizedBaseError, AdapterMismatchError.

    Example:
        >>> run(MergeConfig(), base=Path("Qwen2.5-7B"), adapters=[Path("cpt"), Path("sft")], out_dir=Path("m"))
    """
    started = time.perf_counter()
    # Pickle checkpoints (only with allow_pickle) and 4-bit bases (only with dequantize_base) are converted next
    # to the output, on the same disk.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.scratch-", dir=out_dir.parent) as scratch:
        planned = prepare(cfg, base=base, adapters=adapters, scratch=Path(scratch))
        shard_hashes: dict[str, str] = {}
        if weights:
            base_hashes, shard_hashes = _write_checkpoint(planned, cfg, out_dir, progress)
        else:
            with atomic_path(out_dir) as tmp:
                tmp.mkdir(parents=True)
                write_side_files(planned, tmp, trust_remote_code=cfg.trust_remote_code)
            base_hashes = {p.name: sha256_file(p) for p in planned.base_files}
    if planned.tensor_dir != base:  # provenance names the files the user gave, not the converted copies
        base_hashes = {p.name: sha256_file(p) for p in sorted(base.iterdir()) if p.suffix in _WEIGHT_SUFFIXES}
    provenance = [
        AdapterProvenance(
            path=str(a.path),
            sha256=sha256_file(a.weights),
            base_model=a.base_model,
            r=a.config.get("r"),
            targets=sorted({k.rsplit(".", 2)[-2] for k in a.pairs} | set(a.replacements)),
        )
        for a in planned.adapters
    ]
    return MergeResult(
        out_dir=out_dir,
        files=record_files(out_dir, [p for p in out_dir.iterdir() if p.is_file()], known=shard_hashes),
        seconds=time.perf_counter() - started,
        base_files=base_hashes,
        adapters=provenance,
        merged_tensors=sum(1 for t in planned.tasks if t.loras),
        replaced_tensors=sum(1 for t in planned.tasks if t.source.file not in planned.base_files),
        config_changes=planned.changes,
        dequantized_base=planned.dequantized.record() if planned.dequantized else None,
    )


def _write_checkpoint(
    planned: MergePlan, cfg: MergeConfig, out_dir: Path, progress: Progress | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Stream every planned tensor into shards under a temp dir, add side files.

    Returns:
        sha256 of each base weight file (hashed while read) and of each output shard (hashed while written).
    """
    tasks = planned.tasks
    shards = plan_shards([t.out for t in tasks], cfg.max_shard_bytes)
    names = shard_names(len(shards))
    by_name = {t.out.name: t for t in tasks}
    total = sum(t.out.nbytes for t in tasks)
    done = 0

    def count(chunk: bytes | memoryview) -> None:
        nonlocal done
        done += len(chunk)
        if progress:
            progress(done, total)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        sink = WriteBehind()  # writes and hashes the output
        hasher = WriteBehind()  # hashes the base as read: a third thread, so neither queue waits on the other
        work = Workspace()
        try:
            readers = {path: _HashingReader(path, hasher) for path in planned.base_files}

            def read(info: TensorInfo, start: int, rows: int) -> bytearray:
                return _read(readers.get(info.file), info, start, rows)

            weight_map = {}
            writers = []
            for shard, name in zip(shards, names, strict=True):
                writer = ShardWriter(tmp / name, shard, on_write=count)
                writers.append(writer)
                for item in shard:
                    for chunk in merged_blocks(by_name[item.name], read, cfg.block_bytes, work):
                        sink.submit(writer.write, chunk)
                    weight_map[item.name] = name
                sink.submit(lambda w: w.close(), writer)
            for reader in readers.values():
                reader.finish()
        finally:  # also on errors: no thread may still write into the directory being removed
            try:
                sink.drain()
            finally:
                hasher.drain()
        base_hashes = {path.name: reader.digest.hexdigest() for path, reader in readers.items()}
        shard_hashes = {name: writer.sha256 for name, writer in zip(names, writers, strict=True)}
        if len(names) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        write_side_files(planned, tmp, trust_remote_code=cfg.trust_remote_code)
    return base_hashes, shard_hashes
