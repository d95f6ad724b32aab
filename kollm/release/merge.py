"""Streaming LoRA merge: base shards in, merged shards out, one row block in memory at a time.

For every base tensor, in file order: tensors no adapter touches are copied byte for byte; adapted ones are
read in row blocks, decoded to float32, get ``scale · B·A`` of every adapter added in order, and are rounded
once back to the base dtype. Memory is bounded by the block size and the LoRA matrices, not the model size.
Output goes to a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kollm.errors import AdapterMismatchError, InputNotFoundError, QuantizedBaseError, UnsafeCheckpointError
from kollm.manifest import FileRecord, atomic_path, record_files, sha256_file
from kollm.release.adapters import Adapter, LoraPair, load_adapter
from kollm.release.safetensors_io import (
    FLOAT_DTYPES,
    PlannedTensor,
    ShardWriter,
    TensorInfo,
    bytes_to_f32,
    f32_to_bytes,
    index_checkpoint,
    iter_row_blocks,
    plan_shards,
    read_rows,
    read_tensor_f32,
    shard_names,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_SKIP_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "README.md", ".gitattributes"}
_TIED_PAIR = ("model.embed_tokens.weight", "lm_head.weight")


class MergeConfig(BaseModel):
    """How to merge."""

    model_config = ConfigDict(extra="forbid")

    max_shard_bytes: int = Field(2 * 1024**3, gt=0, description="Largest output shard in bytes.")
    block_bytes: int = Field(64 * 1024**2, gt=0, description="Bytes of a base tensor processed at once.")
    allow_pickle: bool = Field(False, description="Accept pickle (.bin) checkpoints.")
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


@dataclass
class _Task:
    out: PlannedTensor
    source: TensorInfo
    loras: list[LoraPair]


def _check_base(base: Path, *, allow_pickle: bool) -> dict:
    config_path = base / "config.json"
    if not config_path.is_file():
        raise InputNotFoundError(
            "base model config", config_path, hint="`base` must be a HF model directory with config.json."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == "bitsandbytes" or quant.get("load_in_4bit"):
        raise QuantizedBaseError(base)
    if not any(base.glob("*.safetensors")):
        pickles = [p for p in base.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        if pickles:
            raise (
                UnsafeCheckpointError(pickles[0])
                if not allow_pickle
                else InputNotFoundError(
                    "safetensors weights",
                    base,
                    hint="Convert the .bin checkpoint with transformers (save_pretrained) before merging.",
                )
            )
        raise InputNotFoundError("model weights (*.safetensors)", base, hint="The base directory is incomplete.")
    return config


def _plan(
    base_tensors: dict[str, TensorInfo], adapters: list[Adapter], config: dict
) -> tuple[list[_Task], dict[str, object]]:
    """Decide, for every output tensor, its source bytes and the LoRA updates to add."""
    changes: dict[str, object] = {}
    sources = dict(base_tensors)
    loras: dict[str, list[LoraPair]] = {name: [] for name in base_tensors}
    tied = bool(config.get("tie_word_embeddings")) and _TIED_PAIR[1] not in base_tensors
    for adapter in adapters:
        touched = set(adapter.pairs) | set(adapter.replacements)
        if tied and _TIED_PAIR[1] in touched and _TIED_PAIR[0] in sources:
            # The adapter changes lm_head alone: it can no longer share storage with the embeddings.
            sources[_TIED_PAIR[1]] = sources[_TIED_PAIR[0]]
            loras[_TIED_PAIR[1]] = list(loras[_TIED_PAIR[0]])
            tied = False
            changes["tie_word_embeddings"] = False
        for key, info in adapter.replacements.items():
            if key not in sources:
                raise AdapterMismatchError(adapter.path, f"modules_to_save tensor '{key}' is not in the base")
            old = sources[key]
            if info.shape != old.shape:
                resizable = key in _TIED_PAIR and len(info.shape) == 2 and info.shape[1:] == old.shape[1:]
                if not resizable:
                    raise AdapterMismatchError(
                        adapter.path,
                        f"'{key}' has shape {list(info.shape)} but the base has {list(old.shape)}",
                    )
                changes["vocab_size"] = info.shape[0]
            sources[key] = info
            loras[key] = []  # a full replacement supersedes earlier low-rank updates
        for key, pair in adapter.pairs.items():
            if key not in sources:
                raise AdapterMismatchError(adapter.path, f"it targets '{key}', which the base does not have")
            shape = sources[key].shape
            b_rows, a_cols = pair.b.shape[0], pair.a.shape[1]
            expected = (a_cols, b_rows) if pair.fan_in_fan_out else (b_rows, a_cols)
            if tuple(shape) != expected:
                raise AdapterMismatchError(
                    adapter.path,
                    f"'{key}' is {list(shape)} in the base but the adapter's B·A is {list(expected)}",
                )
            loras[key].append(pair)
    tasks = []
    for key, source in sources.items():
        out_dtype = base_tensors[key].dtype if key in base_tensors else base_tensors[_TIED_PAIR[0]].dtype
        if source.dtype not in FLOAT_DTYPES:
            out_dtype = source.dtype
        tasks.append(_Task(PlannedTensor(key, out_dtype, source.shape), source, loras[key]))
    return tasks, changes


class _HashingReader:
    """Reads a base file front to back and hashes it on the way, so provenance costs no extra pass."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("rb")
        self.digest = hashlib.sha256()
        self.pos = 0

    def read_at(self, start: int, size: int) -> bytes:
        if start < self.pos:  # a second read of the same bytes (an untied lm_head copied from embeddings)
            with open(self.fh.name, "rb") as other:
                other.seek(start)
                return other.read(size)
        if start > self.pos:
            self.fh.seek(self.pos)
            self._consume(start - self.pos)
        data = self.fh.read(size)
        self.digest.update(data)
        self.pos = start + len(data)
        return data

    def _consume(self, size: int) -> None:
        while size > 0:
            data = self.fh.read(min(size, 1 << 24))
            if not data:
                break
            self.digest.update(data)
            size -= len(data)

    def finish(self) -> str:
        self._consume(1 << 62)
        self.fh.close()
        return self.digest.hexdigest()


