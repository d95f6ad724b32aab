"""The arithmetic of a merge, done with torch so the float32 sums are the ones peft computes.

peft's ``merge_and_unload`` adds ``(B @ A) * scale`` (transposed for fan-in-fan-out layers and embeddings)
to the weight. kollm performs the same torch operations in the same order on float32 row blocks, then
rounds once to the output dtype (torch's round-to-nearest-even), so a float32 merge is bit-identical to
peft's and a 16-bit merge is the correctly rounded float32 result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kollm.release.safetensors_io import TensorInfo

if TYPE_CHECKING:
    import torch

TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Every safetensors dtype, for tensors handed over whole (untouched ones are copied, not decoded).
_ALL_TORCH_DTYPES = {
    **TORCH_DTYPES,
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
# Same-width integer views: numpy has no bfloat16, so 16-bit floats leave torch as int16 bits.
_BITS = {"F32": "int32", "F16": "int16", "BF16": "int16"}


def as_tensor(raw: bytearray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor in its own safetensors dtype, sharing ``raw``'s memory (no copy)."""
    import torch

    torch_dtype = getattr(torch, _ALL_TORCH_DTYPES[dtype])
    if not raw:  # frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(raw, dtype=torch_dtype).reshape(shape)


def decode(raw: bytearray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 tensor from the raw little-endian bytes of a safetensors float dtype (no copy for F32)."""
    values = as_tensor(raw, dtype, shape)
    return values if dtype == "F32" else values.float()


def encode(values: torch.Tensor, dtype: str) -> memoryview:
    """The bytes of ``values`` in a safetensors float dtype, rounded once (nearest even)."""
    import torch

    out = values.to(getattr(torch, TORCH_DTYPES[dtype])).contiguous()
    return memoryview(out.view(getattr(torch, _BITS[dtype])).numpy()).cast("B")


def read_matrix(info: TensorInfo) -> torch.Tensor:
    """A whole (small) float tensor as float32, e.g. a LoRA A or B matrix."""
    with info.file.open("rb") as fh:
        fh.seek(info.start)
        raw = bytearray(info.nbytes)
        fh.readinto(raw)
    return decode(raw, info.dtype, info.shape)


@dataclass
class LoraFactors:
    """A and B of one adapter for one tensor, in float32, with peft's scale and orientation."""

    a: torch.Tensor  # (r, in) — or (r, rows) for fan-in-fan-out layers and embeddings
    b: torch.Tensor  # (out, r)
    scale: float
    transposed: bool  # the weight is stored (in, out): delta = (B @ A).T

    def add_to(self, block: torch.Tensor, row_start: int) -> None:
        """Add ``scale · B·A`` for rows ``row_start …`` of the weight to ``block`` (float32, in place)."""
        rows = block.shape[0]
        if self.transposed:
            delta = (self.b @ self.a[:, row_start : row_start + rows]).T * self.scale
        else:
            delta = (self.b[row_start : row_start + rows] @ self.a) * self.scale
        block += delta
