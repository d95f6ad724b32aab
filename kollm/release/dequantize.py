"""Dequantizing a bitsandbytes 4-bit base (``--dequantize-base``) into a 16-bit safetensors copy for the merge.

transformers' ``save_pretrained`` stores each 4-bit weight ``X.weight`` as packed uint8 plus its quantization
state (``X.weight.absmax``, ``.quant_map``, ``.nested_absmax``, ``.nested_quant_map`` and the JSON in
``.quant_state.bitsandbytes__nf4|fp4``); norms, embeddings and usually lm_head stay 16-bit. bitsandbytes'
own ``QuantState.from_dict`` + ``dequantize_4bit`` turn a weight back into floats, so the values are exactly
what ``model.dequantize()`` gives.

Why a converted copy rather than dequantizing inside the streaming merge: the merge reads row blocks of raw
bytes by offset, and a packed weight's rows are not addressable that way without re-deriving bitsandbytes'
block layout. Writing the dequantized checkpoint into the merge's scratch directory (on the output's disk,
like a converted pickle base) leaves the merge engine and its exactness unchanged, for the cost of one extra
write of the 16-bit weights. Memory holds one weight at a time (packed, plus its dequantized copy);
unquantized tensors are copied in row blocks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kollm.errors import DequantizeError, ToolMissingError
from kollm.release.safetensors_io import (
    PlannedTensor,
    ShardWriter,
    TensorInfo,
    index_checkpoint,
    iter_row_blocks,
    read_exact,
)

if TYPE_CHECKING:
    import torch

QUANT_STATE = ".quant_state.bitsandbytes__"
_COMPONENTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "U8": "uint8", "I8": "int8"}
_OUT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class DequantizedBase:
    """What was dequantized, for the merge's provenance."""

    tensor_dir: Path
    quant_type: str  # nf4 | fp4 (joined with "," if a checkpoint mixes them)
    double_quant: bool
    dtype: str  # the quant_state's dtype: the weights' dtype before quantization
    tensors: int

    def record(self) -> dict[str, object]:
        """A small JSON-able summary for the merge result and the release manifest."""
        return {
            "method": "bitsandbytes-4bit",
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "dtype": self.dtype,
            "tensors": self.tensors,
        }


@dataclass(frozen=True)
class _Packed:
    weight: TensorInfo
    parts: dict[str, TensorInfo]  # state component (absmax, quant_state.bitsandbytes__nf4, ...) -> tensor
    state: dict[str, Any]  # the decoded quant_state JSON (quant_type, dtype, shape, nested_*)


def dequantize_bnb_4bit(base: Path, out_dir: Path, *, block_bytes: int = 64 * 1024**2) -> DequantizedBase:
    """Write a 16-bit safetensors copy of a bitsandbytes 4-bit checkpoint, one tensor at a time.

    Each 4-bit weight becomes ``dequantize_4bit`` of it in its quant_state's dtype (the dtype it had before
    quantization, which is also the dtype of the tensors bitsandbytes kept; ``bnb_4bit_compute_dtype`` is only
    the matmul dtype). Other tensors are copied byte for byte; the quantization state is dropped.

    Args:
        base: HF directory of a bitsandbytes 4-bit checkpoint (safetensors, possibly sharded).
        out_dir: directory to create; gets one safetensors file per base file, under the same names.
        block_bytes: bytes of an unquantized tensor copied at once.

    Returns:
        Where the copy is and what was dequantized.

    Raises:
        ToolMissingError: bitsandbytes is not installed.
        DequantizeError: no 4-bit weights found, an incomplete quantization state, or bitsandbytes refused one.
    """
    tensors = index_checkpoint(base)
    if not tensors:
        raise DequantizeError(base, "it has no safetensors weights")
    packed = _packed_weights(base, tensors)
    if not packed:
        raise DequantizeError(
            base, "config.json declares bitsandbytes 4-bit, but no tensor carries a 4-bit quant_state"
        )
    try:  # after the header checks: importing bitsandbytes takes seconds
        import bitsandbytes.functional  # noqa: F401
    except ImportError as e:
        raise ToolMissingError("bitsandbytes", install="pip install 'kollm[quant]'") from e
    consumed = {info.name for p in packed.values() for info in p.parts.values()}
    by_file: dict[Path, list[TensorInfo]] = {}
    for info in tensors.values():
        if info.name not in consumed:
            by_file.setdefault(info.file, []).append(info)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, infos in by_file.items():
        planned = [_planned(info, packed.get(info.name)) for info in infos]
        writer = ShardWriter(out_dir / file.name, planned)
        for info in infos:
            if info.name in packed:
                writer.write(_dequantize(base, packed[info.name]))
                continue
            for start, count in iter_row_blocks(info, block_bytes):
                writer.write(_read(info, info.start + start * info.row_bytes, count * info.row_bytes))
        writer.close()
    states = [p.state for p in packed.values()]
    return DequantizedBase(
        tensor_dir=out_dir,
        quant_type=",".join(sorted({str(s["quant_type"]) for s in states})),
        double_quant=all("nested_blocksize" in s for s in states),
        dtype=",".join(sorted({str(s["dtype"]) for s in states})),
        tensors=len(packed),
    )


