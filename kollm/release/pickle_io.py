"""Opt-in reading of pickle checkpoints (``--allow-pickle``): tensors only, converted to safetensors first.

``torch.load(weights_only=True)`` refuses anything but tensors and plain containers, so a checkpoint that
would run code fails to load instead of executing. The converted copy is what the streaming merge reads.
Unlike the safetensors path this holds one pickle file in memory at a time (pickle cannot be read in parts).
"""

from __future__ import annotations

from pathlib import Path

from kollm.errors import UnsafeCheckpointError


def pickle_to_safetensors(src: Path, dst: Path) -> Path:
    """Convert one pickle checkpoint (``.bin``/``.pt``) to a safetensors file.

    Args:
        src: the pickle file.
        dst: the safetensors file to write (its directory must exist).

    Returns:
        ``dst``.

    Raises:
        UnsafeCheckpointError: the file holds more than tensors, or is not a torch checkpoint.
    """
    import pickle

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise UnsafeCheckpointError(
            src,
            detail=f"torch.load(weights_only=True) refused it ({type(e).__name__}: {str(e).splitlines()[0]})",
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeCheckpointError(src, detail="it is not a flat mapping of tensor names to tensors")
    # safetensors refuses tensors that share storage (a tied lm_head): give each its own.
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, dst, metadata={"format": "pt"})
    return dst
