"""Streaming access to safetensors files without holding a model (or a shard) in memory.

The reader parses the header and reads byte ranges with plain file reads (no mmap, so resident memory stays
what kollm actually holds). The writer knows every tensor's dtype and shape before it starts, writes the
header first and then streams each tensor's bytes in order, so a multi-GB shard never sits in RAM.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# safetensors dtype name -> bytes per element.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
FLOAT_DTYPES = ("F32", "F16", "BF16")  # what the merge decodes; kollm.release.merge_math does the arithmetic


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a safetensors file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes per leading-dimension row (the whole tensor for scalars)."""
        if not self.shape or self.shape[0] == 0:
            return self.nbytes
        return self.nbytes // self.shape[0]


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header into tensor infos and the ``__metadata__`` mapping."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    base = 8 + length
    metadata = header.pop("__metadata__", {}) or {}
    infos = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(name, path, entry["dtype"], tuple(entry["shape"]), base + begin, end - begin)
    return infos, metadata


def index_checkpoint(model_dir: Path) -> dict[str, TensorInfo]:
    """Every tensor of a (possibly sharded) safetensors checkpoint, in file order."""
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    infos: dict[str, TensorInfo] = {}
    for name in files:
        shard, _ = read_header(model_dir / name)
        infos.update(sorted(shard.items(), key=lambda kv: kv[1].start))
    return infos


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor the writer will emit: name, dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_SIZES[self.dtype]


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return [s for s in shards if s]


def shard_names(count: int) -> list[str]:
    """HF file names for ``count`` shards."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardWriter:
    """Writes one safetensors file whose tensors are all known up front; bytes arrive in order."""

    def __init__(
        self, path: Path, tensors: list[PlannedTensor], on_write: Callable[[bytes | memoryview], None] | None = None
    ) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in tensors:
            header[tensor.name] = {
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            offset += tensor.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format asks for 8-byte alignment of the data section
        self._expected = offset
        self._written = 0
        self._on_write = on_write
        self._fh = path.open("wb")
        # Hashed as written, so the file's sha256 costs no second read of a multi-GB shard.
        self._digest = hashlib.sha256()
        for part in (struct.pack("<Q", len(encoded)), encoded):
            self._fh.write(part)
            self._digest.update(part)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append the next bytes of the data section (in planned tensor order)."""
        self._fh.write(chunk)
        self._digest.update(chunk)
        self._written += len(chunk)
        if self._on_write:
            self._on_write(chunk)

    def close(self) -> None:
        self._fh.flush()
        self._fh.close()
        if self._written != self._expected:
            raise RuntimeError(f"shard writer got {self._written} bytes, planned {self._expected}")

    @property
    def sha256(self) -> str:
        """Hex digest of every byte written (valid after ``close``)."""
        return self._digest.hexdigest()


def iter_row_blocks(info: TensorInfo, max_block_bytes: int) -> Iterator[tuple[int, int]]:
    """(row_start, row_count) blocks covering a tensor, each at most ``max_block_bytes`` (at least one row)."""
    rows = info.shape[0] if info.shape else 1
    per_block = max(1, max_block_bytes // max(1, info.row_bytes))
    for start in range(0, rows, per_block):
        yield start, min(per_block, rows - start)


def read_exact(fh: BinaryIO, size: int) -> bytearray:
    """Exactly ``size`` bytes from ``fh``'s position into a fresh buffer (OSError if the file ends first)."""
    # readinto a fresh buffer: torch can wrap it without a copy, and no second bytes object is built.
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = fh.readinto(view[got:])
        if not n:
            raise OSError(f"{fh.name} ended early: wanted {size} bytes, got {got}")
        got += n
    return buf