def _packed_weights(base: Path, tensors: dict[str, TensorInfo]) -> dict[str, _Packed]:
    packed = {}
    for name, info in tensors.items():
        if QUANT_STATE not in name:
            continue
        weight_name = name.split(QUANT_STATE)[0]
        if weight_name not in tensors:
            raise DequantizeError(base, f"'{name}' has no packed weight '{weight_name}'")
        weight = tensors[weight_name]
        state = _state(base, info)
        if str(state.get("dtype")) not in _OUT_DTYPES:
            raise DequantizeError(base, f"'{weight_name}' was quantized from {state.get('dtype')}, not a float dtype")
        numel = math.prod(state["shape"])
        if weight.nbytes * 2 < numel:  # two 4-bit values per byte; fewer would read past the tensor
            raise DequantizeError(
                base, f"'{weight_name}' has {weight.nbytes} packed bytes for shape {state['shape']} ({numel} values)"
            )
        parts = {name.removeprefix(f"{weight_name}."): info}
        parts |= {c: tensors[f"{weight_name}.{c}"] for c in _COMPONENTS if f"{weight_name}.{c}" in tensors}
        odd = [f"{t.name} ({t.dtype})" for t in (weight, *parts.values()) if t.dtype not in _TORCH_NAMES]
        if odd:
            raise DequantizeError(base, f"unexpected dtype of {', '.join(odd)}")
        packed[weight_name] = _Packed(weight, parts, state)
    return packed


def _state(base: Path, info: TensorInfo) -> dict[str, Any]:
    try:
        state = json.loads(bytes(_read(info, info.start, info.nbytes)))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DequantizeError(base, f"'{info.name}' is not a bitsandbytes quant_state ({e})") from e
    if state.get("quant_type") not in ("nf4", "fp4") or not isinstance(state.get("shape"), list):
        raise DequantizeError(base, f"'{info.name}' lacks quant_type nf4/fp4 or the weight's shape")
    return state


def _planned(info: TensorInfo, packed: _Packed | None) -> PlannedTensor:
    if packed is None:
        return PlannedTensor(info.name, info.dtype, info.shape)
    return PlannedTensor(info.name, _OUT_DTYPES[packed.state["dtype"]], tuple(packed.state["shape"]))


def _dequantize(base: Path, packed: _Packed) -> memoryview:
    import torch
    from bitsandbytes.functional import QuantState, dequantize_4bit

    weight = _tensor(packed.weight).view(torch.uint8)  # any bnb_4bit_quant_storage holds the same packed bytes
    loaded = {key: _tensor(info) for key, info in packed.parts.items()}
    try:
        state = QuantState.from_dict(loaded, device=torch.device("cpu"))
        values = dequantize_4bit(weight, state)
    except (AssertionError, KeyError, RuntimeError, ValueError) as e:
        raise DequantizeError(
            base, f"bitsandbytes could not dequantize '{packed.weight.name}' ({type(e).__name__}: {e})"
        ) from e
    return memoryview(values.contiguous().reshape(-1).view(torch.uint8).numpy())


def _tensor(info: TensorInfo) -> torch.Tensor:
    import torch

    raw = _read(info, info.start, info.nbytes)
    return torch.frombuffer(raw, dtype=getattr(torch, _TORCH_NAMES[info.dtype])).reshape(info.shape)


def _read(info: TensorInfo, start: int, size: int) -> bytearray:
    # Plain reads, no mmap: resident memory stays what is being converted (as in the merge's reader).
    with info.file.open("rb", buffering=0) as fh:
        fh.seek(start)
        return read_exact(fh, size)