def _write_tensor(
    task: _Task,
    writer: ShardWriter,
    readers: dict[Path, _HashingReader],
    cfg: MergeConfig,
    on_bytes: Callable,
) -> None:
    src = task.source
    reader = readers.get(src.file)
    same_dtype = src.dtype == task.out.dtype
    if not task.loras and same_dtype:
        for start, count in iter_row_blocks(src, cfg.block_bytes):
            chunk = _read(reader, src, start, count)
            writer.write(chunk)
            on_bytes(len(chunk))
        return
    factors = [(read_tensor_f32(p.a), read_tensor_f32(p.b), np.float32(p.scale), p.fan_in_fan_out) for p in task.loras]
    for start, count in iter_row_blocks(src, cfg.block_bytes):
        raw = _read(reader, src, start, count)
        block = bytes_to_f32(raw, src.dtype).reshape((count, *src.shape[1:]))
        for a, b, scale, fan_in_fan_out in factors:
            if fan_in_fan_out:
                block += (b @ a).T[start : start + count] * scale
            else:
                block += (b[start : start + count] @ a) * scale
        out = f32_to_bytes(block, task.out.dtype)
        writer.write(out)
        on_bytes(len(raw))


def _read(reader: _HashingReader | None, info: TensorInfo, start: int, count: int) -> bytes:
    if reader is None:  # adapter tensors (modules_to_save) are read directly
        with info.file.open("rb") as fh:
            return read_rows(fh, info, start, count)
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


def run(
    cfg: MergeConfig,
    *,
    base: Path,
    adapters: list[Path],
    out_dir: Path,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge LoRA adapters into a base model, streaming, and write an HF checkpoint to ``out_dir``.

    Args:
        cfg: shard size, block size, safety switches.
        base: HF model directory with safetensors weights (16/32-bit, possibly sharded).
        adapters: PEFT LoRA adapter directories, applied in this order.
        out_dir: destination; replaced atomically when the merge completes.
        progress: called with (bytes_done, bytes_total) as base bytes are processed.

    Returns:
        The written files with sha256, the base and adapter provenance, and counts.

    Raises:
        InputNotFoundError, UnsafeCheckpointError, QuantizedBaseError, AdapterMismatchError.

    Example:
        >>> run(MergeConfig(), base=Path("Qwen2.5-7B"), adapters=[Path("cpt"), Path("sft")], out_dir=Path("m"))
    """
    started = time.perf_counter()
    config = _check_base(base, allow_pickle=cfg.allow_pickle)
    loaded = [load_adapter(p, allow_pickle=cfg.allow_pickle) for p in adapters]
    base_tensors = index_checkpoint(base)
    tasks, changes = _plan(base_tensors, loaded, config)
    shards = plan_shards([t.out for t in tasks], cfg.max_shard_bytes)
    names = shard_names(len(shards))
    by_name = {t.out.name: t for t in tasks}
    total = sum(t.source.nbytes for t in tasks)
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    base_files = sorted({info.file for info in base_tensors.values()})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        readers = {path: _HashingReader(path) for path in base_files}
        weight_map = {}
        for shard, name in zip(shards, names, strict=True):
            writer = ShardWriter(tmp / name, shard)
            for planned in shard:
                _write_tensor(by_name[planned.name], writer, readers, cfg, on_bytes)
                weight_map[planned.name] = name
            writer.close()
        base_hashes = {path.name: reader.finish() for path, reader in readers.items()}
        if len(names) > 1:
            index = {"metadata": {"total_size": sum(t.out.nbytes for t in tasks)}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        _copy_side_files(base, loaded, tmp, trust_remote_code=cfg.trust_remote_code)
        merged_config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        merged_config.update(changes)
        (tmp / "config.json").write_text(json.dumps(merged_config, indent=2), encoding="utf-8")
    provenance = [
        AdapterProvenance(
            path=str(a.path),
            sha256=sha256_file(a.path / "adapter_model.safetensors"),
            base_model=a.base_model,
            r=a.config.get("r"),
            targets=sorted({k.rsplit(".", 2)[-2] for k in a.pairs} | set(a.replacements)),
        )
        for a in loaded
    ]
    return MergeResult(
        out_dir=out_dir,
        files=record_files(out_dir, [p for p in out_dir.iterdir() if p.is_file()]),
        seconds=time.perf_counter() - started,
        base_files=base_hashes,
        adapters=provenance,
        merged_tensors=sum(1 for t in tasks if t.loras),
        replaced_tensors=sum(1 for t in tasks if t.source.file not in base_files),
        config_changes=changes,
    )
